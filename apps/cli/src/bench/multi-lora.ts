/**
 * `bun run bench -- --decode-loras 1,4,16 --model NAME [--batch 16] [--tokens 128] [--rank 16] [--weight-dtype ...]`:
 * decode throughput of ONE batch of B sequences spread over k distinct adapters (sequence b on
 * adapter b mod k, so each adapter serves B/k of them), for each k given, against the same B
 * sequences on one adapter (k = 1). Adapters are random, in memory, rank r on all 7 projections
 * (no downloads), held in adapter slots (LoraSlots, what `serve --lora-modules` uses) so every
 * step is one forward over the mixed batch (kernels' bgmv). For comparison, two more lines:
 *   path "base"          the same batch without LoRA
 *   path "per-adapter"   k > 1 the way the server ran before slots: one forward (submit) per
 *                        adapter present, each adapter's rows with its own uploaded modules
 * Each line: tok_s (B·N / decode wall time), ms_per_token (one step), and for the slot path
 * vs_one_adapter = tok_s / tok_s at k = 1 (the target is ≥ 0.8 at k = 16). The base and slots
 * lines also time prefill: B prompts of `promptTokens` tokens in one prefillMany step (what a
 * round of newcomers costs), prefill_tok_s = B·promptTokens / its wall time (best of 2), and for
 * slots prefill_vs_base against the no-LoRA prefill.
 * A warm-up (prefill, 2 steps) precedes each measurement, so pipelines are compiled.
 */
import { GpuModel, KvCacheGenerator, LORA_TARGETS, type LayerLora, LoraSlots, randomLoadedAdapter, resolveLoraSlotDtype, releaseAdapter, uploadAdapter } from "@tuneloom/model";
import { DECODE_PROMPT_TOKENS } from "./decode.ts";
import { benchModelDir } from "./model-shapes.ts";

export interface MultiLoraBenchOptions {
  model: string;
  /** Distinct adapter counts, each one line (k = 1 is always measured: the reference). */
  adapters: number[];
  /** Sequences in the batch; default 16. */
  batch: number;
  /** Decode steps measured (the CLI default: 128). */
  tokens: number;
  /** Rank of every adapter; default 16. */
  rank: number;
  /** Tokens of each prompt in the prefill measurement (decode runs after 32-token prompts). */
  promptTokens: number;
  weightDtype?: "f32" | "f16" | "bf16";
  /** Slot storage, as serve's --lora-dtype (default auto: f16 with f16 weights). */
  loraDtype?: string;
}

const GREEDY = { temperature: 0 };
const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Parses `--decode-loras 1,4,16`: positive integers, each dividing the batch. */
export function parseAdapterCounts(text: string, batch: number): number[] {
  const ks = text.split(",").map((s) => Number(s.trim()));
  for (const k of ks) {
    if (!Number.isInteger(k) || k < 1) throw new Error(`--decode-loras takes positive integers (adapter counts), got ${JSON.stringify(text)}`);
    if (k > batch || batch % k !== 0) throw new Error(`--decode-loras ${k}: each adapter count must divide --batch ${batch} (every adapter serves the same number of sequences)`);
  }
  return [...new Set([1, ...ks])].sort((a, b) => a - b);
}

export async function benchMultiLora(o: MultiLoraBenchOptions, emit: (line: Record<string, unknown>) => void) {
  const B = o.batch, N = o.tokens, P = DECODE_PROMPT_TOKENS;
  if (!Number.isInteger(N) || N < 1) throw new Error(`--tokens must be a positive integer, got ${N}`);
  if (!Number.isInteger(o.rank) || o.rank < 1) throw new Error(`--rank must be a positive integer, got ${o.rank}`);
  const PP = o.promptTokens;
  if (!Number.isInteger(PP) || PP < 1) throw new Error(`--prompt-tokens must be a positive integer, got ${PP}`);
  const K = Math.max(...o.adapters);
  resolveLoraSlotDtype(o.loraDtype, "f32"); // a bad --lora-dtype is refused before the model is written
  const { dir, cleanup } = benchModelDir(o.model, "tuneloom-bench-multi-lora-");
  try {
    const model = await GpuModel.load(dir, { weightDtype: o.weightDtype });
    const rt = model.rt, V = model.cfg.vocabSize;
    const adapters = Array.from({ length: K }, (_, i) =>
      randomLoadedAdapter(model.cfg, { rank: o.rank, targets: LORA_TARGETS, seed: 1000 + i, amp: 0.02, name: `bench-${i}` }));
    const loraDtype = resolveLoraSlotDtype(o.loraDtype, model.weights.dtype);
    const slots = new LoraSlots(rt, model.cfg, { slots: K, maxRank: o.rank, dtype: loraDtype });
    adapters.forEach((a, i) => {
      slots.acquire(a.dir);
      slots.write(i, a);
    });
    // The per-adapter lines keep one recorded step per adapter (as the server did before slots).
    const gen = new KvCacheGenerator(model, { maxSlots: B, maxContext: Math.max(P + N, PP) + 4, loraSlots: slots, replayCacheSize: 8 + 2 * K });
    let s = 12345;
    const randomPrompt = (n: number) => Array.from({ length: n }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s % V));
    const prompts = Array.from({ length: B }, () => randomPrompt(P));
    const longPrompts = Array.from({ length: B }, () => randomPrompt(PP));
    const common = { op: "multi_lora_decode", model: o.model, batch: B, tokens: N, rank: o.rank, prompt_tokens: PP, weights: model.weights.dtype, lora_dtype: loraDtype, device: rt.caps.description };
    /**
     * Prefills every sequence (sequence b with adapter slot adapterOf(b), −1: none), then decodes
     * `steps` steps with `step`; returns the decode wall time in ms.
     */
    const run = async (adapterOf: (b: number) => number, steps: number, step: (items: Parameters<KvCacheGenerator["decode"]>[0]) => Promise<{ token: number }[]>) => {
      const first = await gen.prefillMany(prompts.map((ids, b) => ({ slot: b, promptIds: ids, sampling: GREEDY, u: 0, loraSlot: adapterOf(b) })));
      let last = first.map((r) => r.token);
      const t0 = performance.now();
      for (let i = 0; i < steps; i++) {
        const rows = await step(last.map((token, b) => ({ slot: b, token, position: P + i, sampling: GREEDY, u: 0, loraSlot: adapterOf(b) })));
        last = rows.map((r) => r.token);
      }
      return performance.now() - t0;
    };
    const measure = async (adapterOf: (b: number) => number, step: Parameters<typeof run>[2]) => {
      await run(adapterOf, 2, step); // warm-up: compiles what this path records
      const ms = await run(adapterOf, N, step);
      return { tok_s: round((B * N) / (ms / 1000), 1), ms_per_token: round(ms / N, 3) };
    };
    /** One prefillMany step of the B long prompts (sequence b on slot adapterOf(b)): best of 2, after a warm-up. */
    const prefill = async (adapterOf: (b: number) => number) => {
      let best = Infinity;
      for (let rep = 0; rep < 3; rep++) {
        const t0 = performance.now();
        await gen.prefillMany(longPrompts.map((ids, b) => ({ slot: b, promptIds: ids, sampling: GREEDY, u: 0, loraSlot: adapterOf(b) })));
        if (rep > 0) best = Math.min(best, performance.now() - t0);
      }
      return round((B * PP) / (best / 1000), 1);
    };
    const oneForward = (items: Parameters<KvCacheGenerator["decode"]>[0]) => gen.decode(items);
    try {
      const basePrefill = await prefill(() => -1);
      emit({ ...common, path: "base", adapters: 0, ...(await measure(() => -1, oneForward)), prefill_tok_s: basePrefill });
      let one = 0;
      for (const k of o.adapters) {
        const r = await measure((b) => b % k, oneForward);
        if (k === 1) one = r.tok_s;
        const prefillTokS = await prefill((b) => b % k);
        emit({ ...common, path: "slots", adapters: k, ...r, vs_one_adapter: round(r.tok_s / one, 3),
          prefill_tok_s: prefillTokS, prefill_vs_base: round(prefillTokS / basePrefill, 3), slots_gib: round(slots.bytes / 2 ** 30, 3), peak_gib: round(rt.memory.peakBytes / 2 ** 30, 3) });
      }
      // Before slots: one forward per adapter present, each group with its own uploaded modules.
      for (const k of o.adapters.filter((k) => k > 1)) {
        const loras: LayerLora[][] = adapters.slice(0, k).map((a) => uploadAdapter(model, a));
        try {
          const perAdapter = async (items: Parameters<KvCacheGenerator["decode"]>[0]) => {
            const out = new Array<{ token: number }>(items.length);
            for (let j = 0; j < k; j++) {
              const idx = items.flatMap((_, b) => (b % k === j ? [b] : []));
              const rows = await gen.decode(idx.map((b) => ({ ...items[b]!, loraSlot: -1 })), 0, loras[j]);
              idx.forEach((b, n) => (out[b] = rows[n]!));
            }
            return out;
          };
          emit({ ...common, path: "per-adapter", adapters: k, ...(await measure((b) => b % k, perAdapter)) });
        } finally {
          for (const l of loras) {
            gen.forgetLora(l);
            releaseAdapter(model, l);
          }
        }
      }
    } finally {
      gen.dispose();
      slots.dispose();
    }
  } finally {
    cleanup();
  }
}
