// A checkpoint whose vocab_size pads past the tokenizer's (Qwen2.5: 151,936 logit rows for
// 151,665 ids), with padded lm_head rows built to out-score every real token: neither engine may
// ever generate or report a padded row, and each must generate on the padded model exactly what
// it generates on the unpadded one (logprobs normalised over the real tokens only).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { cpuReferenceForward, loadModelConfig, openCheckpoint } from "@tuneloom/model";
import type { CpuReferenceEngine } from "../src/cpu-engine.ts";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { type GpuEngine, loadGpuEngine } from "../src/gpu-engine.ts";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { makeTinyModelDir, padVocab } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let paddedDir: string;
let cpuBase: CpuReferenceEngine;
let cpuPadded: CpuReferenceEngine;
let gpuPadded: GpuEngine;
let V: number;
let promptIds: number[];
let baseGreedy: TokenEvent[];
const STEPS = 8;

async function collect(engine: InferenceEngine, req: GenerationRequest): Promise<TokenEvent[]> {
  const out: TokenEvent[] = [];
  for await (const e of engine.submit(req, new AbortController().signal)) out.push(e);
  return out;
}

const request = (over: Partial<GenerationRequest> = {}): GenerationRequest => ({
  promptIds, maxTokens: STEPS, temperature: 0, topP: 1, topK: 0, seed: 0,
  stopTokenIds: [], logprobs: true, topLogprobs: 5, ...over,
});
const ids = (events: TokenEvent[]) => events.map((e) => e.tokenId);
const allIds = (events: TokenEvent[]) => events.flatMap((e) => [e.tokenId, ...(e.topLogprobs ?? []).map((t) => t.tokenId)]);

beforeAll(async () => {
  model = makeTinyModelDir();
  cpuBase = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" }).engine;
  V = cpuBase.tokenizer.vocabSize;
  promptIds = cpuBase.tokenizer.encode("Once upon a time").ids;
  baseGreedy = await collect(cpuBase, request());
  // Pad to the next multiple of 128 (at least STEPS rows), as checkpoints round vocab_size up.
  const pad = 128 - (V % 128) + (V % 128 > 128 - STEPS ? 128 : 0);
  paddedDir = join(model.dir, "..", "tiny-padded");
  padVocab(model.dir, paddedDir, pad, ids(baseGreedy));
  cpuPadded = loadCpuReferenceEngine({ modelDir: paddedDir, modelId: "tiny" }).engine;
  gpuPadded = (await loadGpuEngine(paddedDir, undefined, { modelId: "tiny", maxBatchSize: 4, maxContext: 64 })).engine;
});
afterAll(async () => {
  await gpuPadded?.close();
  model?.cleanup();
});

describe("padded vocabulary", () => {
  test("the fixture: config vocab_size exceeds the tokenizer's, and unmasked greedy would pick a padded row at every step", () => {
    const config = loadModelConfig(paddedDir);
    expect(config.vocabSize % 128).toBe(0);
    expect(config.vocabSize).toBeGreaterThan(V);
    expect(cpuPadded.tokenizer.vocabSize).toBe(V);
    const seq = [...promptIds, ...ids(baseGreedy)];
    const logits = cpuReferenceForward(config, openCheckpoint(paddedDir), seq);
    const Vp = config.vocabSize;
    for (let t = promptIds.length - 1; t < seq.length - 1; t++) {
      const row = logits.subarray(t * Vp, (t + 1) * Vp);
      let best = 0;
      for (let i = 1; i < Vp; i++) if (row[i]! > row[best]!) best = i;
      expect(best).toBeGreaterThanOrEqual(V);
    }
  });

  test("CPU engine: greedy and seeded sampling give exactly the unpadded model's tokens and logprobs", async () => {
    expect(await collect(cpuPadded, request())).toEqual(baseGreedy);
    const sampled = request({ temperature: 1.2, topK: 0, topP: 1, seed: 77 });
    const got = await collect(cpuPadded, sampled);
    expect(got).toEqual(await collect(cpuBase, sampled));
    expect(Math.max(...allIds(got))).toBeLessThan(V);
  }, 60_000);

  test("GPU engine: greedy and seeded sampling give the unpadded model's tokens; logprobs over the real tokens", async () => {
    const greedy = await collect(gpuPadded, request());
    expect(ids(greedy)).toEqual(ids(baseGreedy));
    greedy.forEach((e, i) => {
      expect(e.logprob!).toBeCloseTo(baseGreedy[i]!.logprob!, 3);
      expect(e.topLogprobs!.map((t) => t.tokenId)).toEqual(baseGreedy[i]!.topLogprobs!.map((t) => t.tokenId));
      e.topLogprobs!.forEach((t, j) => expect(t.logprob).toBeCloseTo(baseGreedy[i]!.topLogprobs![j]!.logprob, 3));
    });
    const sampled = request({ temperature: 1.2, topK: 50, topP: 0.95, seed: 77 });
    const got = await collect(gpuPadded, sampled);
    expect(ids(got)).toEqual(ids(await collect(cpuBase, sampled)));
    expect(Math.max(...allIds(got), ...allIds(greedy))).toBeLessThan(V);
  }, 60_000);
});
