// `bench --serve` as a subprocess on the tiny model: the in-process server answers real HTTP
// streams, one JSON line per stream count, and the process exits once the server is shut down.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");

function bench(...args: string[]) {
  const p = Bun.spawnSync(["bun", MAIN, "bench", ...args], { stdout: "pipe", stderr: "pipe" });
  // Dawn's own warnings on stderr are not ours.
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

describe("bench --serve", () => {
  test("one line per stream count: TTFT, decode tok/s, every stream's N tokens", () => {
    const N = 6;
    const r = bench("--serve", "--model", "tiny", "--streams", "1,3", "--tokens", String(N), "--prompt-tokens", "16");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(lines).toHaveLength(2);
    for (const [i, S] of [1, 3].entries()) {
      const m = lines[i];
      expect(m).toMatchObject({ op: "serve", model: "tiny", streams: S, prompt_tokens: 16, max_tokens: N, tokens: S * N });
      for (const key of ["ttft_ms_p50", "ttft_ms_max", "decode_tok_s_per_stream", "total_tok_s", "e2e_ms_max"]) {
        expect(typeof m[key]).toBe("number");
        expect(m[key]).toBeGreaterThan(0);
      }
      expect(m.ttft_ms_max).toBeGreaterThanOrEqual(m.ttft_ms_p50);
      // ≥, not >: server and client share one event loop, so the last token and [DONE] can arrive in
      // the same read as the first token when the engine runs ahead of the reader.
      expect(m.e2e_ms_max).toBeGreaterThanOrEqual(m.ttft_ms_max);
      // The round lasts at least as long as its slowest request. Both figures are rounded (e2e to
      // 0.01 ms, so the true value is ≥ e2e − 0.005; tok/s to 0.1): with one stream the two are the
      // same interval, so the bound must allow for the rounding.
      expect(m.total_tok_s).toBeLessThanOrEqual((S * N * 1000) / (m.e2e_ms_max - 0.005) + 0.05);
      expect(typeof m.device).toBe("string");
    }
  }, 30_000);

  test("a bad --streams or --tokens fails with a message", () => {
    const streams = bench("--serve", "--model", "tiny", "--streams", "1,x", "--tokens", "4");
    expect(streams.code).not.toBe(0);
    expect(streams.stderr).toMatch(/--streams must be a comma-separated list of positive integers/);
    const tokens = bench("--serve", "--model", "tiny", "--tokens", "1");
    expect(tokens.code).not.toBe(0);
    expect(tokens.stderr).toMatch(/--tokens must be an integer ≥ 2/);
  }, 30_000);
});
