/**
 * A continuous-batching run of KvCacheGenerator on the tiny model that exercises what a replayed
 * decode step must get right: batch size changes (2 → 1 → 3 → 2), a released slot handed to a new
 * sequence, rows reordered between steps, greedy and seeded sampling rows in one batch, top-N on
 * and off, and optionally LoRA. decode-replay.test.ts runs it with and without replay;
 * fixtures/decode-scenario.json holds what the generator returned before decode was replayed
 * (commit 1a0a354's generator on lavapipe; `bun packages/model/test/decode-scenario.ts --write`
 * would rewrite it with the current generator).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { SampledRow, SamplingParams } from "@tuneloom/kernels";
import { type GeneratorOptions, generateIds, KvCacheGenerator, uniformStream } from "../src/gpu/generator.ts";
import type { LayerLora } from "../src/gpu/lora.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { writeTinyModel } from "../src/tiny-model.ts";

export const FIXTURE = join(import.meta.dir, "fixtures", "decode-scenario.json");

export const GREEDY: SamplingParams = { temperature: 0 };
export const SAMPLED: SamplingParams = { temperature: 0.9, topK: 20, topP: 0.9 };
export const HOT: SamplingParams = { temperature: 1.3 };

export interface ScenarioResult {
  /** Every row the generator returned, in call order (prefill rows included). */
  rows: SampledRow[];
  /** generateIds: greedy and seeded sampling. */
  greedyIds: number[];
  sampledIds: number[];
}

/** Small seeded LoRA on q_proj and down_proj of every layer (uploaded f32). */
export function tinyLora(model: GpuModel, rank = 4, seed = 99): LayerLora[] {
  const rt = model.rt, cfg = model.cfg;
  const next = uniformStream(seed);
  const rand = (n: number, amp: number) => Float32Array.from({ length: n }, () => (next() * 2 - 1) * amp);
  const mod = (inF: number, outF: number) => ({
    A: rt.upload("f32", [rank, inF], rand(rank * inF, 0.5), "lora_A"),
    B: rt.upload("f32", [outF, rank], rand(outF * rank, 0.5), "lora_B"),
    scaling: 0.75,
  });
  return Array.from({ length: cfg.numLayers }, () => ({
    q_proj: mod(cfg.hiddenSize, cfg.numHeads * cfg.headDim),
    down_proj: mod(cfg.intermediateSize, cfg.hiddenSize),
  }));
}

export function releaseLora(model: GpuModel, lora: readonly LayerLora[]) {
  for (const layer of lora) for (const m of Object.values(layer)) if (m) model.rt.release(m.A, m.B);
}

/** The batching run; `gen` options come from `opts` (replay on or off, LoRA). */
export async function runScenario(model: GpuModel, opts: Partial<GeneratorOptions> = {}): Promise<ScenarioResult> {
  const gen = new KvCacheGenerator(model, { maxSlots: 4, maxContext: 40, ...opts });
  const u = uniformStream(1234);
  const rows: SampledRow[] = [];
  const seqs = new Map<number, { slot: number; sampling: SamplingParams; last: number; position: number }>();
  try {
    const start = async (id: number, prompt: number[], sampling: SamplingParams, topN: number) => {
      const slot = gen.acquireSlot();
      if (slot === null) throw new Error("no slot");
      const row = await gen.prefill(slot, prompt, sampling, u(), topN);
      rows.push(row);
      seqs.set(id, { slot, sampling, last: row.token, position: prompt.length });
    };
    const step = async (ids: number[], topN: number) => {
      const batch = ids.map((id) => seqs.get(id)!);
      const out = await gen.decode(batch.map((s) => ({ slot: s.slot, token: s.last, position: s.position, sampling: s.sampling, u: u() })), topN);
      out.forEach((row, b) => {
        rows.push(row);
        batch[b]!.last = row.token;
        batch[b]!.position++;
      });
    };
    await start(0, [5, 17, 30, 42, 99], GREEDY, 0);
    await start(1, [7, 8, 9, 10, 11, 12, 13], SAMPLED, 2);
    for (let i = 0; i < 3; i++) await step([0, 1], 0); // B = 2
    gen.releaseSlot(seqs.get(0)!.slot);
    seqs.delete(0);
    for (let i = 0; i < 2; i++) await step([1], 3); // B = 1, top-3
    await start(2, [3, 1, 4], HOT, 0); // takes the slot sequence 0 gave back
    await start(3, [2, 7, 18, 28, 18, 28], GREEDY, 0);
    for (let i = 0; i < 3; i++) await step([1, 2, 3], 0); // B = 3
    for (let i = 0; i < 2; i++) await step([1, 2, 3], 2); // B = 3, top-2
    for (let i = 0; i < 2; i++) await step([3, 1], 0); // B = 2 again, rows swapped
  } finally {
    gen.dispose();
  }
  const prompt = [11, 22, 33, 44];
  const lora = opts.lora;
  const greedyIds = (await generateIds(model, prompt, { maxTokens: 12, sampling: GREEDY, lora })).ids;
  const sampledIds = (await generateIds(model, prompt, { maxTokens: 12, sampling: SAMPLED, seed: 7, lora })).ids;
  return { rows, greedyIds, sampledIds };
}

export function writeScenarioModel(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "tuneloom-decode-scenario-"));
  writeTinyModel(dir, { arch: "llama", seed: 3 });
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

if (import.meta.main && process.argv.includes("--write")) {
  const m = writeScenarioModel();
  try {
    const model = await GpuModel.load(m.dir, { weightDtype: "f32" });
    const plain = await runScenario(model);
    const lora = tinyLora(model);
    const withLora = await runScenario(model, { lora });
    releaseLora(model, lora);
    writeFileSync(FIXTURE, `${JSON.stringify({ plain, lora: withLora })}\n`);
    console.log(`wrote ${FIXTURE}: ${plain.rows.length} + ${withLora.rows.length} rows`);
  } finally {
    m.cleanup();
  }
}
