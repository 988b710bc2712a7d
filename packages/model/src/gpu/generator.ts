/**
 * Autoregressive generation on the GPU with a paged-by-slot KV cache, built for continuous
 * batching: each sequence owns a slot of `maxContext` cache rows; `prefill` runs a prompt
 * through the model (tokens attend to each other as in training) and fills its slot;
 * `decode` advances any set of live sequences by one token in a single submit (forward,
 * last-row logits, sampling on the GPU), each attending to its own slot.
 *
 * `validVocab` is the tokenizer's size: checkpoints pad vocab_size past it (Qwen2.5: 151,936
 * logit rows, 151,665 ids), and a padded row is never sampled nor reported in logprobs.
 *
 * Replay: recording a step's ~20 dispatches per layer costs CPU time comparable to running them
 * (a bind group and a uniform block each), so `decode` records its step once per (batch size,
 * top-N, LoRA set) and re-submits that recording every step. Everything the step reads or writes
 * lives in buffers owned by the recording: the per-step inputs (token ids, positions, cache rows,
 * slot offsets, lengths, sampling rows) are packed into one buffer written with one rt.write();
 * the results (tokens, logprobs, top-N) are packed into one buffer that the recording itself
 * copies into a mappable one, so a step is one write, one submit and one map. WebGPU command
 * buffers are single-use, so each submit encodes the recording again (2.4-5 µs a dispatch through
 * dawn.node on a CPU machine); a plan encodes its next step right after submitting one
 * (Recorder.prepare), while the GPU runs it, and the next decode of that plan submits the prepared
 * buffer. Nothing per-step
 * is a uniform: attention's length hint is the fixed maxContext (with one key split per
 * sequence the kernel loops to each sequence's own length, so the hint costs nothing).
 *
 * Several adapters (serving): with `loraSlots` every row may name its adapter's slot
 * (`loraSlot`, lora-slots.ts), so a batch that mixes adapters and base rows is ONE forward, one
 * submit: the rows' slots are one more per-step input of the recorded step, which is recorded
 * once per (batch size, top-N) for all mixes (and once without LoRA, for all-base batches).
 * Prefill does the same per token: the packed prompts of several adapters are one step.
 *
 * Penalties (repetition/presence/frequency, min_tokens masks: kernels' logit-penalties) change
 * the logits between the LM head and sampling. Their per-row token lists vary in length every
 * step, so a decode step where any row has them is recorded afresh (as with replay: false)
 * rather than replayed; steps without them replay as before.
 */
import {
  type GpuRuntime, type PreparedCommands, type Recorder, type SampledRow, type SamplingParams, Tensor, attentionDecodeScratchSize, logitsRows, packSamplingRows, sampleRows, SAMPLING_ROW_FLOATS,
  applyLogitPenalties, type LogitPenalties, packPenaltyRows, penaltiesActive, checkRowSlots,
} from "@tuneloom/kernels";
import type { ModelConfig } from "../config.ts";
import { LORA_TARGETS } from "../lora-config.ts";
import type { LoraSlots } from "./lora-slots.ts";
import { type LayerActivations, type TokenBatch, allocLayerActivations, releaseTensors } from "./decoder-layer.ts";
import type { LayerLora } from "./lora.ts";
import { type GpuModel, loraRankOf, loraTargetsOf } from "./model.ts";
import { mulberry32 } from "@tuneloom/kernels/host-data.ts";

export interface GeneratorOptions {
  /** Sequences that can be live at once. */
  maxSlots: number;
  /** Cache rows per sequence: prompt + generated tokens. */
  maxContext: number;
  lora?: readonly LayerLora[];
  /**
   * Adapter slots (lora-slots.ts): rows with a `loraSlot` get that slot's adapter, all in one
   * forward. Not together with `lora`.
   */
  loraSlots?: LoraSlots;
  /**
   * Token ids the tokenizer has (its vocabSize). Logit rows at or above it are padding of the
   * checkpoint's vocab_size: masked to −inf before sampling, top-N and logprobs. Default (or any
   * value ≥ vocab_size): every row is a token.
   */
  validVocab?: number;
  /**
   * Record each decode step shape once and re-submit it (default true). false: every decode step
   * is recorded afresh, as prefill is (the reference the replayed path is tested against).
   */
  replay?: boolean;
  /** Recorded decode steps kept, one per (batch size, top-N); the least recently used goes first. Default 8. */
  replayCacheSize?: number;
  /**
   * prefillMany packs at most this many prompt tokens into one step (default 8192); more are
   * split into several steps. A single prompt longer than the cap still runs, alone.
   */
  maxPrefillTokens?: number;
  /**
   * ... and at most this many bytes of per-token activations (layer activations, residual
   * stream) per step; default 1 GiB. The widest activation also stays within the device's
   * maxStorageBufferBindingSize.
   */
  maxPrefillBytes?: number;
}

/** One prompt for prefillMany: run it into `slot` and sample its first new token with draw `u`. */
export interface PrefillItem {
  slot: number;
  promptIds: readonly number[];
  sampling: SamplingParams;
  /** Uniform draw in [0, 1) for sampling (ignored when greedy). */
  u: number;
  /** Most likely alternatives to report (default 0: none, no `top`). */
  topN?: number;
  /** Applied to the logits before sampling (null/absent: none). */
  penalties?: LogitPenalties | null;
  /** The adapter slot of this prompt (GeneratorOptions.loraSlots); −1 or absent: the base. */
  loraSlot?: number;
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
  /** Applied to the logits before sampling (null/absent: none). */
  penalties?: LogitPenalties | null;
  /** The adapter slot of this row (GeneratorOptions.loraSlots); −1 or absent: the base. */
  loraSlot?: number;
}

/**
 * Scratch for split-K decode attention over `span` keys: up to 32 splits of at least 32 keys
 * (attentionDecode takes as many as the scratch holds, and fewer when the batch's kv heads already
 * fill the GPU). The one rule for both the replayed step (span: the slot's whole context) and a
 * step recorded afresh (span: the longest sequence), so a profiled step times the replayed kernels.
 */
function decodeAttentionScratch(rt: GpuRuntime, B: number, cfg: ModelConfig, span: number): Tensor {
  const splits = Math.max(1, Math.min(32, Math.floor(span / 32)));
  return rt.empty("f32", [attentionDecodeScratchSize(B, cfg.numHeads, cfg.headDim, splits)], "attn_decode_scratch");
}

/** Byte offsets of one region each, every one at the device's storage-binding alignment. */
function packRegions(align: number, bytes: readonly number[]): { at: number[]; size: number } {
  const at: number[] = [];
  let size = 0;
  for (const b of bytes) {
    at.push(size);
    size += Math.ceil(Math.max(4, b) / align) * align;
  }
  return { at, size };
}

/**
 * A replayed decode plan encodes its next step's command buffer while the GPU runs the current one
 * (Recorder.prepare; session 16, built after its GPU call: re-encoding and submitting a replayed
 * recording took 2.4-5 µs a dispatch on a CPU machine, a prepared buffer's submit 0.5, and a
 * Llama-3.2-1B decode step is ~130 dispatches against ~2.7 ms a token on an H100). On by default
 * (the same commands either way: decode-replay.test.ts); `TUNELOOM_DECODE_PREENCODE=0` turns it off
 * for A/B measurements. Tests flip `enabled`.
 */
export const decodePreEncoding = { enabled: process.env.TUNELOOM_DECODE_PREENCODE !== "0" };

/**
 * Prefill steps are padded to a few token counts (paddedPrefillTokens), so that a server's prompts of
 * different lengths mostly repeat a step shape seen before and its recording reuses cached bind
 * groups (recording a step afresh costs ~28-55 µs a dispatch on a CPU machine, ~1 µs from the
 * cache). The padding rows (at most 15 up to 256 tokens, under 25% beyond; a 9-token prompt runs as
 * 16) change no real row: every kernel treats rows independently, and attention keeps them in a
 * sequence of their own. On by default;
 * `TUNELOOM_PREFILL_PAD=0` turns it off. Tests flip `enabled`.
 */
export const prefillPadding = { enabled: process.env.TUNELOOM_PREFILL_PAD !== "0" };

/**
 * The token rows a prefill step of T prompt tokens runs with: a power of two up to 16, then the next
 * multiple of 16 up to 256, of 64 up to 1024, and of 256 beyond (so at most 15 padding rows up to
 * 256 tokens, 63 up to 1024, 255 beyond); T itself where that would pass `cap` (the step's token cap).
 */
export function paddedPrefillTokens(T: number, cap: number): number {
  const up = (q: number) => Math.ceil(T / q) * q;
  const padded = T <= 16 ? 2 ** Math.ceil(Math.log2(Math.max(1, T))) : T <= 256 ? up(16) : T <= 1024 ? up(64) : up(256);
  return padded <= cap ? padded : T;
}

/** A decode step recorded once for B rows and top-N, with every buffer it touches. */
interface DecodePlan {
  B: number;
  topN: number;
  lora: readonly LayerLora[] | undefined;
  /** Rows pick adapter slots (opts.loraSlots). */
  gathered: boolean;
  rec: Recorder;
  /** Per-step inputs, one buffer: ids, positions, seqIds, cacheRows, offsets, lengths (i32 (B)), rowParams (f32 (B, SAMPLING_ROW_FLOATS)), LoRA slots (i32 (B)). */
  inputs: Tensor;
  host: { bytes: Uint8Array; ids: Int32Array; positions: Int32Array; cacheRows: Int32Array; offsets: Int32Array; lengths: Int32Array; rowParams: Float32Array; loraSlots: Int32Array };
  /** Results, one buffer: tokens, logprobs, topIds, topLogprobs. */
  outputs: Tensor;
  outAt: number[];
  /** MAP_READ copy of `outputs`, written by the recording's last command. */
  readback: GPUBuffer;
  tb: TokenBatch;
  acts: LayerActivations;
  owned: Tensor[];
  /** The next step's command buffer, encoded while the GPU ran the last one (Recorder.prepare). */
  next: PreparedCommands | null;
}

export class KvCacheGenerator {
  private readonly kCaches: Tensor[] = [];
  private readonly vCaches: Tensor[] = [];
  private readonly freeSlots: number[];
  /** Recorded decode steps, most recently used last. */
  private readonly plans: DecodePlan[] = [];
  /** Replayed steps share their plan's buffers: one runs at a time. */
  private decodeTail: Promise<unknown> = Promise.resolve();
  private disposed = false;
  /**
   * Adapters passed per call (prefill/prefillMany/decode's `lora`): their recordings are kept
   * beside the default's (opts.lora) until forgetLora. Recordings of any other LoRA set are stale.
   */
  private readonly perCallLoras = new Set<readonly LayerLora[]>();
  /** Logit rows that are tokens. */
  readonly validVocab: number;
  /** Prefill steps run and prompts they held (tests, logs): prefillMany packs several prompts per step. */
  readonly prefillStats = { steps: 0, prompts: 0 };
  /** Decode submits (one per decode call: the whole batch, whatever adapters it mixes) and rows they held. */
  readonly decodeStats = { submits: 0, rows: 0 };

  constructor(readonly model: GpuModel, readonly opts: GeneratorOptions) {
    const { numLayers, numKvHeads, headDim, vocabSize } = model.cfg;
    const valid = opts.validVocab ?? vocabSize;
    if (!Number.isInteger(valid) || valid < 1) throw new RangeError(`validVocab must be a positive integer (the tokenizer's vocabulary size), got ${valid}`);
    this.validVocab = Math.min(valid, vocabSize);
    if (opts.lora && opts.loraSlots) throw new Error("KvCacheGenerator: lora (one adapter for every row) and loraSlots (per-row adapters) do not go together");
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

  /** Frees the KV cache and every recorded decode step. */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.dropPlans();
    this.model.rt.release(...this.kCaches, ...this.vCaches);
  }

  /** Recorded decode steps held now (tests). */
  get recordedSteps(): number {
    return this.plans.length;
  }

  private dropPlans(keep: (p: DecodePlan) => boolean = () => false) {
    for (let i = this.plans.length - 1; i >= 0; i--) {
      const p = this.plans[i]!;
      if (keep(p)) continue;
      this.plans.splice(i, 1);
      this.releasePlan(p);
    }
  }

  private releasePlan(p: DecodePlan) {
    const rt = this.model.rt;
    p.rec.release();
    releaseTensors(rt, p.acts);
    rt.release(...p.owned);
    for (const buffer of [p.inputs.buffer, p.outputs.buffer, p.readback]) rt.destroyBuffer(buffer);
  }

  /**
   * Drops every recording that binds `lora` (before its tensors are released): an adapter that
   * was passed per call and is now unloaded.
   */
  forgetLora(lora: readonly LayerLora[]) {
    this.perCallLoras.delete(lora);
    this.dropPlans((p) => p.lora !== lora);
  }

  /** The LoRA set of a call: its own (remembered, see perCallLoras), else the default. */
  private loraOf(lora: readonly LayerLora[] | null | undefined): readonly LayerLora[] | undefined {
    if (lora === undefined) return this.opts.lora;
    if (lora === null) return undefined;
    this.perCallLoras.add(lora);
    return lora;
  }

  /** Layer activations for T rows: LoRA h's sized for the one-adapter set, or for every slot group at the slots' rank. */
  private activations(T: number, lora: readonly LayerLora[] | undefined, gathered: boolean): LayerActivations {
    const rt = this.model.rt, cfg = this.model.cfg;
    if (gathered) return allocLayerActivations(rt, cfg, T, this.opts.loraSlots!.maxRank, LORA_TARGETS);
    return allocLayerActivations(rt, cfg, T, lora ? loraRankOf(lora) : 0, lora ? loraTargetsOf(lora) : []);
  }

  /**
   * The rows' adapter slots (i32, one per row), or null when every row is the base. Throws on a
   * slot out of range, without loraSlots, or beside a one-adapter `lora` set.
   */
  private slotRows(slots: readonly (number | undefined)[], lora: readonly LayerLora[] | undefined, fn: string): Int32Array | null {
    const rows = Int32Array.from(slots, (s) => s ?? -1);
    if (!rows.some((s) => s !== -1)) return null;
    const ls = this.opts.loraSlots;
    if (!ls) throw new Error(`${fn}: rows name LoRA slots but the generator has no loraSlots`);
    checkRowSlots(fn, slots.map((s) => s ?? -1), ls.count);
    if (lora) throw new Error(`${fn}: rows with LoRA slots cannot also run with a one-adapter lora set`);
    if (!ls.allocated) throw new Error(`${fn}: no adapter was written into a LoRA slot yet`);
    return rows;
  }

  /** The recorded decode step for B rows, top-N and LoRA set (recorded now if new). */
  private plan(B: number, topN: number, lora: readonly LayerLora[] | undefined, gathered: boolean): DecodePlan {
    // A LoRA set no longer in use (the default changed) invalidates its recordings (they bind its tensors).
    this.dropPlans((p) => p.lora === undefined || p.lora === this.opts.lora || this.perCallLoras.has(p.lora));
    const i = this.plans.findIndex((p) => p.B === B && p.topN === topN && p.lora === lora && p.gathered === gathered);
    if (i >= 0) {
      const p = this.plans.splice(i, 1)[0]!;
      this.plans.push(p);
      return p;
    }
    const p = this.recordPlan(B, topN, lora, gathered);
    this.plans.push(p);
    const keep = Math.max(1, this.opts.replayCacheSize ?? 8);
    while (this.plans.length > keep) this.releasePlan(this.plans.shift()!);
    return p;
  }

  private recordPlan(B: number, topN: number, lora: readonly LayerLora[] | undefined, gathered: boolean): DecodePlan {
    const { model } = this;
    const rt = model.rt, V = model.cfg.vocabSize;
    const align = Math.max(256, rt.device.limits.minStorageBufferOffsetAlignment); // each region is bound on its own
    const inL = packRegions(align, [4 * B, 4 * B, 4 * B, 4 * B, 4 * B, 4 * B, 4 * SAMPLING_ROW_FLOATS * B, 4 * B]);
    const outL = packRegions(align, [4 * B, 4 * B, 4 * B * topN, 4 * B * topN]);
    const inputsBuf = rt.createBuffer(inL.size, `decode B=${B}:inputs`);
    const outputsBuf = rt.createBuffer(outL.size, `decode B=${B}:outputs`);
    const readback = rt.createBuffer(outL.size, `decode B=${B}:readback`, 0x0001 | 0x0008); // MAP_READ | COPY_DST
    const owned: Tensor[] = [];
    let acts: LayerActivations | null = null;
    let rec: Recorder | null = null;
    try {
      const inputs = new Tensor(inputsBuf, "u32", [inL.size / 4], 0, "decode_inputs");
      const outputs = new Tensor(outputsBuf, "u32", [outL.size / 4], 0, "decode_outputs");
      const i32In = (k: number, label: string) => new Tensor(inputsBuf, "i32", [B], inL.at[k]!, label);
      const bytes = new Uint8Array(inL.size);
      const hostI32 = (k: number) => new Int32Array(bytes.buffer, inL.at[k]!, B);
      const host = {
        bytes, ids: hostI32(0), positions: hostI32(1), cacheRows: hostI32(3), offsets: hostI32(4), lengths: hostI32(5),
        rowParams: new Float32Array(bytes.buffer, inL.at[6]!, SAMPLING_ROW_FLOATS * B), loraSlots: hostI32(7),
      };
      hostI32(2).set(Array.from({ length: B }, (_, b) => b)); // seq ids: row b is sequence b
      const tb: TokenBatch = { T: B, ids: i32In(0, "ids"), positions: i32In(1, "positions"), seqIds: i32In(2, "seq_ids") };
      const cacheRows = i32In(3, "cache_rows");
      // Split over the slot's whole context (empty splits past a sequence's length cost next to nothing).
      const attnScratch = decodeAttentionScratch(rt, B, model.cfg, this.opts.maxContext);
      owned.push(attnScratch);
      const dec = { offsets: i32In(4, "offsets"), lengths: i32In(5, "lengths"), maxLength: this.opts.maxContext, scratch: attnScratch };
      const rowParams = new Tensor(inputsBuf, "f32", [B, SAMPLING_ROW_FLOATS], inL.at[6]!, "sampling_rows");
      const tokens = new Tensor(outputsBuf, "i32", [B], outL.at[0]!, "tokens");
      const logprobs = new Tensor(outputsBuf, "f32", [B], outL.at[1]!, "logprobs");
      const topIds = topN > 0 ? new Tensor(outputsBuf, "i32", [B, topN], outL.at[2]!, "top_ids") : undefined;
      const topLogprobs = topN > 0 ? new Tensor(outputsBuf, "f32", [B, topN], outL.at[3]!, "top_logprobs") : undefined;
      acts = this.activations(B, lora, gathered);
      const logits = rt.empty("f32", [B, V], "logits");
      owned.push(logits);
      rec = rt.recorder(`decode B=${B}${topN ? ` top=${topN}` : ""}${gathered ? " lora-slots" : ""}`);
      const a = acts, slotsT = i32In(7, "lora_slots");
      const fwd = model.recordForward(rec, tb, {
        activations: () => a, lora, gathered: gathered ? (l) => this.opts.loraSlots!.layer(l, slotsT) : undefined,
        kv: (l) => ({ kCache: this.kCaches[l]!, vCache: this.vCaches[l]!, cacheRows, decode: dec }), residualInPlace: true,
      });
      owned.push(...fwd.scratch);
      logitsRows(rec, fwd.h, model.weights.lmHead, Array.from({ length: B }, (_, b) => b), logits);
      sampleRows(rec, { logits, rowParams, tokens, logprobs, topIds, topLogprobs, validVocab: this.validVocab });
      rec.copy(outputs, new Tensor(readback, "u32", [outL.size / 4], 0, "decode_readback"));
      return { B, topN, lora, gathered, rec, inputs, host, outputs, outAt: outL.at, readback, tb, acts, owned, next: null };
    } catch (err) {
      rec?.release();
      if (acts) releaseTensors(rt, acts);
      rt.release(...owned);
      for (const buffer of [inputsBuf, outputsBuf, readback]) rt.destroyBuffer(buffer);
      throw err;
    }
  }

  /**
   * One replayed decode step: write the inputs, re-submit the recording, map the results once.
   * `rows` are the items (slot, token, position) and their packed sampling rows.
   */
  private async replayStep(
    rows: readonly { slot: number; token: number; position: number }[], rowParams: Float32Array, topN: number, lora: readonly LayerLora[] | undefined,
    loraSlots: Int32Array | null,
  ): Promise<SampledRow[]> {
    if (this.disposed) throw new Error("decode: the generator was disposed");
    const B = rows.length, ctx = this.opts.maxContext;
    const p = this.plan(B, topN, lora, loraSlots !== null);
    const h = p.host;
    rows.forEach((it, b) => {
      h.ids[b] = it.token;
      h.positions[b] = it.position;
      h.cacheRows[b] = it.slot * ctx + it.position;
      h.offsets[b] = it.slot * ctx;
      h.lengths[b] = it.position + 1;
    });
    h.rowParams.set(rowParams);
    if (loraSlots) h.loraSlots.set(loraSlots);
    const rt = this.model.rt;
    let bytes: ArrayBuffer;
    try {
      rt.write(p.inputs, h.bytes); // ordered before the submit below, after the last step's commands
      p.rec.submit(p.next);
      p.next = null;
      this.decodeStats.submits++;
      this.decodeStats.rows += B;
      // The next step's command buffer, encoded now while the GPU runs this one: the same recording,
      // whose per-step inputs live in buffers, so the CPU's encoding leaves the critical path.
      if (decodePreEncoding.enabled) p.next = p.rec.prepare();
      bytes = await rt.mapRead(p.readback, p.outputs.byteLength, p.rec.label);
    } catch (err) {
      p.next = null;
      this.dropPlans((q) => q !== p); // record it afresh next time
      throw err;
    }
    const tok = new Int32Array(bytes, p.outAt[0]!, B), lp = new Float32Array(bytes, p.outAt[1]!, B);
    const ti = topN > 0 ? new Int32Array(bytes, p.outAt[2]!, B * topN) : null;
    const tl = topN > 0 ? new Float32Array(bytes, p.outAt[3]!, B * topN) : null;
    return Array.from(tok, (token, b) => ({
      token, logprob: lp[b]!,
      ...(ti && tl ? { top: Array.from({ length: topN }, (_, j) => ({ token: ti[b * topN + j]!, logprob: tl[b * topN + j]! })) } : {}),
    }));
  }

  private step(
    ids: Int32Array, positions: Int32Array, seqIds: Int32Array, cacheRows: Int32Array,
    logitRows: number[], rows: readonly (SamplingParams & { u: number; penalties?: LogitPenalties | null })[], topN: number,
    decode: { offsets: Int32Array; lengths: Int32Array } | undefined, lora: readonly LayerLora[] | undefined,
    loraSlots: Int32Array | null,
  ): Promise<SampledRow[]> {
    const { model } = this;
    const rt = model.rt, T = ids.length, B = logitRows.length, V = model.cfg.vocabSize;
    const tb = model.uploadTokens(ids, positions, seqIds);
    const rowsT = rt.upload("i32", [T], cacheRows, "cache_rows");
    const maxLength = decode ? Math.max(...decode.lengths) : 0;
    const dec = decode && {
      offsets: rt.upload("i32", [B], decode.offsets, "offsets"),
      lengths: rt.upload("i32", [B], decode.lengths, "lengths"),
      maxLength,
      // the replayed step's split-K attention, so a profiled (fresh) step times the same kernels
      scratch: decodeAttentionScratch(rt, B, model.cfg, maxLength),
    };
    const acts = this.activations(T, lora, loraSlots !== null);
    const slotsT = loraSlots ? rt.upload("i32", [T], loraSlots, "lora_slots") : undefined;
    // Prefill: a prompt's rows share a slot, so the LoRA runs as dense products per prompt.
    const segments = loraSlots ? this.opts.loraSlots!.segments(loraSlots) : null;
    const logits = rt.empty("f32", [B, V], "logits");
    const rowParams = rt.upload("f32", [B, SAMPLING_ROW_FLOATS], packSamplingRows(rows), "sampling_rows");
    // Host writes go on the queue at once, ahead of the recording below: a kernel must never hand
    // a buffer back to the pool while its dispatches are only recorded (logitsRows and
    // crossEntropy take their scratch from the recording), or such an upload could take it.
    const penalties = this.uploadPenalties(rows.map((r) => r.penalties));
    const tokens = rt.empty("i32", [B], "tokens"), logprobs = rt.empty("f32", [B], "logprobs");
    const topIds = topN > 0 ? rt.empty("i32", [B, topN]) : undefined;
    const topLogprobs = topN > 0 ? rt.empty("f32", [B, topN]) : undefined;
    // Cached bindings (kernels' bind-cache.ts): a step of a shape seen before (same token count and
    // batch, hence the same pooled buffers) reuses its bind groups and uniform blocks; a SmolLM2
    // prefill of 32 tokens recorded its 364 dispatches in ~1 ms instead of 10-20 (CPU machine).
    const rec = rt.recorder(decode ? "decode" : "prefill", { cacheBindings: true });
    const fwd = model.recordForward(rec, tb, {
      activations: () => acts, lora, gathered: slotsT ? (l) => this.opts.loraSlots!.layer(l, slotsT, segments) : undefined,
      kv: (l) => ({ kCache: this.kCaches[l]!, vCache: this.vCaches[l]!, cacheRows: rowsT, decode: dec }), residualInPlace: true,
    });
    logitsRows(rec, fwd.h, model.weights.lmHead, logitRows, logits);
    // Penalties change the logits the token is drawn from; the logprobs stay those of the model's
    // own (raw) logits, as vLLM reports them by default: a copy taken before the penalties.
    const rawLogits = penalties ? rt.empty("f32", logits.shape, "raw_logits") : undefined;
    if (penalties) {
      rec.copy(logits, rawLogits!);
      applyLogitPenalties(rec, { logits, ...penalties, validVocab: this.validVocab });
    }
    sampleRows(rec, { logits, rawLogits, rowParams, tokens, logprobs, topIds, topLogprobs, validVocab: this.validVocab });
    rec.submit();
    if (decode) {
      this.decodeStats.submits++;
      this.decodeStats.rows += B;
    }
    return (async () => {
      const read = await rt.readMany([tokens, logprobs, ...(topIds && topLogprobs ? [topIds, topLogprobs] : [])]);
      const tok = new Int32Array(read[0]!), lp = new Float32Array(read[1]!);
      const ti = read[2] ? new Int32Array(read[2]) : null, tl = read[3] ? new Float32Array(read[3]) : null;
      rec.release();
      rt.release(rowsT, slotsT, logits, rawLogits, rowParams, tokens, logprobs, topIds, topLogprobs, dec?.offsets, dec?.lengths, dec?.scratch, ...fwd.scratch, penalties?.params, penalties?.offsets, penalties?.entries);
      releaseTensors(rt, acts);
      model.releaseTokens(tb);
      return Array.from(tok, (token, b) => ({
        token, logprob: lp[b]!,
        ...(ti && tl ? { top: Array.from({ length: topN }, (_, j) => ({ token: ti[b * topN + j]!, logprob: tl[b * topN + j]! })) } : {}),
      }));
    })();
  }

  /** The rows' penalties on the GPU when any row has some (for applyLogitPenalties); null when none has. */
  private uploadPenalties(rows: readonly (LogitPenalties | null | undefined)[]): { params: Tensor; offsets: Tensor; entries: Tensor } | null {
    if (!rows.some((p) => penaltiesActive(p))) return null;
    const rt = this.model.rt, B = rows.length;
    const packed = packPenaltyRows(rows);
    return {
      params: rt.upload("f32", [B, 4], packed.params, "penalty_params"),
      offsets: rt.upload("u32", [B + 1], packed.offsets, "penalty_offsets"),
      entries: rt.upload("u32", [packed.entries.length / 2, 2], packed.entries, "penalty_entries"),
    };
  }

  /** Runs the prompt into `slot` and samples the first new token. */
  async prefill(
    slot: number, promptIds: readonly number[], sampling: SamplingParams, u: number, topN = 0, penalties: LogitPenalties | null = null,
    lora?: readonly LayerLora[] | null,
  ): Promise<SampledRow> {
    const item = { slot, promptIds, sampling, u, topN, penalties };
    this.checkPrefill(item);
    const [row] = await this.prefillPacked([item], this.loraOf(lora));
    return row!;
  }

  /**
   * Several prompts at once, each into its own slot: the prompts are packed into ONE step (tokens
   * concatenated, positions from 0 and a sequence id of its own per prompt, so each attends only
   * to itself, and one logit row each: its last token), one submit and one readback for all.
   * Returns one row per item, in order, as `prefill` of each item alone would (same tokens;
   * logprobs equal up to float rounding: the kernels tile a longer batch differently). Beyond
   * `prefillTokenCap` tokens the items are split, in order, into several steps. `lora`: the
   * adapter every item runs with (undefined: opts.lora; null: none, the base model).
   */
  async prefillMany(items: readonly PrefillItem[], lora?: readonly LayerLora[] | null): Promise<SampledRow[]> {
    const set = this.loraOf(lora);
    if (items.length === 0) return [];
    const slots = new Set<number>();
    for (const it of items) {
      this.checkPrefill(it);
      if (slots.has(it.slot)) throw new Error(`prefillMany: slot ${it.slot} appears twice`);
      slots.add(it.slot);
    }
    const cap = this.prefillTokenCapFor(set);
    const out: SampledRow[] = [];
    for (let i = 0; i < items.length;) {
      // Greedy, in order: add prompts while the step stays within the cap (at least one each).
      let j = i + 1, T = items[i]!.promptIds.length;
      while (j < items.length && T + items[j]!.promptIds.length <= cap) T += items[j++]!.promptIds.length;
      out.push(...(await this.prefillPacked(items.slice(i, j), set)));
      i = j;
    }
    return out;
  }

  /** Prompt tokens packed into one prefillMany step at most (see maxPrefillTokens, maxPrefillBytes). */
  get prefillTokenCap(): number {
    return this.prefillTokenCapFor(this.opts.lora);
  }

  private prefillTokenCapFor(lora: readonly LayerLora[] | undefined): number {
    const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd } = this.model.cfg;
    const loraCols = Math.max(lora ? loraRankOf(lora) * loraTargetsOf(lora).length : 0, this.opts.loraSlots ? this.opts.loraSlots.maxRank * LORA_TARGETS.length : 0);
    // allocLayerActivations (shared by the layers) + recordForward's x (the residual stream, in place), h_final,
    // rstd_final + ids, positions, seq ids, cache rows.
    const perToken = 4 * (3 * C + 2 * nH * hd + 2 * nKV * hd + nH + 2 + 3 * I + loraCols + 2 * C + 1 + 4);
    const widest = 4 * Math.max(C, I, nH * hd);
    const bind = this.model.rt.caps.limits.maxStorageBufferBindingSize;
    const byTokens = this.opts.maxPrefillTokens ?? 8192;
    const byBytes = Math.floor((this.opts.maxPrefillBytes ?? 2 ** 30) / perToken);
    return Math.max(1, Math.min(byTokens, byBytes, Math.floor(bind / widest)));
  }

  private checkPrefill(it: PrefillItem) {
    const T = it.promptIds.length;
    if (T === 0) throw new Error("prefill: the prompt is empty");
    if (T >= this.opts.maxContext) throw new Error(`prefill: prompt of ${T} tokens does not fit the context of ${this.opts.maxContext}`);
    if (!Number.isInteger(it.slot) || it.slot < 0 || it.slot >= this.opts.maxSlots) throw new RangeError(`prefill: slot ${it.slot} is not one of 0..${this.opts.maxSlots - 1}`);
  }

  /** One step over the items' prompts, packed (checked by the caller). */
  private async prefillPacked(items: readonly PrefillItem[], lora: readonly LayerLora[] | undefined): Promise<SampledRow[]> {
    const ctx = this.opts.maxContext;
    const real = items.reduce((n, it) => n + it.promptIds.length, 0);
    // Padding rows (prefillPadding): token 0 at position 0 in a sequence of their own (seq id
    // items.length: they attend only to each other), cache row −1 (never written), no logit row.
    const T = prefillPadding.enabled ? paddedPrefillTokens(real, this.prefillTokenCapFor(lora)) : real;
    const ids = new Int32Array(T), positions = new Int32Array(T), seqIds = new Int32Array(T).fill(items.length), cacheRows = new Int32Array(T).fill(-1);
    const slotOf = items.flatMap((it) => it.promptIds.map(() => it.loraSlot));
    const loraSlots = this.slotRows([...slotOf, ...new Array<undefined>(T - real).fill(undefined)], lora, "prefill");
    const logitRows: number[] = [];
    let t = 0;
    items.forEach((it, b) => {
      const offset = it.slot * ctx;
      it.promptIds.forEach((id, p) => {
        ids[t] = id;
        positions[t] = p;
        seqIds[t] = b;
        cacheRows[t] = offset + p;
        t++;
      });
      logitRows.push(t - 1);
    });
    const topN = Math.max(0, ...items.map((it) => it.topN ?? 0));
    const rows = await this.step(ids, positions, seqIds, cacheRows, logitRows, items.map((it) => ({ ...it.sampling, u: it.u, penalties: it.penalties })), topN, undefined, lora, loraSlots);
    this.prefillStats.steps++;
    this.prefillStats.prompts += items.length;
    // Each row reports its own top-N: the first of the step's (sorted, most likely first).
    return rows.map((row, b) => {
      const n = items[b]!.topN ?? 0;
      const { top, ...rest } = row;
      return n > 0 && top ? { ...rest, top: top.slice(0, n) } : rest;
    });
  }

  /**
   * Advances every item's sequence by one token (one submit for all of them), all with the
   * adapter `lora` (undefined: opts.lora; null: none, the base model).
   */
  async decode(items: readonly DecodeItem[], topN = 0, lora?: readonly LayerLora[] | null): Promise<SampledRow[]> {
    const B = items.length;
    if (B === 0) return [];
    for (const it of items) {
      if (it.position >= this.opts.maxContext) throw new Error(`decode: slot ${it.slot} is full (${this.opts.maxContext} tokens)`);
    }
    if ((this.opts.replay ?? true) && !items.some((it) => penaltiesActive(it.penalties))) {
      // The items are read now; the step runs once the previous one is done (a plan's buffers,
      // and its readback's map, serve one step at a time).
      const rowParams = packSamplingRows(items.map((it) => ({ ...it.sampling, u: it.u })));
      const rows = items.map(({ slot, token, position }) => ({ slot, token, position }));
      const set = this.loraOf(lora);
      const loraSlots = this.slotRows(items.map((it) => it.loraSlot), set, "decode");
      const run = this.decodeTail.then(() => this.replayStep(rows, rowParams, topN, set, loraSlots));
      this.decodeTail = run.catch(() => {});
      return run;
    }
    const ctx = this.opts.maxContext, set = this.loraOf(lora);
    const ids = Int32Array.from(items, (it) => it.token);
    const positions = Int32Array.from(items, (it) => it.position);
    const offsets = Int32Array.from(items, (it) => it.slot * ctx);
    return this.step(ids, positions, Int32Array.from(items, (_, b) => b), Int32Array.from(items, (it) => it.slot * ctx + it.position),
      items.map((_, b) => b), items.map((it) => ({ ...it.sampling, u: it.u, penalties: it.penalties })), topN,
      { offsets, lengths: Int32Array.from(positions, (p) => p + 1) }, set, this.slotRows(items.map((it) => it.loraSlot), set, "decode"));
  }
}

/** The seeded stream of uniform draws that makes sampling reproducible (mulberry32). */
export function uniformStream(seed: number): () => number {
  return mulberry32(seed);
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
