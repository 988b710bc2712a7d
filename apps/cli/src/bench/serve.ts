/**
 * `bun run bench -- --serve --model NAME [--streams 1,16] [--tokens 128] [--prompt-tokens 64] [--weight-dtype f16|bf16|f32]`:
 * serving latency and throughput over real HTTP, through the OpenAI-compatible endpoint.
 *
 * The model is a random-weight model of the published shape (model-shapes.ts; `tiny` = the tiny
 * test model, for lavapipe) with the tiny model's tokenizer files beside it. Its vocabulary
 * (49,152 for SmolLM2) is larger than the tokenizer's (~460): the GPU engine masks the padded
 * rows, so every sampled id is a token the server can detokenize. The server is what
 * `bun run serve` runs (loadGpuEngine → createServer → Bun.serve, default batch and context),
 * in this process, on a free port of 127.0.0.1; the client runs on the same event loop.
 *
 * For each stream count S: one unmeasured round of S requests (compiles the prefill pipelines
 * and the decode plan of every batch size the round passes through), then the measured round:
 * S concurrent `POST /v1/completions` with `stream: true`, a P-token prompt given as token ids
 * (each stream its own), temperature 0, `max_tokens` N and `ignore_eos` (so every stream makes
 * exactly N tokens, checked through finish_reason "length" and usage). `logprobs: 0` makes the
 * server send one SSE chunk per token (a byte token that is not yet valid UTF-8 has no text of
 * its own), so the first token's arrival is timed exactly; the GPU computes the sampled token's
 * logprob either way and no top-N alternatives are asked for. Per request:
 *   ttft     send → first chunk carrying a token (queueing + prefill of everyone admitted before it)
 *   decode   (tokens − 1) / (last token − first token): tokens per second after the first
 * Reported (one JSON line per S):
 *   ttft_ms_p50, ttft_ms_max        over the S requests
 *   decode_tok_s_per_stream         mean over the S requests of their decode rate
 *   total_tok_s                     S·N / (last request done − first request sent)
 *   e2e_ms_max                      the slowest request, send → [DONE]
 *   tokens                          tokens received over all streams (= S·N)
 */
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { TINY_SPECIAL_TOKENS, writeTinyModel } from "@tuneloom/model";
import { createServer } from "@tuneloom/server";
import { listen } from "@tuneloom/server/listen.ts";
import { DEFAULT_GPU_MAX_BATCH, loadGpuEngine } from "@tuneloom/server/gpu-engine.ts";
import { writeBenchModel } from "./model-shapes.ts";

export interface ServeBenchOptions {
  model: string;
  /** Concurrent streams per round, one JSON line each; default [1, 16]. */
  streams: number[];
  /** max_tokens of every request; default 128. */
  tokens: number;
  /** Prompt length in tokens; default 64. */
  promptTokens: number;
  weightDtype?: "f32" | "f16" | "bf16";
}

export interface ServeBenchLine {
  op: "serve";
  model: string;
  streams: number;
  prompt_tokens: number;
  max_tokens: number;
  weights: string;
  ttft_ms_p50: number;
  ttft_ms_max: number;
  decode_tok_s_per_stream: number;
  total_tok_s: number;
  e2e_ms_max: number;
  tokens: number;
  device: string;
}

/** What one streamed request saw, in performance.now() milliseconds. */
interface StreamTiming {
  sentAt: number;
  firstTokenAt: number;
  lastTokenAt: number;
  doneAt: number;
  tokens: number;
  finishReason: string | null;
  usageTokens: number | null;
}

const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"];
const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** The model directory: the published shape's config + random weights, plus the tiny model's tokenizer files. */
function writeServeModel(name: string, dir: string): void {
  if (name === "tiny") {
    writeTinyModel(dir, { arch: "llama", seed: 1 });
    return;
  }
  writeBenchModel(name, dir);
  const tinyDir = mkdtempSync(path.join(tmpdir(), "tuneloom-bench-serve-tok-"));
  try {
    writeTinyModel(tinyDir, { arch: "llama", seed: 1 });
    for (const file of TOKENIZER_FILES) copyFileSync(path.join(tinyDir, file), path.join(dir, file));
  } finally {
    rmSync(tinyDir, { recursive: true, force: true });
  }
}

/** P pseudo-random ids below `vocab` (ordinary tokens: bytes and merges, no specials); stream s gets its own. */
function promptIds(stream: number, length: number, vocab: number): number[] {
  let s = (0x2545f491 + Math.imul(stream + 1, 0x9e3779b9)) >>> 0;
  return Array.from({ length }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), (s >>> 8) % vocab));
}

/** One streaming completion; timestamps the chunks that carry tokens. */
async function streamCompletion(url: string, body: Record<string, unknown>): Promise<StreamTiming> {
  const sentAt = performance.now();
  const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok || !res.body) throw new Error(`POST ${url}: HTTP ${res.status}: ${await res.text()}`);
  const t: StreamTiming = { sentAt, firstTokenAt: NaN, lastTokenAt: NaN, doneAt: NaN, tokens: 0, finishReason: null, usageTokens: null };
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const bytes of res.body) {
    const now = performance.now();
    buffered += decoder.decode(bytes, { stream: true });
    let end: number;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") {
          t.doneAt = now;
          continue;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(`stream failed: ${chunk.error.message}`);
        if (chunk.usage) t.usageTokens = chunk.usage.completion_tokens;
        for (const choice of chunk.choices ?? []) {
          const n = choice.logprobs?.tokens?.length ?? 0;
          if (n > 0) {
            if (t.tokens === 0) t.firstTokenAt = now;
            t.lastTokenAt = now;
            t.tokens += n;
          }
          if (choice.finish_reason) t.finishReason = choice.finish_reason;
        }
      }
    }
  }
  if (Number.isNaN(t.doneAt)) throw new Error(`POST ${url}: the stream ended without data: [DONE]`);
  return t;
}

export async function benchServe(o: ServeBenchOptions, onLine: (line: ServeBenchLine) => void = () => {}): Promise<ServeBenchLine[]> {
  // Two at least: the decode rate is timed from the first token to the last.
  if (!Number.isInteger(o.tokens) || o.tokens < 2) throw new Error(`--tokens must be an integer ≥ 2, got ${o.tokens}`);
  if (!Number.isInteger(o.promptTokens) || o.promptTokens < 1) throw new Error(`--prompt-tokens must be a positive integer, got ${o.promptTokens}`);
  if (o.streams.length === 0 || o.streams.some((s) => !Number.isInteger(s) || s < 1))
    throw new Error(`--streams must be a comma-separated list of positive integers, got '${o.streams.join(",")}'`);
  const N = o.tokens, P = o.promptTokens;
  const dir = mkdtempSync(path.join(tmpdir(), "tuneloom-bench-serve-"));
  try {
    writeServeModel(o.model, dir);
    // As `bun run serve` (default context); a batch as large as the largest round, so no stream waits for a slot.
    const { engine } = await loadGpuEngine(dir, undefined, {
      modelId: o.model,
      weightDtype: o.weightDtype,
      maxBatchSize: Math.max(DEFAULT_GPU_MAX_BATCH, ...o.streams),
    });
    if (P + N > engine.maxContext) throw new Error(`--prompt-tokens + --tokens (${P + N}) exceeds the served context ${engine.maxContext}`);
    const server = createServer({ engine });
    const http = listen(server, { hostname: "127.0.0.1", port: 0 });
    const url = `http://127.0.0.1:${http.port}/v1/completions`;
    const device = engine.model.rt.caps.description;
    const vocab = engine.tokenizer.vocabSize - TINY_SPECIAL_TOKENS.length; // the tiny tokenizer's special tokens come last
    const request = (stream: number, maxTokens: number) => ({
      model: o.model,
      prompt: promptIds(stream, P, vocab),
      max_tokens: maxTokens,
      temperature: 0,
      ignore_eos: true,
      logprobs: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const roundOf = async (S: number, maxTokens: number) => {
      const timings = await Promise.all(Array.from({ length: S }, (_, s) => streamCompletion(url, request(s, maxTokens))));
      for (const [s, t] of timings.entries())
        if (t.tokens !== maxTokens || t.usageTokens !== maxTokens || t.finishReason !== "length")
          throw new Error(`stream ${s} of ${S}: ${t.tokens} tokens received (usage ${t.usageTokens}), finish_reason ${t.finishReason}; expected ${maxTokens} and "length"`);
      return timings;
    };
    const lines: ServeBenchLine[] = [];
    try {
      await roundOf(1, Math.min(N, 4)); // first request: pipeline compilation
      for (const S of o.streams) {
        await roundOf(S, N); // warm-up: the decode plan of every batch size this round passes through
        const ts = await roundOf(S, N);
        const ttft = ts.map((t) => t.firstTokenAt - t.sentAt);
        const decodeRates = ts.map((t) => (t.tokens - 1) / (Math.max(t.lastTokenAt - t.firstTokenAt, 1e-3) / 1000));
        const wall = Math.max(...ts.map((t) => t.doneAt)) - Math.min(...ts.map((t) => t.sentAt));
        const tokens = ts.reduce((a, t) => a + t.tokens, 0);
        const line: ServeBenchLine = {
          op: "serve", model: o.model, streams: S, prompt_tokens: P, max_tokens: N, weights: engine.model.weights.dtype,
          ttft_ms_p50: round(median(ttft), 2), ttft_ms_max: round(Math.max(...ttft), 2),
          decode_tok_s_per_stream: round(decodeRates.reduce((a, r) => a + r, 0) / S, 1),
          total_tok_s: round(tokens / (wall / 1000), 1), e2e_ms_max: round(Math.max(...ts.map((t) => t.doneAt - t.sentAt)), 2),
          tokens, device,
        };
        lines.push(line);
        onLine(line);
      }
    } finally {
      // As serve's SIGTERM path: let running work finish, stop listening, free the GPU state.
      await server.scheduler.drain();
      await http.stop();
      await engine.close();
    }
    return lines;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
