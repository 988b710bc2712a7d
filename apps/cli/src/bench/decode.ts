/**
 * `bun run bench -- --decode --model NAME [--tokens N] [--batch B] [--weight-dtype f16|bf16|f32]`:
 * greedy generation with the KV-cache generator on a random-weight model of the published shape
 * (model-shapes.ts; `tiny` = the tiny test model, for lavapipe). B sequences, each with its own
 * 32-token random prompt, are prefilled one at a time and then decoded N steps together, one
 * submit per step (what the server's GpuEngine does every step).
 *
 * A warm-up round (prefill all, 2 decode steps) compiles every pipeline first. Then:
 *   prefill_ms    mean wall time of one 32-token prefill (submit to sampled token on the CPU)
 *   ms_per_token  mean wall time of one decode step = per-sequence latency of a token
 *   tok_s         B·N / decode wall time = tokens generated per second over the batch
 *   peak_gib      peak of the GPU buffers tuneloom allocated (weights, KV cache, activations)
 */
import { GpuModel, KvCacheGenerator } from "@tuneloom/model";
import { benchModelDir } from "./model-shapes.ts";
import { profileStep } from "./train.ts";

export interface DecodeBenchOptions {
  model: string;
  /** Decode steps after the prefill; default 128. */
  tokens: number;
  /** Sequences decoded together; default 1. */
  batch: number;
  weightDtype?: "f32" | "f16" | "bf16";
  /** Also time one decode step per dispatch (GPU timestamps). */
  profile?: boolean;
}

export const DECODE_PROMPT_TOKENS = 32;
const GREEDY = { temperature: 0 };
const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;

export async function benchDecode(o: DecodeBenchOptions) {
  if (!Number.isInteger(o.tokens) || o.tokens < 1) throw new Error(`--tokens must be a positive integer, got ${o.tokens}`);
  if (!Number.isInteger(o.batch) || o.batch < 1) throw new Error(`--batch must be a positive integer, got ${o.batch}`);
  const { dir, cleanup } = benchModelDir(o.model, "tuneloom-bench-decode-");
  try {
    const model = await GpuModel.load(dir, { weightDtype: o.weightDtype });
    const rt = model.rt, B = o.batch, N = o.tokens, P = DECODE_PROMPT_TOKENS, V = model.cfg.vocabSize;
    const gen = new KvCacheGenerator(model, { maxSlots: B, maxContext: P + N + 1 });
    try {
      let s = 12345;
      const prompts = Array.from({ length: B }, () => Array.from({ length: P }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s % V)));
      const slots = prompts.map(() => gen.acquireSlot()!);
      // One prompt per submit, as the engine admits requests.
      const prefillAll = async () => {
        const first: number[] = [];
        for (let b = 0; b < B; b++) first.push((await gen.prefill(slots[b]!, prompts[b]!, GREEDY, 0)).token);
        return first;
      };
      const decodeSteps = async (first: number[], steps: number) => {
        let last = first;
        for (let i = 0; i < steps; i++) {
          const rows = await gen.decode(slots.map((slot, b) => ({ slot, token: last[b]!, position: P + i, sampling: GREEDY, u: 0 })));
          last = rows.map((r) => r.token);
        }
        return last;
      };
      // Warm-up: compiles the prefill and batch-B decode pipelines.
      await decodeSteps(await prefillAll(), Math.min(2, N));

      let t0 = performance.now();
      const first = await prefillAll();
      const prefillMs = (performance.now() - t0) / B;
      const r0 = rt.recordStats.ms;
      t0 = performance.now();
      const last = await decodeSteps(first, N);
      const decodeMs = performance.now() - t0;
      const recordMs = (rt.recordStats.ms - r0) / N;
      const profile = o.profile
        ? await profileStep(rt, () => gen.decode(slots.map((slot, b) => ({ slot, token: last[b]!, position: P + N, sampling: GREEDY, u: 0 }))))
        : undefined;
      return {
        op: "decode", model: o.model, batch: B, tokens: N, weights: model.weights.dtype, load_s: round(model.loadReport.seconds, 2),
        tok_s: round((B * N) / (decodeMs / 1000), 1), ms_per_token: round(decodeMs / N, 3), prefill_ms: round(prefillMs, 2),
        record_ms_per_token: round(recordMs, 3), peak_gib: round(rt.memory.peakBytes / 2 ** 30, 3), device: rt.caps.description,
        ...(profile ? { profile } : {}),
      };
    } finally {
      gen.dispose();
    }
  } finally {
    cleanup();
  }
}
