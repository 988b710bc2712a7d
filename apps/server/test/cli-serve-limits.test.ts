// `serve` refuses settings it cannot serve before it listens, saying why; and its shutdown is
// bounded: past --drain-timeout, in-flight generations end with a clean 503 and stalled uploads
// are cut, and a second SIGTERM exits at once.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { checkDeviceFits, servingBufferBytes } from "../src/startup-checks.ts";
import { JSON_HEADERS, makeTinyModelDir, rawConnection, readSse, readUntil, requestHead } from "./helpers.ts";

const MAIN = resolve(import.meta.dir, "../../cli/src/main.ts");
let model: { dir: string; cleanup: () => void };
beforeAll(() => {
  model = makeTinyModelDir();
});
afterAll(() => model.cleanup());

const spawnServe = (args: string[]) => Bun.spawn(["bun", MAIN, "serve", "--port", "0", "--host", "127.0.0.1", ...args], { stdout: "pipe", stderr: "pipe" });

async function refusal(args: string[]): Promise<string> {
  const proc = spawnServe(args);
  const [code, stdout, stderr] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  expect(stdout).not.toContain("listening");
  expect(code).toBe(1);
  return stderr;
}

describe("startup refusals", () => {
  test("flags the model or the server cannot serve are refused with the reason", async () => {
    const onlyConfig = join(model.dir, "..", "only-config");
    mkdirSync(onlyConfig, { recursive: true });
    cpSync(join(model.dir, "config.json"), join(onlyConfig, "config.json"));
    const cases: [string[], RegExp][] = [
      [["--model", model.dir, "--max-context", "100000"], /--max-context 100000 is longer than the model's max_position_embeddings \(2048\)/],
      [["--model", model.dir, "--max-body-bytes", "-1"], /--max-body-bytes must be an integer in 1\.\.∞, got -1/],
      [["--model", model.dir, "--max-running", "0"], /--max-running must be an integer/],
      [["--model", model.dir, "--idle-timeout", "0"], /--idle-timeout must be an integer in 1\.\.255/],
      [["--model", model.dir, "--body-timeout", "-5"], /--body-timeout must be a number of seconds > 0/],
      [["--model", model.dir, "--allowed-hosts", ","], /--allowed-hosts needs at least one host/],
      [["--model", model.dir, "--engine", "cpu", "--max-context", "64"], /--max-context applies to --engine gpu only/],
      [["--model", join(model.dir, "..", "nowhere")], /model directory not found: .*nowhere/],
      [["--model", onlyConfig], /model directory .*only-config is missing tokenizer\.json, weights \(model\.safetensors/],
    ];
    const stderrs = await Promise.all(cases.map(([args]) => refusal(args)));
    stderrs.forEach((stderr, i) => expect(stderr).toMatch(cases[i]![1]));
  }, 60_000);

  test("a context whose KV cache the GPU cannot bind is refused, naming the context that fits", async () => {
    const long = join(model.dir, "..", "long-context");
    cpSync(model.dir, long, { recursive: true });
    const config = JSON.parse(readFileSync(join(long, "config.json"), "utf8"));
    writeFileSync(join(long, "config.json"), JSON.stringify({ ...config, max_position_embeddings: 10_000_000 }));
    const stderr = await refusal(["--model", long, "--max-context", "5000000", "--max-running", "4"]);
    expect(stderr).toMatch(/--max-context 5000000 with --max-running 4 needs a KV cache of [\d.]+ MiB per layer, more than the GPU can bind \([\d.]+ MiB\); use --max-context \d+ or less/);
  }, 60_000);

  test("the binding sizes are the generator's: (slots·context, nKV, hd) f32 per layer", () => {
    const cfg = { numKvHeads: 8, numHeads: 32, headDim: 128, vocabSize: 128_256 };
    expect(servingBufferBytes(cfg, 16, 4096).kvCacheLayer).toBe(4 * 16 * 4096 * 8 * 128);
    const limits = { maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: 2 ** 32 };
    expect(() => checkDeviceFits(cfg, limits, 16, 4096)).toThrow(/use --max-context 2048 or less at --max-running 16/);
    expect(() => checkDeviceFits(cfg, limits, 16, 2048)).not.toThrow();
    expect(() => checkDeviceFits(cfg, limits, 1024, 8)).toThrow(/--max-running 1024 needs logits/);
  });
});

describe("bounded shutdown", () => {
  test("past --drain-timeout a running stream ends with a 503 event, a stalled upload is cut, and the process exits", async () => {
    const proc = spawnServe(["--model", model.dir, "--engine", "cpu", "--drain-timeout", "1"]);
    try {
      const reader = proc.stdout.getReader();
      const out = { text: "" };
      await readUntil(reader, /listening on http:\/\/127\.0\.0\.1:(\d+)/, out);
      const port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out.text)![1]);
      const stalled = rawConnection(port, requestHead("POST", "/v1/completions", { host: "127.0.0.1", "content-type": "application/json", "content-length": 1000 }), '{"prompt": "');
      const stream = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 1500, temperature: 0, ignore_eos: true, stream: true }),
      });
      expect(stream.status).toBe(200);
      const t0 = Date.now();
      proc.kill("SIGTERM");
      const events = await readSse(stream);
      expect(events.at(-1)).toBe("[DONE]");
      const error = (events.at(-2) as Record<string, any>).error;
      expect(error.code).toBe("server_shutdown");
      expect(error.message).toContain("drain timeout");
      expect(await proc.exited).toBe(0);
      expect(Date.now() - t0).toBeLessThan(8000);
      await Promise.race([stalled.closed, Bun.sleep(2000)]);
      expect(stalled.openMs).not.toBeNull();
      await readUntil(reader, /drained; exiting/, out);
      expect(out.text).toMatch(/drain timeout \(1 s\): ending 1 running and 0 queued/);
    } finally {
      proc.kill();
    }
  }, 60_000);

  test("a second SIGTERM exits at once", async () => {
    const proc = spawnServe(["--model", model.dir, "--engine", "cpu", "--drain-timeout", "60"]);
    try {
      const reader = proc.stdout.getReader();
      const out = { text: "" };
      await readUntil(reader, /listening on http:\/\/127\.0\.0\.1:(\d+)/, out);
      const port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out.text)![1]);
      const stream = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 1500, temperature: 0, ignore_eos: true, stream: true }),
      });
      expect(stream.status).toBe(200);
      proc.kill("SIGTERM");
      await readUntil(reader, /draining/, out);
      const t0 = Date.now();
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(143);
      expect(Date.now() - t0).toBeLessThan(3000);
      await stream.body?.cancel().catch(() => {});
    } finally {
      proc.kill();
    }
  }, 60_000);
});
