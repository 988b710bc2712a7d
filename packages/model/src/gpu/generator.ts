/**
 * Autoregressive generation on the GPU with a paged-by-slot KV cache, built for continuous
 * batching: each sequence owns a slot of `maxContext` cache rows; `prefill` runs a prompt
 * through the model (tokens attend to each other as in training) and fills its slot;
 * `decode` advances any set of live sequences by one token in a single submit (forward,
 * last-row logits, sampling on the GPU), each attending to its own slot.
 *
 * `validVocab` is the tokenizer's size: checkpoints pad vocab_size past it (Qwen2.5: 151,936
 * logit rows, 151,665 ids), and a padded row is never sampled nor reported in logprobs.
 */
import { type SampledRow, type SamplingParams, type Tensor, logitsRows, packSamplingRows, sampleRows } from "@tuneloom/kernels";
import { allocLayerActivations, releaseTensors } from "./decoder-layer.ts";
import type { LayerLora } from "./lora.ts";
import { type GpuModel, loraRankOf, loraTargetsOf } from "./model.ts";

export interface GeneratorOptions {
  /** Sequences that can be live at once. */
  maxSlots: number;
  /** Cache rows per sequence: prompt + generated tokens. */
  maxContext: number;
  lora?: readonly LayerLora[];
  /**
   * Token ids the tokenizer has (its vocabSize). Logit rows at or above it are padding of the
   * checkpoint's vocab_size: masked to −inf before sampling, top-N and logprobs. Default (or any
   * value ≥ vocab_size): every row is a token.
   */
  validVocab?: number;
}

export interface DecodeItem {
  slot: number;
  /** The token to feed (the last one sampled). */
  token: number;
  /** Its position = tokens already cached in the slot. */
  position: number;
  sampling: SamplingParams;
  /** Uniform draw in [0, 1) for sampling (ignored when greedy). */
  u: number;
}

export class KvCacheGenerator {
  private readonly kCaches: Tensor[] = [];
  private readonly vCaches: Tensor[] = [];
  private readonly freeSlots: number[];
  /** Logit rows that are tokens. */
  readonly validVocab: number;

  constructor(readonly model: GpuModel, readonly opts: GeneratorOptions) {
    const { numLayers, numKvHeads, headDim, vocabSize } = model.cfg;
    const valid = opts.validVocab ?? vocabSize;
    if (!Number.isInteger(valid) || valid < 1) throw new RangeError(`validVocab must be a positive integer (the tokenizer's vocabulary size), got ${valid}`);
    this.validVocab = Math.min(valid, vocabSize);
    const rows = opts.maxSlots * opts.maxContext;
    for (let l = 0; l < numLayers; l++) {
      this.kCaches.push(model.rt.empty("f32", [rows, numKvHeads, headDim], `k_cache.${l}`));
      this.vCaches.push(model.rt.empty("f32", [rows, numKvHeads, headDim], `v_cache.${l}`));
    }
    this.freeSlots = Array.from({ length: opts.maxSlots }, (_, i) => opts.maxSlots - 1 - i);
  }

  get slotsFree(): number {
    return this.freeSlots.length;
  }

  acquireSlot(): number | null {
    return this.freeSlots.pop() ?? null;
  }

  releaseSlot(slot: number) {
    if (!this.freeSlots.includes(slot)) this.freeSlots.push(slot);
  }

  dispose() {
    this.model.rt.release(...this.kCaches, ...this.vCaches);
  }

  private step(
    ids: Int32Array, positions: Int32Array, seqIds: Int32Array, cacheRows: Int32Array,
    logitRows: number[], rows: readonly (SamplingParams & { u: number })[], topN: number,
    decode?: { offsets: Int32Array; lengths: Int32Array },
  ): Promise<SampledRow[]> {
    const { model } = this;
    const rt = model.rt, T = ids.length, B = logitRows.length, V = model.cfg.vocabSize;
    const lora = this.opts.lora;
    const tb = model.uploadTokens(ids, positions, seqIds);
    const rowsT = rt.upload("i32", [T], cacheRows, "cache_rows");
    const dec = decode && {
      offsets: rt.upload("i32", [B], decode.offsets, "offsets"),
      lengths: rt.upload("i32", [B], decode.lengths, "lengths"),
      maxLength: Math.max(...decode.lengths),
    };
    const acts = allocLayerActivations(rt, model.cfg, T, lora ? loraRankOf(lora) : 0, lora ? loraTargetsOf(lora) : []);
    const logits = rt.empty("f32", [B, V], "logits");
    const rowParams = rt.upload("f32", [B, 4], packSamplingRows(rows), "sampling_rows");
    const tokens = rt.empty("i32", [B], "tokens"), logprobs = rt.empty("f32", [B], "logprobs");
    const topIds = topN > 0 ? rt.empty("i32", [B, topN]) : undefined;
    const topLogprobs = topN > 0 ? rt.empty("f32", [B, topN]) : undefined;
    const rec = rt.recorder(decode ? "decode" : "prefill");
    const fwd = model.recordForward(rec, tb, {
      activations: () => acts, lora,
      kv: (l) => ({ kCache: this.kCaches[l]!, vCache: this.vCaches[l]!, cacheRows: rowsT, decode: dec }),
    });
    logitsRows(rec, fwd.h, model.weights.lmHead, logitRows, logits);
    sampleRows(rec, { logits, rowParams, tokens, logprobs, topIds, topLogprobs, validVocab: this.validVocab });
    rec.submit();
    return (async () => {
      const tok = await rt.readI32(tokens), lp = await rt.read(logprobs);
      const ti = topIds ? await rt.readI32(topIds) : null, tl = topLogprobs ? await rt.read(topLogprobs) : null;
      rec.release();
      rt.release(rowsT, logits, rowParams, tokens, logprobs, topIds, topLogprobs, dec?.offsets, dec?.lengths, ...fwd.scratch);
      releaseTensors(rt, acts);
      model.releaseTokens(tb);
      return Array.from(tok, (token, b) => ({
        token, logprob: lp[b]!,
        ...(ti && tl ? { top: Array.from({ length: topN }, (_, j) => ({ token: ti[b * topN + j]!, logprob: tl[b * topN + j]! })) } : {}),
      }));
    })();
  }

  /** Runs the prompt into `slot` and samples the first new token. */
  async prefill(slot: number, promptIds: readonly number[], sampling: SamplingParams, u: number, topN = 0): Promise<SampledRow> {
    const T = promptIds.length;
    if (T === 0) throw new Error("prefill: the prompt is empty");
    if (T >= this.opts.maxContext) throw new Error(`prefill: prompt of ${T} tokens does not fit the context of ${this.opts.maxContext}`);
    const offset = slot * this.opts.maxContext;
    const positions = Int32Array.from({ length: T }, (_, i) => i);
    const [row] = await this.step(Int32Array.from(promptIds), positions, new Int32Array(T), positions.map((p) => offset + p),
      [T - 1], [{ ...sampling, u }], topN);
    return row!;
  }

  /** Advances every item's sequence by one token (one submit for all of them). */
  async decode(items: readonly DecodeItem[], topN = 0): Promise<SampledRow[]> {
    const B = items.length;
    if (B === 0) return [];
    for (const it of items) {
      if (it.position >= this.opts.maxContext) throw new Error(`decode: slot ${it.slot} is full (${this.opts.maxContext} tokens)`);
    }
    const ctx = this.opts.maxContext;
    const ids = Int32Array.from(items, (it) => it.token);
    const positions = Int32Array.from(items, (it) => it.position);
    const offsets = Int32Array.from(items, (it) => it.slot * ctx);
    return this.step(ids, positions, Int32Array.from(items, (_, b) => b), Int32Array.from(items, (it) => it.slot * ctx + it.position),
      items.map((_, b) => b), items.map((it) => ({ ...it.sampling, u: it.u })), topN,
      { offsets, lengths: Int32Array.from(positions, (p) => p + 1) });
  }
}

/** mulberry32: the seeded stream of uniform draws that makes sampling reproducible. */
export function uniformStream(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface GenerateOptions {
  maxTokens: number;
  sampling: SamplingParams;
  seed?: number;
  stopTokenIds?: readonly number[];
  lora?: readonly LayerLora[];
  /** The tokenizer's vocabSize: padded logit rows past it are never generated (GeneratorOptions.validVocab). */
  validVocab?: number;
}

/** One completion for one prompt (ids in, ids out; the stop token is not included). */
export async function generateIds(model: GpuModel, promptIds: readonly number[], o: GenerateOptions): Promise<{ ids: number[]; finishReason: "stop" | "length" }> {
  const gen = new KvCacheGenerator(model, { maxSlots: 1, maxContext: promptIds.length + o.maxTokens + 1, lora: o.lora, validVocab: o.validVocab });
  const u = uniformStream(o.seed ?? 0);
  const stop = new Set(o.stopTokenIds ?? []);
  const out: number[] = [];
  try {
    let row = await gen.prefill(0, promptIds, o.sampling, u());
    for (;;) {
      if (stop.has(row.token)) return { ids: out, finishReason: "stop" };
      out.push(row.token);
      if (out.length >= o.maxTokens) return { ids: out, finishReason: "length" };
      [row] = (await gen.decode([{ slot: 0, token: row.token, position: promptIds.length + out.length - 1, sampling: o.sampling, u: u() }])) as [typeof row];
    }
  } finally {
    gen.dispose();
  }
}
