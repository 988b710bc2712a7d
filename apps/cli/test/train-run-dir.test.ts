// The train command's run-directory and UTF-8 flags (the rules themselves are tested in
// packages/trainer/test/run-dir.test.ts and data.test.ts).
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { readAdapterDir, writeTinyModel } from "@tuneloom/model";
import { DataError, readRunRecord, RunDirError } from "@tuneloom/trainer";
import { run as trainCommand } from "../src/commands/train.ts";

describe("train command: run-directory and UTF-8 flags", () => {
  test("invalid UTF-8 is refused with file:line before --out is touched; --allow-replacement trains on it; --overwrite", async () => {
    const root = mkdtempSync(path.join(tmpdir(), "train-cli-"));
    const model = path.join(root, "model");
    writeTinyModel(model, { seed: 1 });
    const row = (q: string) => JSON.stringify({ messages: [{ role: "user", content: q }, { role: "assistant", content: "yes" }] }) + "\n";
    const data = path.join(root, "latin1.jsonl");
    // Line 11 holds "café" in Latin-1: 0xE9 alone is not UTF-8.
    writeFileSync(data, Buffer.concat([Buffer.from(Array.from({ length: 10 }, (_, i) => row(`q${i} — ok?`)).join(""), "utf8"), Buffer.from(row("caf\u00e9?"), "latin1")]));
    const out = path.join(root, "out");
    const argv = ["--model", model, "--data", data, "--out", out, "--max-steps", "1", "--batch-size", "2", "--max-length", "64", "--rank", "2", "--quiet"];
    const refused = trainCommand(argv);
    await expect(refused).rejects.toBeInstanceOf(DataError);
    await expect(refused).rejects.toThrow(`${data}:11: invalid UTF-8 at byte 43 of the line (0xe9 0x3f 0x22 0x7d)`);
    expect(existsSync(out)).toBe(false);

    expect(await trainCommand([...argv, "--allow-replacement"])).toBe(0);
    expect(JSON.parse(readFileSync(path.join(out, "adapter", "training_args.json"), "utf8"))).toMatchObject({ allowReplacement: true });
    expect(readRunRecord(out)!.settings.allowReplacement).toBe(true);
    await expect(trainCommand([...argv, "--allow-replacement"])).rejects.toBeInstanceOf(RunDirError);
    expect(await trainCommand([...argv, "--allow-replacement", "--overwrite"])).toBe(0);
    expect(readdirSync(out).filter((n) => n.startsWith(".previous-"))).toHaveLength(1);
  }, 120_000);

  test("kill -9 between the renames of the final adapter's replacement: the next start restores it, loadable and bit-identical", async () => {
    const root = mkdtempSync(path.join(tmpdir(), "train-cli-"));
    const model = path.join(root, "model");
    writeTinyModel(model, { seed: 1 });
    const data = path.join(root, "train.jsonl");
    writeFileSync(data, Array.from({ length: 6 }, (_, i) => JSON.stringify({ messages: [{ role: "user", content: `q${i}` }, { role: "assistant", content: `a${i}` }] }) + "\n").join(""));
    const out = path.join(root, "out");
    const argv = ["--model", model, "--data", data, "--out", out, "--batch-size", "2", "--max-length", "32", "--rank", "2", "--save-steps", "1", "--quiet"];
    expect(await trainCommand([...argv, "--max-steps", "2"])).toBe(0);
    // Resume to 3 steps in a child that is killed as it swaps the new adapter in (the fallback path: no atomic exchange).
    const main = path.join(import.meta.dir, "../src/main.ts");
    const child = Bun.spawnSync(["bun", main, "train", ...argv, "--max-steps", "3", "--resume", out], {
      env: { ...process.env, TUNELOOM_TEST_CRASH_AT: "between-renames" }, stdout: "pipe", stderr: "pipe",
    });
    expect(child.signalCode).toBe("SIGKILL");
    expect(existsSync(path.join(out, "adapter"))).toBe(false);
    expect(readdirSync(out).filter((n) => n.startsWith("adapter.")).map((n) => n.replace(/-\d+$/, "")).sort()).toEqual(["adapter.new", "adapter.old"]);

    // The complete new copy the child left: loadable as it is.
    const crashed = readAdapterDir(path.join(out, readdirSync(out).find((n) => n.startsWith("adapter.new-"))!)).weights;

    const lines: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => (lines.push(String(chunk)), true)) as typeof process.stderr.write;
    try {
      expect(await trainCommand([...argv, "--max-steps", "3", "--resume", out])).toBe(0);
    } finally {
      process.stderr.write = write;
    }
    expect(lines.join("")).toMatch(/recovery: restored .*adapter from adapter\.new-\d+/);
    expect(readdirSync(out).filter((n) => n.startsWith("adapter."))).toEqual([]);
    const rerun = readAdapterDir(path.join(out, "adapter")).weights;
    expect(rerun.some((w) => w.B.some((v) => v !== 0))).toBe(true);
    expect(rerun.map((w) => [w.A, w.B])).toEqual(crashed.map((w) => [w.A, w.B]));
  }, 120_000);
});
