/**
 * Causal self-attention with grouped-query heads over a packed batch (flash-attention style:
 * memory O(T·nH), never O(T²)), its backward, and the inference decode path over a KV cache.
 * Shapes and masking rules are in attention.wgsl / attention_decode.wgsl; in short:
 *   q (T, nH, hd)  k, v (T, nKV, hd)  seqId (T) i32  out (T, nH, hd)  lse (T, nH), all f32;
 *   query i sees key j iff seqId[i] ≥ 0, seqId[j] = seqId[i], j ≤ i, and i − j < window (if set).
 */
import { cdiv, Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, Tensor } from "./tensor.ts";
import { attentionBackwardTensorCore, attentionForwardTensorCore, tensorCoreAttentionSupported } from "./attention-tc.ts";
import attentionWgsl from "./attention.wgsl" with { type: "text" };
import decodeWgsl from "./attention_decode.wgsl" with { type: "text" };

const attentionSource: KernelSource = { name: "attention", code: attentionWgsl };
const decodeSource: KernelSource = { name: "attention_decode", code: decodeWgsl };

/** Largest head dim the kernels' register tiles hold (Llama-3 8B, Mistral 7B: 128). */
export const ATTENTION_MAX_HEAD_DIM = 128;

type Pass = "forward" | "backward_dq" | "backward_dkv";

/** Workgroup bytes each pass needs for rows-per-thread RT, cols-per-thread CT (see attention.wgsl). */
function workgroupBytes(pass: Pass, hd: number, RT: number, CT: number): number {
  const LD = hd + 1, BR = 8 * RT, BC = 8 * CT;
  const rowTiles = pass === "forward" ? 1 : 2;
  const colTiles = pass === "backward_dkv" ? 2 : 1;
  return 4 * (rowTiles * BR * LD + colTiles * BC * LD + BR * (BC + 1) + 7 * 32);
}

const TILE_CANDIDATES: [number, number][] = [[4, 4], [4, 2], [2, 4], [2, 2], [2, 1], [1, 2], [1, 1]];

/** The biggest tile (override constants) of `pass` that fits the device's workgroup memory. */
export function attentionTiles(rt: GpuRuntime, pass: Pass, hd: number): { RT: number; CT: number } {
  const limit = rt.caps.limits.maxComputeWorkgroupStorageSize;
  for (const [RT, CT] of TILE_CANDIDATES) if (workgroupBytes(pass, hd, RT, CT) <= limit) return { RT, CT };
  throw new Error(`attention ${pass}: head dim ${hd} does not fit ${limit} bytes of workgroup memory`);
}

function pipelineFor(rt: GpuRuntime, pass: Pass, hd: number) {
  const { RT, CT } = attentionTiles(rt, pass, hd);
  return { pipeline: rt.pipeline(attentionSource, { HD: hd, RT, CT }, pass), BR: 8 * RT };
}

export interface AttentionShape {
  T: number;
  nH: number;
  nKV: number;
  hd: number;
}

/** Reads (T, nH, hd) from q and checks k, v, seqId against it; the error names `kernel`. */
function checkQkv(kernel: string, q: Tensor, k: Tensor, v: Tensor, seqId: Tensor): AttentionShape {
  if (q.shape.length !== 3) throw new Error(`${kernel}: q must be (T, nH, hd), got [${q.shape.join(", ")}]`);
  const [T, nH, hd] = q.shape as [number, number, number];
  expectTensor(kernel, "q", q, "f32");
  if (k.shape.length !== 3) throw new Error(`${kernel}: k must be (T, nKV, hd), got [${k.shape.join(", ")}]`);
  const nKV = k.shape[1]!;
  expectTensor(kernel, "k", k, "f32", [T, nKV, hd]);
  expectTensor(kernel, "v", v, "f32", [T, nKV, hd]);
  expectTensor(kernel, "seqId", seqId, "i32", [T]);
  checkHeads(kernel, nH, nKV, hd);
  return { T, nH, nKV, hd };
}

function checkHeads(kernel: string, nH: number, nKV: number, hd: number) {
  if (nKV === 0 || nH % nKV !== 0) throw new Error(`${kernel}: ${nH} query heads are not a multiple of ${nKV} kv heads`);
  if (hd % 8 !== 0 || hd < 8 || hd > ATTENTION_MAX_HEAD_DIM) {
    throw new Error(`${kernel}: head dim ${hd} unsupported (a multiple of 8, at most ${ATTENTION_MAX_HEAD_DIM})`);
  }
}

function checkWindow(kernel: string, window: number) {
  if (!Number.isInteger(window) || window < 0) throw new Error(`${kernel}: window must be a non-negative integer (0 = none), got ${window}`);
}

function attentionParams(s: AttentionShape, scale: number, window: number): ArrayBuffer {
  return new Params(8).u32(s.T).u32(s.nH).u32(s.nKV).u32(s.nH / s.nKV)
    .u32(window).f32(scale).u32(0).u32(0).buffer;
}

export interface AttentionOptions {
  /** Softmax scale; default 1/√hd. */
  scale?: number;
  /** Sliding window W (Mistral's sliding_window): key j visible to query i iff i − j < W. 0/absent: none. */
  window?: number;
}

export interface AttentionForwardArgs extends AttentionOptions {
  q: Tensor; // f32 (T, nH, hd)
  k: Tensor; // f32 (T, nKV, hd)
  v: Tensor; // f32 (T, nKV, hd)
  /** i32 (T): sequence of each token; -1 for padding. Sequences are contiguous and in order. */
  seqId: Tensor;
  out: Tensor; // f32 (T, nH, hd)
  /** f32 (T, nH): log Σ exp(s) per query and head, saved for the backward (0 where a row sees no key). */
  lse: Tensor;
  /**
   * Use the tensor-core kernel (q, k, v, P rounded to f16; attention-tc.ts) where the device
   * and shape allow it. Default true; false keeps every product in f32.
   */
  tensorCores?: boolean;
  /**
   * f16 copies of q, k and v made by the caller (ropeForwardF16), read by the tensor-core kernels
   * instead of converting q, k and v here; the caller owns them. Ignored on the f32 path.
   */
  f16?: AttentionF16Inputs;
}

export interface AttentionF16Inputs {
  q: Tensor; // f16 (T, nH, hd)
  k: Tensor; // f16 (T, nKV, hd)
  v: Tensor; // f16 (T, nKV, hd)
}

/** Whether attentionForward/attentionBackward take the tensor-core path for this shape (args.tensorCores unless false). */
export function attentionOnTensorCores(rec: Recorder, T: number, hd: number, tensorCores = true): boolean {
  return tensorCores && tensorCoreAttentionSupported(rec, T, hd);
}

function checkF16Inputs(kernel: string, f16: AttentionF16Inputs | undefined, s: AttentionShape) {
  if (!f16) return;
  expectTensor(kernel, "f16.q", f16.q, "f16", [s.T, s.nH, s.hd]);
  expectTensor(kernel, "f16.k", f16.k, "f16", [s.T, s.nKV, s.hd]);
  expectTensor(kernel, "f16.v", f16.v, "f16", [s.T, s.nKV, s.hd]);
}

/** Records out = softmax(scale·q·kᵀ + mask)·v and lse, one dispatch. */
export function attentionForward(rec: Recorder, args: AttentionForwardArgs) {
  const s = checkQkv("attentionForward", args.q, args.k, args.v, args.seqId);
  expectTensor("attentionForward", "out", args.out, "f32", [s.T, s.nH, s.hd]);
  expectTensor("attentionForward", "lse", args.lse, "f32", [s.T, s.nH]);
  const window = args.window ?? 0;
  checkWindow("attentionForward", window);
  const rt = rec.rt;
  const params = attentionParams(s, args.scale ?? 1 / Math.sqrt(s.hd), window);
  checkF16Inputs("attentionForward", args.f16, s);
  if (attentionOnTensorCores(rec, s.T, s.hd, args.tensorCores !== false)) {
    return attentionForwardTensorCore(rec, { ...args, ...s, params });
  }
  const { pipeline, BR } = pipelineFor(rt, "forward", s.hd);
  rec.dispatch(`attentionForward T=${s.T} ${s.nH}/${s.nKV}x${s.hd}`, pipeline, params,
    [args.q, args.k, args.v, args.seqId, args.out, args.lse], [cdiv(s.T, BR), s.nH]);
}

export interface AttentionBackwardArgs extends AttentionOptions {
  q: Tensor; // f32 (T, nH, hd)
  k: Tensor; // f32 (T, nKV, hd)
  v: Tensor; // f32 (T, nKV, hd)
  seqId: Tensor; // i32 (T)
  out: Tensor; // f32 (T, nH, hd), the forward's
  lse: Tensor; // f32 (T, nH), the forward's
  dout: Tensor; // f32 (T, nH, hd)
  dq: Tensor; // f32 (T, nH, hd), overwritten
  dk: Tensor; // f32 (T, nKV, hd), overwritten (summed over each group's query heads)
  dv: Tensor; // f32 (T, nKV, hd), overwritten
  /** f32 (T, nH) scratch: D = rowsum(dout ∘ out), written by the dq pass, read by the dk/dv pass. */
  dsum: Tensor;
  /** As in AttentionForwardArgs: tensor cores (f16 operands) where possible unless false. */
  tensorCores?: boolean;
  /** As in AttentionForwardArgs: the caller's f16 copies of q, k and v (the forward's or a recompute's). */
  f16?: AttentionF16Inputs;
}

/**
 * Records the attention backward: pass 1 (per query block) D and dq, pass 2 (per key block)
 * dk and dv over the group's query heads. Gradients are written, not accumulated.
 */
export function attentionBackward(rec: Recorder, args: AttentionBackwardArgs) {
  const K = "attentionBackward";
  const s = checkQkv(K, args.q, args.k, args.v, args.seqId);
  expectTensor(K, "out", args.out, "f32", [s.T, s.nH, s.hd]);
  expectTensor(K, "lse", args.lse, "f32", [s.T, s.nH]);
  expectTensor(K, "dout", args.dout, "f32", [s.T, s.nH, s.hd]);
  expectTensor(K, "dq", args.dq, "f32", [s.T, s.nH, s.hd]);
  expectTensor(K, "dk", args.dk, "f32", [s.T, s.nKV, s.hd]);
  expectTensor(K, "dv", args.dv, "f32", [s.T, s.nKV, s.hd]);
  expectTensor(K, "dsum", args.dsum, "f32", [s.T, s.nH]);
  const window = args.window ?? 0;
  checkWindow(K, window);
  const rt = rec.rt;
  const params = attentionParams(s, args.scale ?? 1 / Math.sqrt(s.hd), window);
  checkF16Inputs(K, args.f16, s);
  if (attentionOnTensorCores(rec, s.T, s.hd, args.tensorCores !== false)) {
    return attentionBackwardTensorCore(rec, { ...args, ...s, params });
  }
  const dqPass = pipelineFor(rt, "backward_dq", s.hd);
  rec.dispatch(`attentionBackward dq T=${s.T} ${s.nH}/${s.nKV}x${s.hd}`, dqPass.pipeline, params,
    [args.q, args.k, args.v, args.seqId, args.out, args.lse, args.dout, args.dq, args.dsum], [cdiv(s.T, dqPass.BR), s.nH]);
  const kvPass = pipelineFor(rt, "backward_dkv", s.hd);
  rec.dispatch(`attentionBackward dkv T=${s.T} ${s.nH}/${s.nKV}x${s.hd}`, kvPass.pipeline, params,
    [args.q, args.k, args.v, args.seqId, args.lse, args.dout, args.dsum, args.dk, args.dv], [cdiv(s.T, kvPass.BR), s.nKV]);
}

// ---------------------------------------------------------------------------- decode path

export interface KvCacheAppendArgs {
  kNew: Tensor; // f32 (n, nKV, hd)
  vNew: Tensor; // f32 (n, nKV, hd)
  /** i32 (n): cache row for each new token (its sequence's slot offset + position); < 0 skips it. */
  positions: Tensor;
  kCache: Tensor; // f32 or f16 (maxT, nKV, hd), one layer's
  vCache: Tensor; // same dtype and shape as kCache
}

/** Records kCache[positions[t]] = kNew[t], vCache[positions[t]] = vNew[t] (f16 caches round to nearest). */
export function kvCacheAppend(rec: Recorder, args: KvCacheAppendArgs) {
  const K = "kvCacheAppend";
  const { kNew, vNew, positions, kCache, vCache } = args;
  if (kCache.shape.length !== 3) throw new Error(`${K}: kCache must be (maxT, nKV, hd), got [${kCache.shape.join(", ")}]`);
  const [maxT, nKV, hd] = kCache.shape as [number, number, number];
  expectTensor(K, "kCache", kCache, ["f32", "f16"]);
  expectTensor(K, "vCache", vCache, kCache.dtype, [maxT, nKV, hd]);
  const n = kNew.shape[0] ?? 0;
  expectTensor(K, "kNew", kNew, "f32", [n, nKV, hd]);
  expectTensor(K, "vNew", vNew, "f32", [n, nKV, hd]);
  expectTensor(K, "positions", positions, "i32", [n]);
  if (hd % 2 !== 0) throw new Error(`${K}: head dim ${hd} must be even`);
  const f16 = kCache.dtype === "f16";
  const threads = (n * nKV * hd) / (f16 ? 2 : 1);
  const groups = cdiv(threads, 256);
  const max = rec.rt.caps.limits.maxComputeWorkgroupsPerDimension;
  const wgx = Math.min(groups, max);
  const params = new Params(12).u32(0).u32(0).u32(nKV).u32(0)
    .u32(0).f32(0).u32(0).u32(0)
    .u32(0).u32(n).u32(maxT).u32(wgx);
  const pipeline = rec.rt.pipeline(decodeSource, { HD: hd, CACHE_F16: f16 ? 1 : 0 }, "cache_append");
  rec.dispatch(`kvCacheAppend n=${n}`, pipeline, params.buffer, [kNew, vNew, positions, kCache, vCache], [wgx, cdiv(groups, wgx)]);
}

export interface AttentionDecodeArgs {
  q: Tensor; // f32 (B, nH, hd): each sequence's newest token
  kCache: Tensor; // f32 or f16 (maxT, nKV, hd)
  vCache: Tensor; // same as kCache
  /** u32/i32 (B): first cache row of each sequence's slot. */
  offsets: Tensor;
  /** u32/i32 (B): cached tokens of each sequence, the new one included (0: output zeros). */
  lengths: Tensor;
  out: Tensor; // f32 (B, nH, hd)
  /** Optional f32 (B, nH): log Σ exp(s). */
  lse?: Tensor;
  scale?: number;
  window?: number;
  /**
   * Split-K (flash-decoding): the keys of each sequence are shared by `splits` workgroups whose
   * partial results go to `scratch` (f32, attentionDecodeScratchSize(B, nH, hd, splits)
   * elements) and are merged by a second dispatch. Without scratch, or with splits = 1, one
   * pass writes `out`. With scratch and no `splits`, as many splits as keep ~1024 workgroups
   * busy, at least decodeSplitKeys.min (32) keys each, and fit the scratch (one workgroup per sequence and kv head
   * is latency-bound: B=1, 8192 keys took 19 ms on an H200 unsplit, 0.5 ms in 32 splits).
   */
  splits?: number;
  /** Longest length in `lengths` (host-side hint that sizes the splits; default maxT). */
  maxLength?: number;
  scratch?: Tensor;
}

/**
 * The fewest keys a decode split takes when attentionDecode picks the split count itself (default
 * 32: one tile). Each split > 1 costs a second (combine) dispatch, and a dispatch costs ~10 µs of
 * wall time here whatever it does (CPU encoding and GPU together: session 16's dispatch-floor bench,
 * H100), so short contexts may do better in one
 * pass: `TUNELOOM_DECODE_SPLIT_KEYS=N` for A/B measurements (the device script's decode-1b). Tests
 * set `min`.
 */
export const decodeSplitKeys = { min: decodeSplitKeysFrom(process.env.TUNELOOM_DECODE_SPLIT_KEYS) };

function decodeSplitKeysFrom(v: string | undefined): number {
  if (v === undefined || v === "") return 32;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`TUNELOOM_DECODE_SPLIT_KEYS must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/** Elements of f32 scratch attentionDecode needs for `splits` > 1. */
export function attentionDecodeScratchSize(B: number, nH: number, hd: number, splits: number): number {
  return B * nH * splits * (hd + 2);
}

/** Query heads a decode workgroup serves: at most 8 of one kv group, and GB·hd ≤ 1024. */
function decodeHeadsPerWorkgroup(group: number, hd: number): number {
  const cap = Math.min(8, Math.floor(1024 / hd));
  return Math.min(cap, group);
}

/**
 * Records one decode step's attention for B sequences (continuous batching: each has its
 * own cache slot and length): out[b] = softmax(scale·q[b]·Kᵀ)·V over cache rows
 * offsets[b] .. offsets[b] + lengths[b] − 1 (the last `window` of them if set).
 */
export function attentionDecode(rec: Recorder, args: AttentionDecodeArgs) {
  const K = "attentionDecode";
  const { q, kCache, vCache, offsets, lengths, out } = args;
  if (q.shape.length !== 3) throw new Error(`${K}: q must be (B, nH, hd), got [${q.shape.join(", ")}]`);
  const [B, nH, hd] = q.shape as [number, number, number];
  expectTensor(K, "q", q, "f32");
  if (kCache.shape.length !== 3) throw new Error(`${K}: kCache must be (maxT, nKV, hd), got [${kCache.shape.join(", ")}]`);
  const [maxT, nKV] = kCache.shape as [number, number];
  expectTensor(K, "kCache", kCache, ["f32", "f16"], [maxT, nKV, hd]);
  expectTensor(K, "vCache", vCache, kCache.dtype, [maxT, nKV, hd]);
  expectTensor(K, "offsets", offsets, ["u32", "i32"], [B]);
  expectTensor(K, "lengths", lengths, ["u32", "i32"], [B]);
  expectTensor(K, "out", out, "f32", [B, nH, hd]);
  if (args.lse) expectTensor(K, "lse", args.lse, "f32", [B, nH]);
  checkHeads(K, nH, nKV, hd);
  const window = args.window ?? 0;
  checkWindow(K, window);
  const group = nH / nKV;
  const GB = decodeHeadsPerWorkgroup(group, hd);
  const nHB = cdiv(group, GB);
  const span = Math.max(1, Math.min(args.maxLength ?? maxT, window || Infinity));
  let splits = 1;
  if (args.scratch) {
    expectTensor(K, "scratch", args.scratch, "f32");
    const fit = Math.floor(args.scratch.numel / attentionDecodeScratchSize(B, nH, hd, 1));
    if (args.splits !== undefined) {
      splits = Math.max(1, Math.floor(args.splits));
      if (splits > 1 && splits > fit) {
        throw new Error(`${K}: scratch has ${args.scratch.numel} elements, ${splits} splits need ${attentionDecodeScratchSize(B, nH, hd, splits)}`);
      }
    } else {
      splits = Math.max(1, Math.min(fit, cdiv(1024, B * nKV * nHB), Math.floor(span / decodeSplitKeys.min)));
    }
  }
  const splitLen = Math.max(1, cdiv(span, splits));
  splits = cdiv(span, splitLen);
  const rt = rec.rt;
  const f16 = kCache.dtype === "f16";
  const params = new Params(12).u32(B).u32(nH).u32(nKV).u32(group)
    .u32(window).f32(args.scale ?? 1 / Math.sqrt(hd)).u32(splits).u32(splitLen)
    .u32(nHB).u32(0).u32(maxT).u32(0).buffer;
  const pipeline = rt.pipeline(decodeSource, { HD: hd, GB, CACHE_F16: f16 ? 1 : 0 }, "decode");
  const label = `attentionDecode B=${B} ${nH}/${nKV}x${hd}`;
  if (splits === 1) {
    rec.dispatch(label, pipeline, params, [q, kCache, vCache, offsets, lengths, out, args.lse ?? rt.writablePlaceholder(0), rt.writablePlaceholder(1)], [1, B, nKV * nHB]);
    return;
  }
  rec.dispatch(`${label} split=${splits}`, pipeline, params,
    [q, kCache, vCache, offsets, lengths, rt.writablePlaceholder(0), rt.writablePlaceholder(1), args.scratch!], [splits, B, nKV * nHB]);
  const combine = rt.pipeline(decodeSource, { HD: hd }, "decode_combine");
  rec.dispatch(`${label} combine`, combine, params, [args.scratch!, out, args.lse ?? rt.writablePlaceholder(0)], [B, nH]);
}
