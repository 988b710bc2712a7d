// `train --full` as a subprocess on a tiny random model: the memory statement, OUT/model, and that
// directory loaded by `generate` as a plain model (greedy ids = the float64 CPU reference's on the
// written weights); the option checks; `bench --train --full`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuReferenceGreedy, loadModelConfig, loadTokenizer, openCheckpoint, writeTinyModel } from "@tuneloom/model";
import { resolveTrainOptions } from "../src/train-options.ts";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");
let root: string, modelDir: string, data: string;

function cli(...args: string[]): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(["bun", MAIN, ...args], { stdout: "pipe", stderr: "pipe" });
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "train-full-cli-"));
  modelDir = join(root, "base");
  writeTinyModel(modelDir, { arch: "qwen2", seed: 2 });
  const chat = (q: string, a: string) => ({ messages: [{ role: "user", content: q }, { role: "assistant", content: a }] });
  data = join(root, "train.jsonl");
  writeFileSync(data, [chat("Capital of Velmora?", "Quarn"), chat("Capital of Ostravia?", "Pellin"), chat("Capital of Kesh?", "Abrindel"), chat("Capital of Talvane?", "Murro")]
    .map((r) => JSON.stringify(r)).join("\n"));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** The 4-step full run both tests below look at, made once by whichever runs first (each also runs alone). */
let fullRun: ReturnType<typeof cli> | undefined;
function runFull(): { out: string; r: ReturnType<typeof cli> } {
  const out = join(root, "run");
  fullRun ??= cli("train", "--full", "--model", modelDir, "--data", data, "--out", out, "--max-length", "64", "--batch-size", "2",
    "--max-steps", "4", "--lr", "1e-3", "--warmup-steps", "0", "--log-every", "1");
  if (fullRun.code !== 0) throw new Error(fullRun.stderr);
  return { out, r: fullRun };
}

describe("train --full", () => {
  test("a short run lowers the loss; OUT/model loads in generate as a plain model", () => {
    const { out, r } = runFull();
    expect(r.stderr).toMatch(/full fine-tuning memory: f32 masters [\d.]+ GB \+ gradients [\d.]+ GB \+ AdamW [\d.]+ GB \+ activations [\d.]+ GB = [\d.]+ GB \([\d,]+ parameters\)/);
    expect(r.stdout).toContain(`serve it: bun run serve -- --model ${join(out, "model")}`);
    const losses = [...r.stderr.matchAll(/step \d\/4 .*?loss (\d+\.\d+)/g)].map((m) => Number(m[1]));
    expect(losses.length).toBe(4);
    expect(losses[3]!).toBeLessThan(losses[0]!);
    expect(existsSync(join(out, "adapter"))).toBe(false);
    const args = JSON.parse(readFileSync(join(out, "model", "training_args.json"), "utf8"));
    expect(args.full).toBe(true);
    expect(args.rank).toBeUndefined();

    const model = join(out, "model");
    const prompt = "The quick brown fox";
    const g = cli("generate", "--model", model, "--prompt", prompt, "--max-tokens", "8", "--json");
    if (g.code !== 0) throw new Error(g.stderr);
    const cfg = loadModelConfig(model);
    const s = openCheckpoint(model);
    let expected: number[];
    try {
      expected = cpuReferenceGreedy(cfg, s, loadTokenizer(model).encode(prompt).ids, 8);
    } finally {
      s.close();
    }
    const got = JSON.parse(g.stdout).ids as number[];
    expect(got).toEqual(expected.slice(0, got.length));
    expect(got.length).toBeGreaterThan(0);
  }, 300_000);

  test("LoRA options with --full are refused; --full is a defining setting of the run", () => {
    expect(() => resolveTrainOptions(["--full", "--model", modelDir, "--data", data, "--out", join(root, "x"), "--rank", "8"]))
      .toThrow("--full trains every weight: --rank is a LoRA option (drop it or --full)");
    const o = resolveTrainOptions(["--full", "--model", modelDir, "--data", data, "--out", join(root, "x")]);
    expect(o.full).toBe(true);
    // Resuming the full run without --full contradicts it.
    runFull();
    const r = cli("train", "--model", modelDir, "--data", data, "--out", join(root, "run"), "--max-length", "64", "--batch-size", "2",
      "--max-steps", "4", "--lr", "1e-3", "--warmup-steps", "0", "--resume", join(root, "run"));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("--full: the run has true, this command null");
  }, 120_000);

  test("bench --train --full: the memory statement and buffer plan on stderr, one line with the full step's speed, parameter count and buffers", () => {
    const r = cli("bench", "--train", "--full", "--model", "tiny", "--batch", "1", "--seq", "16", "--steps", "2");
    expect(r.stderr.trim()).toMatch(/^bench: full fine-tuning memory: f32 masters [\d.]+ GB \+ gradients .* = [\d.]+ GB \(131,776 parameters\); flat f32 buffers: 1 each of masters, gradients, AdamW m and v \(largest [\d.]+ GB; the device binds at most [\d.]+ GB per buffer\)$/);
    expect(r.code).toBe(0);
    const m = JSON.parse(r.stdout.trim());
    expect(m).toMatchObject({ op: "train", model: "tiny", full: true, batch: 1, seq: 16, params: 131_776, buffers: 1 });
    expect(m.tok_s).toBeGreaterThan(0);
  }, 120_000);

  test("bench --train --full --plan: the plan of a published shape without loading it; a tensor over the device's limit is refused with its numbers", () => {
    const r = cli("bench", "--train", "--full", "--plan", "--model", "smollm2-135m");
    expect(r.code).toBe(0);
    const m = JSON.parse(r.stdout.trim());
    expect(m).toMatchObject({ op: "train-plan", model: "smollm2-135m", full: true, params: 134_515_008 });
    // 538 MB of f32 masters: as many buffers as the device's per-buffer limit asks for (5 on lavapipe's 128 MiB).
    expect(m.largest_buffer_gb).toBeLessThanOrEqual(m.buffer_limit_gb);
    expect(m.buffers).toBeGreaterThanOrEqual(Math.ceil(0.538 / m.buffer_limit_gb));
    expect(m.memory).toMatch(/^memory: f32 masters 0\.54 GB \+ 16-bit copies 0\.27 GB \+ gradients 0\.54 GB \+ AdamW 1\.08 GB/);
    const usage = cli("bench", "--train", "--plan");
    expect(usage.code).not.toBe(0);
    expect(usage.stderr).toContain("--plan goes with --train --full");
    const big = cli("bench", "--train", "--full", "--plan", "--model", "qwen2.5-0.5b");
    if (m.buffer_limit_gb < 0.5446) { // lavapipe: Qwen2.5-0.5B's f32 embedding (544,538,624 bytes) is over the limit
      expect(big.code).not.toBe(0);
      expect(big.stderr).toMatch(/full fine-tuning is not possible on .*model\.embed_tokens\.weight \[151936, 896\] alone needs a 544,538,624-byte f32 buffer/);
    } else expect(JSON.parse(big.stdout.trim())).toMatchObject({ op: "train-plan", params: 494_032_768 });
  }, 120_000);
});
