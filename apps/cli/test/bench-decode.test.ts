// `bench --decode` as a subprocess on the tiny model: one JSON line with the contract's keys.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");

function bench(...args: string[]) {
  const p = Bun.spawnSync(["bun", MAIN, "bench", ...args], { stdout: "pipe", stderr: "pipe" });
  // Dawn's own warnings on stderr are not ours.
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

describe("bench --decode", () => {
  test("prints one JSON line: op, model, batch, tok_s, ms_per_token, prefill_ms, peak_gib", () => {
    const r = bench("--decode", "--model", "tiny", "--tokens", "8", "--batch", "3");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const m = JSON.parse(lines[0]!);
    expect(m).toMatchObject({ op: "decode", model: "tiny", batch: 3, tokens: 8 });
    for (const key of ["tok_s", "ms_per_token", "prefill_ms", "peak_gib"]) {
      expect(typeof m[key]).toBe("number");
      expect(m[key]).toBeGreaterThan(0);
    }
    // tok_s counts every sequence's tokens: batch / per-step latency.
    expect(m.tok_s).toBeCloseTo((3 * 1000) / m.ms_per_token, -1);
  }, 60_000);

  test("an unknown model or a bad --tokens fails with a message", () => {
    const unknown = bench("--decode", "--model", "gpt-9", "--tokens", "2");
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/unknown benchmark model 'gpt-9'/);
    const bad = bench("--decode", "--model", "tiny", "--tokens", "0");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--tokens must be a positive integer/);
  }, 60_000);
});
