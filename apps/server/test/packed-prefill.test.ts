// The GPU engine prefills every request admitted in one scheduling round in ONE step
// (KvCacheGenerator.prefillMany). Requests submitted together are packed, and each still gets
// what it gets served alone: greedy and seeded, logprobs and top logprobs. More requests than
// slots: the rest are packed as slots free up. A failing packed prefill falls back to one
// prefill per request, so only the request that causes the failure fails. And 32 simultaneous
// HTTP streams over the GPU engine equal the same requests served alone.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { SampledRow } from "@tuneloom/kernels";
import type { LiveSequence } from "../src/batching-engine.ts";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { GpuEngine, loadGpuEngine, type SeqState } from "../src/gpu-engine.ts";
import { makeTinyModelDir, startServer } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let gpu: GpuEngine;
const MAX_BATCH = 16;

beforeAll(async () => {
  model = makeTinyModelDir();
  gpu = (await loadGpuEngine(model.dir, undefined, { modelId: "tiny", maxBatchSize: MAX_BATCH, maxContext: 128, weightDtype: "f32" })).engine;
});
afterAll(async () => {
  await gpu?.close();
  model?.cleanup();
});

function request(promptIds: number[], over: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    promptIds, maxTokens: 6, temperature: 0, topP: 1, topK: 0, seed: 0,
    stopTokenIds: [], logprobs: false, topLogprobs: 0, ...over,
  };
}

async function collect(engine: InferenceEngine, req: GenerationRequest): Promise<TokenEvent[]> {
  const out: TokenEvent[] = [];
  for await (const e of engine.submit(req, new AbortController().signal)) out.push(e);
  return out;
}

const ids = (events: TokenEvent[]) => events.map((e) => e.tokenId);
const prompt = (text: string) => gpu.tokenizer.encode(text).ids;
const texts = [
  "a",
  "Once upon a time",
  "The quick brown fox jumps over the lazy dog. The quick brown fox",
  "What is 2 plus 2? Think step by step and answer briefly, please.",
  "Hello, world!",
  "Lists: one, two, three, four, five, six, seven",
];
/** Greedy and seeded sampling, with and without (top) logprobs. */
const mixed = () => texts.map((t, i) => request(prompt(t), i % 2 === 0
  ? { maxTokens: 4 + i }
  : { maxTokens: 4 + i, temperature: 0.9, topK: 40, topP: 0.95, seed: 100 + i, logprobs: true, topLogprobs: i % 3 }));

function expectSameEvents(got: TokenEvent[], want: TokenEvent[]) {
  expect(ids(got)).toEqual(ids(want));
  expect(got.map((e) => e.finishReason)).toEqual(want.map((e) => e.finishReason));
  got.forEach((e, i) => {
    const w = want[i]!;
    if (w.logprob === null) expect(e.logprob).toBeNull();
    else expect(Math.abs(e.logprob! - w.logprob)).toBeLessThanOrEqual(1e-5);
    expect(e.topLogprobs?.map((t) => t.tokenId) ?? null).toEqual(w.topLogprobs?.map((t) => t.tokenId) ?? null);
    e.topLogprobs?.forEach((t, j) => expect(Math.abs(t.logprob - w.topLogprobs![j]!.logprob)).toBeLessThanOrEqual(1e-5));
  });
}

describe("packed prefill (GPU engine)", () => {
  test("requests submitted together are prefilled in one step and each equals the request served alone", async () => {
    const reqs = mixed();
    const solo: TokenEvent[][] = [];
    for (const r of reqs) solo.push(await collect(gpu, r));
    expect(new Set(solo.map((s) => ids(s).join())).size).toBe(reqs.length);
    const before = { ...gpu.prefillStats };
    const together = await Promise.all(reqs.map((r) => collect(gpu, r)));
    expect({ steps: gpu.prefillStats.steps - before.steps, prompts: gpu.prefillStats.prompts - before.prompts }).toEqual({ steps: 1, prompts: reqs.length });
    together.forEach((events, i) => expectSameEvents(events, solo[i]!));
    expect(gpu.slotsFree).toBe(MAX_BATCH);
  }, 60_000);

  test("more requests than slots: packed as slots free up (fewer prefill steps than requests), each equals the request served alone", async () => {
    const small = new GpuEngine({ modelId: "tiny", model: gpu.model, tokenizer: gpu.tokenizer, chatTemplate: gpu.chatTemplate, maxBatchSize: 4, maxContext: 128 });
    try {
      const reqs = [...mixed(), ...mixed().slice(0, 3)].map((r, i) => ({ ...r, maxTokens: 2 + (i % 4) }));
      const solo: TokenEvent[][] = [];
      for (const r of reqs) solo.push(await collect(gpu, r));
      const together = await Promise.all(reqs.map((r) => collect(small, r)));
      together.forEach((events, i) => expectSameEvents(events, solo[i]!));
      expect(small.prefillStats.prompts).toBe(reqs.length);
      expect(small.prefillStats.steps).toBeLessThan(reqs.length);
      expect(small.slotsFree).toBe(4);
    } finally {
      await small.close();
    }
  }, 60_000);

  test("a failing packed prefill falls back to one prefill each: only the request that fails, fails", async () => {
    const bad = 13;
    class Faulty extends GpuEngine {
      packedCalls = 0;
      protected override prefillMany(batch: readonly LiveSequence<SeqState>[], u: readonly number[]): Promise<SampledRow[]> {
        this.packedCalls++;
        if (batch.some((s) => s.request.maxTokens === bad)) return Promise.reject(new Error("packed prefill failed"));
        return super.prefillMany(batch, u);
      }
      protected override prefill(seq: LiveSequence<SeqState>, u: number): Promise<SampledRow> {
        if (seq.request.maxTokens === bad) return Promise.reject(new Error("this prompt fails"));
        return super.prefill(seq, u);
      }
    }
    const faulty = new Faulty({ modelId: "tiny", model: gpu.model, tokenizer: gpu.tokenizer, chatTemplate: gpu.chatTemplate, maxBatchSize: 8, maxContext: 128 });
    try {
      const reqs = mixed();
      const solo: TokenEvent[][] = [];
      for (const r of reqs) solo.push(await collect(gpu, r));
      const all = [...reqs.slice(0, 3), request(prompt("boom"), { maxTokens: bad }), ...reqs.slice(3)];
      const results = await Promise.allSettled(all.map((r) => collect(faulty, r)));
      expect(faulty.packedCalls).toBe(1);
      expect(results.map((r) => r.status)).toEqual(all.map((r) => (r.maxTokens === bad ? "rejected" : "fulfilled")));
      const ok = results.filter((r): r is PromiseFulfilledResult<TokenEvent[]> => r.status === "fulfilled").map((r) => r.value);
      ok.forEach((events, i) => expectSameEvents(events, solo[i]!));
      expect(faulty.counters.failed).toBe(1);
      expect(faulty.slotsFree).toBe(8);
    } finally {
      await faulty.close();
    }
  }, 60_000);

  test("32 simultaneous HTTP streams over the GPU engine each equal the same request served alone", async () => {
    const running = startServer({ engine: gpu, maxRunning: 32, maxQueued: 32 });
    try {
      const client = new OpenAI({ baseURL: running.baseURL, apiKey: "x", maxRetries: 0 });
      const body = (i: number, stream: boolean) => ({
        model: "tiny", messages: [{ role: "user", content: `Question ${i}: what is ${i} plus ${i % 7}?` }], max_tokens: 6,
        ...(i % 2 === 0 ? { temperature: 0 } : { temperature: 0.8, seed: i }), stream,
      });
      const alone: string[] = [];
      for (let i = 0; i < 32; i++) {
        const r = await client.chat.completions.create(body(i, false) as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
        alone.push(r.choices[0]!.message.content!);
      }
      expect(new Set(alone).size).toBeGreaterThan(1);
      const before = gpu.prefillStats.steps;
      const together = await Promise.all(Array.from({ length: 32 }, async (_, i) => {
        const stream = await client.chat.completions.create(body(i, true) as OpenAI.Chat.ChatCompletionCreateParamsStreaming);
        let text = "";
        for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
        return text;
      }));
      expect(together).toEqual(alone);
      expect(gpu.prefillStats.steps - before).toBeLessThan(32); // packed: fewer steps than requests
      expect(gpu.slotsFree).toBe(MAX_BATCH);
    } finally {
      running.stop();
    }
  }, 120_000);
});
