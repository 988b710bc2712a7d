// `bench --train` as a subprocess on the tiny model: one JSON line with the step's speed and
// memory, and the label layout it was asked for.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyModel } from "@tuneloom/model";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");

function bench(...args: string[]) {
  const p = Bun.spawnSync(["bun", MAIN, "bench", ...args], { stdout: "pipe", stderr: "pipe" });
  // Dawn's own warnings on stderr are not ours.
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

describe("bench --train", () => {
  test("one line: tok/s, step ms, peak memory, loss, for every-token and answer-only labels", () => {
    for (const fraction of ["1", "0.25"]) {
      const r = bench("--train", "--model", "tiny", "--batch", "2", "--seq", "32", "--rank", "4", "--steps", "2", "--target-fraction", fraction);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const m = JSON.parse(r.stdout.trim());
      expect(m).toMatchObject({ op: "train", model: "tiny", batch: 2, seq: 32, rank: 4, grad_ckpt: true, target_fraction: Number(fraction) });
      for (const key of ["tok_s", "step_ms", "peak_gib", "loss"]) expect(Number.isFinite(m[key])).toBe(true);
      expect(m.tok_s).toBeGreaterThan(0);
      expect(m.loss).toBeGreaterThan(1); // a random model: about ln(vocab)
    }
  }, 60_000);

  test("a target fraction outside (0, 1] fails with a message", () => {
    const r = bench("--train", "--model", "tiny", "--batch", "1", "--seq", "16", "--steps", "1", "--target-fraction", "0");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--target-fraction must be in \(0, 1\], got 0/);
  }, 60_000);

  test("--model DIR trains on that Hugging Face directory as it is (and leaves it in place), reporting load seconds", () => {
    const dir = mkdtempSync(join(tmpdir(), "bench-dir-"));
    try {
      writeTinyModel(dir, { arch: "qwen2", seed: 3 });
      const r = bench("--train", "--model", dir, "--batch", "1", "--seq", "16", "--rank", "2", "--steps", "1");
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const m = JSON.parse(r.stdout.trim());
      expect(m).toMatchObject({ op: "train", model: dir, batch: 1, seq: 16, rank: 2 });
      expect(m.load_s).toBeGreaterThanOrEqual(0);
      expect(Bun.file(join(dir, "config.json")).size).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  test("a model that is neither a benchmark name nor a directory fails naming both", () => {
    const r = bench("--train", "--model", "/nonexistent/gpt-9", "--steps", "1");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown benchmark model '\/nonexistent\/gpt-9' and no model directory there/);
  }, 60_000);
});
