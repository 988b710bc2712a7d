// `bench --decode-loras` as a subprocess on the tiny model: a line per path and adapter count,
// and report.ts's multi-lora table built from those lines.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { multiLoraTable, rewriteDoc } from "../src/bench/report.ts";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");

function bench(...args: string[]) {
  const p = Bun.spawnSync(["bun", MAIN, "bench", ...args], { stdout: "pipe", stderr: "pipe" });
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

describe("bench --decode-loras", () => {
  test("base, slots for k = 1 and 4 (vs one adapter), per-adapter for k = 4; the report's table from them", () => {
    const r = bench("--decode-loras", "4", "--model", "tiny", "--batch", "4", "--tokens", "4", "--rank", "8", "--prompt-tokens", "24");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => [l.path, l.adapters])).toEqual([["base", 0], ["slots", 1], ["slots", 4], ["per-adapter", 4]]);
    for (const l of lines) {
      // The tiny model loads f32 on lavapipe: auto keeps the slots f32.
      expect(l).toMatchObject({ op: "multi_lora_decode", model: "tiny", batch: 4, tokens: 4, rank: 8, lora_dtype: "f32" });
      expect(l.tok_s as number).toBeGreaterThan(0);
      expect(l.tok_s as number).toBeCloseTo((4 * 1000) / (l.ms_per_token as number), -1);
      expect(l.prompt_tokens).toBe(24);
      if (l.path !== "per-adapter") expect(l.prefill_tok_s as number).toBeGreaterThan(0);
    }
    const [, one, four] = lines;
    expect(one!.vs_one_adapter).toBe(1);
    expect(four!.vs_one_adapter as number).toBeCloseTo((four!.tok_s as number) / (one!.tok_s as number), 2);
    expect(four!.prefill_vs_base as number).toBeCloseTo((four!.prefill_tok_s as number) / (lines[0]!.prefill_tok_s as number), 2);

    const stamped = lines.map((l) => ({ call: "2030-01-01T00:00Z", gpu: "TestGPU", ...l }));
    const table = multiLoraTable(stamped);
    const rows = table.split("\n").slice(2);
    expect(rows).toHaveLength(2); // k = 1 and 4
    expect(rows[1]).toContain(`| tiny | TestGPU | 4 | 8 | 4 | ${(four!.tok_s as number).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 })} |`);
    expect(rows[1]).toContain(`**${((four!.tok_s as number) / (one!.tok_s as number)).toFixed(2)}×**`);
    expect(rows[1]).toContain(`(24) | ${((four!.prefill_tok_s as number) / (lines[0]!.prefill_tok_s as number)).toFixed(2)}× |`);
    const doc = rewriteDoc("x\n<!-- generated:multi-lora -->\nold\n<!-- /generated:multi-lora -->\ny", stamped);
    expect(doc).toBe(`x\n<!-- generated:multi-lora -->\n${table}\n<!-- /generated:multi-lora -->\ny`);
  }, 120_000);

  test("an adapter count that does not divide the batch is refused", () => {
    const r = bench("--decode-loras", "1,3", "--model", "tiny", "--batch", "16");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--decode-loras 3: each adapter count must divide --batch 16/);
    expect(multiLoraTable([])).toBe("_no multi-adapter decode run collected yet_");
    const bad = bench("--decode-loras", "1", "--model", "tiny", "--batch", "4", "--lora-dtype", "fp8");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--lora-dtype must be one of auto, .*got "fp8"/);
  }, 60_000);
});
