/**
 * Next-token selection: greedy argmax, or temperature → top-k → top-p (HF's logits-processor
 * order) and one draw per row with a CPU-supplied uniform number, plus raw logprobs and top-N
 * logprobs for OpenAI's `logprobs` / `top_logprobs`. All on the GPU (sampling.wgsl explains
 * the threshold search that replaces sorting), so only B token ids (and a few floats) come
 * back per step. The CPU reference below implements the same semantics in float64: tests use
 * it, and the model package can use it where logits already live on the CPU.
 *
 * Padded vocabulary: checkpoints often have more logit rows (config vocab_size) than the
 * tokenizer has ids; `validVocab` tells the kernel where the tokens end, and the columns past it
 * are treated as −inf (never chosen, never in top-N, logprobs normalised without them). The CPU
 * references get the same by being handed `logits.subarray(0, validVocab)`.
 *
 * Reproducibility: the CPU seeds the RNG and draws u per row; the GPU maps u to a token by
 * inverse CDF in index order, so the same (logits, params, u) give the same token (up to u
 * falling within float rounding of a CDF step, where f32 and float64 may differ).
 */
import { Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, Tensor } from "./tensor.ts";
import samplingWgsl from "./sampling.wgsl" with { type: "text" };

const source: KernelSource = { name: "sampling", code: samplingWgsl };
const HAS_ROW_PARAMS = 1, HAS_LOGPROB = 2, HAS_PROBS = 4, HAS_RAW = 8;
const MAX_ROWS = 65535;
/** f32 per row of rowParams: temperature, topK, topP, u, minP, then padding. */
export const SAMPLING_ROW_FLOATS = 8;

export interface SamplingParams {
  /** ≤ 0: greedy (argmax). */
  temperature: number;
  /** 0 (default) or ≥ V: no top-k. */
  topK?: number;
  /** 1 (default): no top-p; must be in (0, 1]. */
  topP?: number;
  /** 0 (default): no min-p; else keep tokens whose probability after temperature is ≥ minP × the largest, in [0, 1]. */
  minP?: number;
}

/** Packs per-row sampling parameters and uniform draws into the (B, SAMPLING_ROW_FLOATS) f32 rowParams layout. */
export function packSamplingRows(rows: readonly (SamplingParams & { u: number })[]): Float32Array {
  const out = new Float32Array(rows.length * SAMPLING_ROW_FLOATS);
  rows.forEach((r, i) => {
    const topK = r.topK ?? 0, topP = r.topP ?? 1, minP = r.minP ?? 0;
    if (!Number.isFinite(r.temperature)) throw new Error(`sampling row ${i}: temperature must be finite, got ${r.temperature}`);
    if (!Number.isInteger(topK) || topK < 0 || topK > 2 ** 24) throw new Error(`sampling row ${i}: topK must be an integer in [0, 2^24], got ${topK}`);
    if (!(topP > 0 && topP <= 1)) throw new Error(`sampling row ${i}: topP must be in (0, 1], got ${topP}`);
    if (!(r.u >= 0 && r.u < 1)) throw new Error(`sampling row ${i}: u must be in [0, 1), got ${r.u}`);
    if (!(minP >= 0 && minP <= 1)) throw new Error(`sampling row ${i}: minP must be in [0, 1], got ${minP}`);
    out.set([r.temperature, topK, topP, r.u, minP], i * SAMPLING_ROW_FLOATS);
  });
  return out;
}

export interface SampleArgs {
  /** f32 (B, V). */
  logits: Tensor;
  /** f32 (B, SAMPLING_ROW_FLOATS) from packSamplingRows; absent: greedy for every row. */
  rowParams?: Tensor;
  /** i32 (B) out: the chosen token per row. */
  tokens: Tensor;
  /** f32 (B) out: raw log_softmax(logits)[token]. */
  logprobs?: Tensor;
  /** i32 (B, N) and f32 (B, N) out: the N most likely tokens of the raw distribution. */
  topIds?: Tensor;
  topLogprobs?: Tensor;
  /** f32 (B, V) out: the filtered, renormalised distribution that was sampled from (0 at columns ≥ validVocab). */
  probs?: Tensor;
  /** Columns that are tokens, 1..V (default V): the rest are padding and are masked to −inf. */
  validVocab?: number;
  /**
   * f32 (B, V): the logits before penalties changed `logits` (a copy). With it, the reported
   * logprobs and top-N are of log_softmax(rawLogits) (vLLM's default raw logprobs) while the token
   * is drawn from `logits`.
   */
  rawLogits?: Tensor;
}

/** Records token selection for every row of `logits`. */
export function sampleRows(rec: Recorder, args: SampleArgs) {
  const K = "sampleRows";
  const { logits, tokens } = args;
  expectTensor(K, "logits", logits, "f32");
  if (logits.shape.length !== 2) throw new Error(`${K}: logits must be (B, V), got [${logits.shape}]`);
  const [B, V] = logits.shape as [number, number];
  if (B > MAX_ROWS) throw new Error(`${K}: ${B} rows exceed ${MAX_ROWS}; split the batch`);
  expectTensor(K, "tokens", tokens, "i32", [B]);
  if (args.rowParams) expectTensor(K, "rowParams", args.rowParams, "f32", [B, SAMPLING_ROW_FLOATS]);
  if (args.logprobs) expectTensor(K, "logprobs", args.logprobs, "f32", [B]);
  if (!!args.topIds !== !!args.topLogprobs) throw new Error(`${K}: pass topIds and topLogprobs together`);
  const topN = args.topIds ? args.topIds.shape[1] ?? 0 : 0;
  const Vt = args.validVocab ?? V;
  if (!Number.isInteger(Vt) || Vt < 1 || Vt > V) throw new Error(`${K}: validVocab must be an integer in 1..${V} (the logits' columns), got ${Vt}`);
  if (args.topIds) {
    expectTensor(K, "topIds", args.topIds, "i32", [B, topN]);
    expectTensor(K, "topLogprobs", args.topLogprobs!, "f32", [B, topN]);
    if (topN > Vt) throw new Error(`${K}: top-${topN} of ${Vt} tokens`);
  }
  if (args.probs) expectTensor(K, "probs", args.probs, "f32", [B, V]);
  if (args.rawLogits) {
    expectTensor(K, "rawLogits", args.rawLogits, "f32", [B, V]);
    if (args.rawLogits.buffer === logits.buffer) throw new Error(`${K}: rawLogits must be a copy in its own buffer, not a view of logits`);
  }
  if (B === 0 || V === 0) return;
  const rt = rec.rt;
  const flags = (args.rowParams ? HAS_ROW_PARAMS : 0) | (args.logprobs ? HAS_LOGPROB : 0) | (args.probs ? HAS_PROBS : 0) | (args.rawLogits ? HAS_RAW : 0);
  const params = new Params(5).u32(B).u32(V).u32(topN).u32(flags).u32(Vt).buffer;
  rec.dispatch(`sample_rows ${B}x${V}`, rt.pipeline(source, {}, "sample_rows"), params, [
    logits,
    args.rowParams ?? rt.placeholder,
    tokens,
    args.logprobs ?? rt.writablePlaceholder(0),
    args.topIds ?? rt.writablePlaceholder(1),
    args.topLogprobs ?? rt.writablePlaceholder(2),
    args.probs ?? rt.writablePlaceholder(3),
    args.rawLogits ?? rt.placeholder,
  ], [B]);
}

/** Records argmax per row (ties → lowest index, like torch.argmax) and optionally its raw logprob. */
export function argmaxRows(rec: Recorder, logits: Tensor, tokens: Tensor, logprobs?: Tensor) {
  sampleRows(rec, { logits, tokens, logprobs });
}

export interface SampledRow {
  token: number;
  logprob: number;
  top?: { token: number; logprob: number }[];
}

/**
 * One step's selection for all rows: uploads the row params, dispatches, reads back. For the
 * generation loop; batch the dispatch into a larger Recorder with sampleRows when latency matters.
 */
export async function sampleLogits(
  rt: GpuRuntime, logits: Tensor, rows: readonly (SamplingParams & { u: number })[], topN = 0, validVocab?: number,
): Promise<SampledRow[]> {
  const B = logits.shape[0]!;
  if (rows.length !== B) throw new Error(`sampleLogits: ${rows.length} parameter rows for ${B} logit rows`);
  const rowParams = rt.upload("f32", [B, SAMPLING_ROW_FLOATS], packSamplingRows(rows), "sampling:rows");
  const tokens = rt.empty("i32", [B]), logprobs = rt.empty("f32", [B]);
  const topIds = topN > 0 ? rt.empty("i32", [B, topN]) : undefined;
  const topLogprobs = topN > 0 ? rt.empty("f32", [B, topN]) : undefined;
  const rec = rt.recorder("sampleLogits");
  sampleRows(rec, { logits, rowParams, tokens, logprobs, topIds, topLogprobs, validVocab });
  rec.submit();
  const tok = await rt.readI32(tokens), lp = await rt.read(logprobs);
  const ids = topIds ? await rt.readI32(topIds) : null, tlp = topLogprobs ? await rt.read(topLogprobs) : null;
  rec.release();
  rt.release(rowParams, tokens, logprobs, topIds, topLogprobs);
  return Array.from(tok, (token, b) => ({
    token,
    logprob: lp[b]!,
    ...(ids && tlp ? { top: Array.from({ length: topN }, (_, j) => ({ token: ids[b * topN + j]!, logprob: tlp[b * topN + j]! })) } : {}),
  }));
}

// ---------------------------------------------------------------------------- CPU reference

/** argmax with ties → lowest index. */
export function argmaxRef(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/** float64 log_softmax(logits)[i] for all i. */
export function logSoftmaxRef(logits: ArrayLike<number>): Float64Array {
  let mx = -Infinity;
  for (let i = 0; i < logits.length; i++) mx = Math.max(mx, logits[i]!);
  let s = 0;
  for (let i = 0; i < logits.length; i++) s += Math.exp(logits[i]! - mx);
  const lse = mx + Math.log(s);
  return Float64Array.from(logits as ArrayLike<number>, (l) => l - lse);
}

/**
 * The distribution sampled from after temperature → min-p and top-k → top-p (float64), 0 where
 * removed. Greedy (temperature ≤ 0): one-hot at the argmax.
 */
export function filteredProbsRef(logits: ArrayLike<number>, opts: SamplingParams): Float64Array {
  const V = logits.length;
  const out = new Float64Array(V);
  if (opts.temperature <= 0) {
    out[argmaxRef(logits)] = 1;
    return out;
  }
  const topK = opts.topK ?? 0, topP = opts.topP ?? 1;
  const sorted = Array.from(logits as ArrayLike<number>).sort((a, b) => b - a);
  const mx = sorted[0]!;
  // top-k: keep l ≥ the k-th largest (ties with it kept, as HF's `scores < kth` mask)
  const minP = opts.minP ?? 0;
  // min-p: p/p_max = exp((l − max)/T) ≥ minP  ⇔  l ≥ max + T·ln(minP); a threshold like top-k's
  const thMinP = minP > 0 ? mx + opts.temperature * Math.log(minP) : -Infinity;
  const thK = Math.max(topK > 0 && topK < V ? sorted[topK - 1]! : -Infinity, thMinP);
  const e = (l: number) => Math.exp((l - mx) / opts.temperature);
  let th = thK;
  if (topP < 1) {
    // keep a token iff the kept mass strictly above it is < p · Z_k
    let zk = 0;
    for (const l of sorted) if (l >= thK) zk += e(l);
    let above = 0;
    th = mx;
    for (let j = 0; j < sorted.length && sorted[j]! >= thK; ) {
      const l = sorted[j]!;
      if (above >= topP * zk) break;
      th = l;
      let group = 0;
      while (j < sorted.length && sorted[j] === l) group += e(sorted[j++]!);
      above += group;
    }
  }
  let z = 0;
  for (let i = 0; i < V; i++) if (logits[i]! >= th) z += out[i] = e(logits[i]!);
  for (let i = 0; i < V; i++) out[i]! /= z;
  return out;
}

/** The token for uniform u: first index (index order) whose running filtered mass exceeds u. */
export function sampleRef(logits: ArrayLike<number>, opts: SamplingParams, u: number): { token: number; logprob: number } {
  const probs = filteredProbsRef(logits, opts);
  let acc = 0, token = -1, last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i]! <= 0) continue;
    last = i;
    acc += probs[i]!;
    if (acc > u) {
      token = i;
      break;
    }
  }
  if (token < 0) token = last;
  return { token, logprob: logSoftmaxRef(logits)[token]! };
}

/** The n most likely tokens of the raw distribution, ties → lower index. */
export function topLogprobsRef(logits: ArrayLike<number>, n: number): { token: number; logprob: number }[] {
  const lp = logSoftmaxRef(logits);
  const idx = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  return idx.slice(0, n).map((token) => ({ token, logprob: lp[token]! }));
}
