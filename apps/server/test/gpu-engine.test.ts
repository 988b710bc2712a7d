// The GPU engine against the CPU reference engine on the tiny model: same tokens for the same
// requests (greedy, and seeded sampling), batched equals solo, aborts give the KV slot back,
// and the HTTP app serves the same chat completion on both.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { CpuReferenceEngine } from "../src/cpu-engine.ts";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { type GpuEngine, loadGpuEngine } from "../src/gpu-engine.ts";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { makeTinyModelDir, startServer, waitFor } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let cpu: CpuReferenceEngine;
let gpu: GpuEngine;
const MAX_BATCH = 8;

beforeAll(async () => {
  model = makeTinyModelDir();
  cpu = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" }).engine;
  gpu = (await loadGpuEngine(model.dir, undefined, { modelId: "tiny", maxBatchSize: MAX_BATCH, maxContext: 128 })).engine;
});
afterAll(async () => {
  await gpu?.close();
  model?.cleanup();
});

function request(promptIds: number[], over: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    promptIds, maxTokens: 12, temperature: 0, topP: 1, topK: 0, seed: 0,
    stopTokenIds: cpu.tokenizer.eosTokenIds, logprobs: false, topLogprobs: 0, ...over,
  };
}

async function collect(engine: InferenceEngine, req: GenerationRequest, signal = new AbortController().signal): Promise<TokenEvent[]> {
  const out: TokenEvent[] = [];
  for await (const e of engine.submit(req, signal)) out.push(e);
  return out;
}

const ids = (events: TokenEvent[]) => events.map((e) => e.tokenId);
const prompt = (text: string) => cpu.tokenizer.encode(text).ids;
const texts = [
  "Once upon a time",
  "The quick brown fox jumps over the lazy dog. The quick brown fox",
  "a",
  "What is 2 plus 2? Think step by step and answer briefly, please.",
  "Hello, world!",
  "In the beginning",
  "Lists: one, two, three, four, five, six, seven",
  "The capital of France is",
];

describe("GpuEngine vs CPU reference", () => {
  test("greedy: same tokens and finish reasons for the same prompts", async () => {
    for (const t of texts.slice(0, 3)) {
      const req = request(prompt(t), { maxTokens: 16 });
      const [g, c] = [await collect(gpu, req), await collect(cpu, req)];
      expect(ids(g)).toEqual(ids(c));
      expect(g.at(-1)!.finishReason).toBe(c.at(-1)!.finishReason!);
    }
  }, 60_000);

  test("seeded sampling draws the same tokens; logprobs and top logprobs agree", async () => {
    const req = request(prompt(texts[1]!), { temperature: 0.9, topK: 40, topP: 0.95, seed: 1234, maxTokens: 10, logprobs: true, topLogprobs: 3 });
    const [g, c] = [await collect(gpu, req), await collect(cpu, req)];
    expect(ids(g)).toEqual(ids(c));
    expect(ids(g)).not.toEqual(ids(await collect(cpu, { ...req, temperature: 0 }))); // really sampled, not greedy
    g.forEach((e, i) => {
      expect(e.logprob!).toBeCloseTo(c[i]!.logprob!, 3);
      expect(e.topLogprobs!.map((t) => t.tokenId)).toEqual(c[i]!.topLogprobs!.map((t) => t.tokenId));
      e.topLogprobs!.forEach((t, j) => expect(t.logprob).toBeCloseTo(c[i]!.topLogprobs![j]!.logprob, 3));
    });
    // Without logprobs asked for, none are reported.
    const plain = await collect(gpu, { ...req, logprobs: false, topLogprobs: 0 });
    expect(ids(plain)).toEqual(ids(g));
    expect(plain.every((e) => e.logprob === null && e.topLogprobs === null)).toBe(true);
  }, 60_000);

  test("penalties, min_p and min_tokens: same tokens as the CPU reference, alone and batched with plain requests", async () => {
    const plainFirst = ids(await collect(cpu, request(prompt(texts[0]!), { maxTokens: 1 })))[0]!;
    const reqs = [
      request(prompt(texts[1]!), { repetitionPenalty: 0.01, maxTokens: 10 }),
      request(prompt(texts[6]!), { presencePenalty: -2, frequencyPenalty: -1.5, repetitionPenalty: 1.3, maxTokens: 10 }),
      request(prompt(texts[0]!), { minTokens: 4, stopTokenIds: [...cpu.tokenizer.eosTokenIds, plainFirst], maxTokens: 8 }),
      request(prompt(texts[3]!), { temperature: 1.2, minP: 0.2, seed: 77, maxTokens: 10 }),
      request(prompt(texts[2]!), { maxTokens: 10 }), // no penalties, in the same batch
    ];
    const want = [];
    for (const r of reqs) want.push(ids(await collect(cpu, r)));
    expect(want[0]).not.toEqual(ids(await collect(cpu, { ...reqs[0]!, repetitionPenalty: 1 })));
    expect(want[2]!.slice(0, 4)).not.toContain(plainFirst);
    for (const [i, r] of reqs.entries()) expect([i, ...ids(await collect(gpu, r))]).toEqual([i, ...want[i]!]);
    const batched = await Promise.all(reqs.map((r) => collect(gpu, r)));
    expect(batched.map(ids)).toEqual(want);
  }, 120_000);

  test("with penalties the logprobs are of the raw logits (vLLM's default): GPU = CPU, and equal to the unpenalised run's where the tokens agree", async () => {
    const base = request(prompt(texts[6]!), { maxTokens: 8, logprobs: true, topLogprobs: 3 });
    const pen = { ...base, repetitionPenalty: 0.01, presencePenalty: 1.5 };
    const [g, c, plain] = [await collect(gpu, pen), await collect(cpu, pen), await collect(cpu, base)];
    expect(ids(g)).toEqual(ids(c));
    expect(ids(g)).not.toEqual(ids(plain)); // the penalties changed what was drawn
    g.forEach((e, i) => {
      expect(e.logprob!).toBeCloseTo(c[i]!.logprob!, 3);
      expect(e.topLogprobs!.map((t) => t.tokenId)).toEqual(c[i]!.topLogprobs!.map((t) => t.tokenId));
    });
    // Step 0 sees the same prompt either way: the same raw distribution, so the same reported
    // logprob for the token drawn and the same top-3, although the penalised draw may differ.
    const first = await collect(cpu, { ...base, maxTokens: 1 });
    expect(g[0]!.topLogprobs).toEqual(first[0]!.topLogprobs!.map((t) => ({ ...t, logprob: expect.closeTo(t.logprob, 3) })) as never);
    const rawFirst = first[0]!.topLogprobs!.find((t) => t.tokenId === g[0]!.tokenId);
    if (rawFirst) expect(g[0]!.logprob!).toBeCloseTo(rawFirst.logprob, 3);
  }, 60_000);

  test("a stop token ends the sequence with finishReason stop (event carries it)", async () => {
    const req = request(prompt(texts[0]!), { maxTokens: 8 });
    const first = await collect(gpu, req);
    const stopAt = first[3]!.tokenId;
    const stopped = await collect(gpu, { ...req, stopTokenIds: [stopAt] });
    const k = ids(first).indexOf(stopAt);
    expect(ids(stopped)).toEqual(ids(first).slice(0, k + 1));
    expect(stopped.at(-1)!.finishReason).toBe("stop");
    expect(first.at(-1)!.finishReason).toBe("length");
  }, 60_000);
});

describe("continuous batching", () => {
  test("8 concurrent requests of different lengths each equal the request served alone", async () => {
    const reqs = texts.map((t, i) => request(prompt(t), { maxTokens: 3 + 2 * i, stopTokenIds: [] }));
    const solo: number[][] = [];
    for (const r of reqs) solo.push(ids(await collect(gpu, r)));
    expect(new Set(solo.map((s) => s.slice(0, 3).join())).size).toBeGreaterThan(4); // the prompts really lead to different outputs
    const stepsBefore = gpu.counters.steps;
    const together = await Promise.all(reqs.map(async (r) => ids(await collect(gpu, r))));
    expect(together).toEqual(solo);
    expect(together.map((t) => t.length)).toEqual(reqs.map((r) => r.maxTokens));
    // One decode per step for all live sequences: steps ≈ the longest request, not the sum.
    const longest = Math.max(...reqs.map((r) => r.maxTokens));
    expect(gpu.counters.steps - stepsBefore).toBeLessThanOrEqual(longest + reqs.length);
    expect(gpu.slotsFree).toBe(MAX_BATCH);
    expect(gpu.counters.active).toBe(0);
  }, 120_000);

  test("more requests than slots wait for a slot, then run", async () => {
    const reqs = Array.from({ length: MAX_BATCH + 3 }, (_, i) => request(prompt(texts[i % texts.length]!), { maxTokens: 4, stopTokenIds: [] }));
    const out = await Promise.all(reqs.map((r) => collect(gpu, r)));
    expect(out.map((e) => e.length)).toEqual(reqs.map(() => 4));
    expect(gpu.slotsFree).toBe(MAX_BATCH);
  }, 60_000);

  test("abort drops the sequence at the next step and frees its slot; the others continue", async () => {
    const abortedBefore = gpu.counters.aborted;
    const controller = new AbortController();
    const long = request(prompt(texts[0]!), { maxTokens: 100, stopTokenIds: [] });
    const other = request(prompt(texts[3]!), { maxTokens: 20, stopTokenIds: [] });
    const otherAlone = ids(await collect(gpu, other));
    const seen: TokenEvent[] = [];
    const aborted = (async () => {
      for await (const e of gpu.submit(long, controller.signal)) {
        seen.push(e);
        if (seen.length === 3) controller.abort();
      }
    })();
    const otherBatched = collect(gpu, other);
    await aborted; // ends without throwing
    expect(seen.length).toBeLessThan(100);
    expect(seen.every((e) => e.finishReason === null)).toBe(true);
    await waitFor(() => gpu.counters.aborted === abortedBefore + 1, 10_000, "the engine to see the abort");
    expect(ids(await otherBatched)).toEqual(otherAlone);
    await waitFor(() => gpu.slotsFree === MAX_BATCH, 10_000, "the slot to be freed");
    // An already-aborted signal never gets a token.
    const dead = new AbortController();
    dead.abort();
    expect(await collect(gpu, long, dead.signal)).toEqual([]);
    expect(gpu.slotsFree).toBe(MAX_BATCH);
  }, 60_000);
});

describe("HTTP", () => {
  test("a chat completion through the openai client equals the CPU engine's", async () => {
    const gpuServer = startServer({ engine: gpu });
    const cpuServer = startServer({ engine: cpu });
    try {
      const body = {
        model: "tiny",
        messages: [{ role: "system", content: "You are terse." }, { role: "user", content: "Name a color." }],
        max_tokens: 10,
        temperature: 0,
      } as const;
      const ask = (baseURL: string) => new OpenAI({ baseURL, apiKey: "x", maxRetries: 0 }).chat.completions.create({ ...body, messages: [...body.messages] });
      const [g, c] = await Promise.all([ask(gpuServer.baseURL), ask(cpuServer.baseURL)]);
      expect(g.choices[0]!.message.content).toBe(c.choices[0]!.message.content!);
      expect(g.choices[0]!.finish_reason).toBe(c.choices[0]!.finish_reason);
      expect(g.usage).toEqual(c.usage!);
    } finally {
      await gpuServer.stop();
      await cpuServer.stop();
    }
  }, 60_000);
});
