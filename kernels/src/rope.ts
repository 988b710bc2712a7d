/**
 * Rotary position embedding for the Llama family (transformers' rotate_half convention:
 * pairs (i, i + hd/2)). q (T, nQ, hd) and k (T, nK, hd) f32 are rotated in one dispatch,
 * positions (T) i32 give each token's position (packed sequences restart at 0), invFreq
 * (hd/2) f32 comes from `ropeInvFreq(config)` uploaded once. Backward is the rotation by −θ.
 */
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import f16BitsWgsl from "./f16-bits.wgsl" with { type: "text" };
import ropeWgsl from "./rope.wgsl" with { type: "text" };

const source: KernelSource = { name: "rope", code: `${ropeWgsl}\n${f16BitsWgsl}` };

/** RoPE scaling as transformers' `rope_scaling` (v4) / `rope_parameters` (v5) describe it. */
export type RopeScalingConfig =
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
  | { type: "linear"; factor: number };

/** The RoPE fields of a model config (the model package's ModelConfig satisfies this). */
export interface RopeConfig {
  headDim: number;
  ropeTheta: number;
  ropeScaling: RopeScalingConfig | null;
}

/**
 * inv_freq (hd/2) as transformers' RoPE init functions define it, computed in float64 and
 * rounded once to f32:
 *   default: inv_freq[i] = 1 / theta^(2i/hd)
 *   linear:  inv_freq / factor        (θ = (pos / factor)·inv_freq)
 *   llama3:  `_compute_llama3_parameters`: wavelengths 2π/inv_freq shorter than
 *            original_max/high_freq_factor are kept, longer than original_max/low_freq_factor
 *            are divided by factor, and those between are blended with
 *            smooth = (original_max/wavelen − low_freq_factor) / (high_freq_factor − low_freq_factor).
 * transformers evaluates these formulas in float32 torch ops, so its values differ from these
 * (correctly rounded) ones by up to ~3 ulps (measured against transformers 5.17: 2.8e-7 relative
 * for Llama-3.1-8B, 2.0e-7 for Llama-3.2-1B). At position p that shifts θ by up to p·3e-7 rad:
 * negligible for short contexts, ~0.04 rad at p = 131072 (RoPE output vs transformers over
 * positions up to 131072: 6.9e-4 relative). The attention scaling of all three types is 1.
 */
export function ropeInvFreq(config: RopeConfig): Float32Array {
  const { headDim, ropeTheta } = config;
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 2 !== 0) throw new Error(`ropeInvFreq: head_dim must be a positive even integer, got ${headDim}`);
  if (!(ropeTheta > 0)) throw new Error(`ropeInvFreq: rope_theta must be positive, got ${ropeTheta}`);
  const half = headDim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / ropeTheta ** ((2 * i) / headDim);
  const scaling = config.ropeScaling;
  if (scaling?.type === "linear") {
    if (!(scaling.factor > 0)) throw new Error(`ropeInvFreq: linear rope_scaling.factor must be positive, got ${scaling.factor}`);
    for (let i = 0; i < half; i++) invFreq[i]! /= scaling.factor;
  } else if (scaling?.type === "llama3") {
    const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: oldContextLen } = scaling;
    if (!(highFreqFactor > lowFreqFactor)) throw new Error(`ropeInvFreq: llama3 high_freq_factor (${highFreqFactor}) must exceed low_freq_factor (${lowFreqFactor})`);
    const lowFreqWavelen = oldContextLen / lowFreqFactor;
    const highFreqWavelen = oldContextLen / highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = invFreq[i]!;
      const wavelen = (2 * Math.PI) / f;
      // inv_freq_llama = where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
      let scaled = wavelen > lowFreqWavelen ? f / factor : f;
      const isMediumFreq = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
      if (isMediumFreq) {
        const smooth = (oldContextLen / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        scaled = ((1 - smooth) * scaled) / factor + smooth * scaled;
      }
      invFreq[i] = scaled;
    }
  } else if (scaling !== null && scaling !== undefined) {
    throw new Error(`ropeInvFreq: unsupported rope scaling type '${(scaling as { type: string }).type}' (supported: default, linear, llama3)`);
  }
  return Float32Array.from(invFreq);
}

export interface RopeArgs {
  /** f32 (T, nQ, hd). */
  q: Tensor;
  /** f32 (T, nK, hd); optional (rotate q only). */
  k?: Tensor;
  /** i32 (T): position of each token. */
  positions: Tensor;
  /** f32 (hd/2), from ropeInvFreq. */
  invFreq: Tensor;
  /** Out-of-place: the rotated q is written here (q is copied, then rotated in place). */
  qOut?: Tensor;
  kOut?: Tensor;
}

function rope(rec: Recorder, kernel: string, args: RopeArgs, sign: 1 | -1) {
  const { q, positions, invFreq } = args;
  expectTensor(kernel, "q", q, "f32");
  if (q.shape.length !== 3) throw new Error(`${kernel}: q must be (T, nQ, hd), got [${q.shape.join(", ")}]`);
  const [T, nQ, hd] = q.shape as [number, number, number];
  if (hd % 2 !== 0) throw new Error(`${kernel}: head dim ${hd} must be even`);
  expectTensor(kernel, "positions", positions, "i32", [T]);
  expectTensor(kernel, "invFreq", invFreq, "f32", [hd / 2]);
  let nK = 0;
  if (args.k) {
    expectTensor(kernel, "k", args.k, "f32");
    if (args.k.shape.length !== 3 || args.k.shape[0] !== T || args.k.shape[2] !== hd) {
      throw new Error(`${kernel}: k must be (${T}, nK, ${hd}), got [${args.k.shape.join(", ")}]`);
    }
    nK = args.k.shape[1]!;
  }
  if (args.kOut && !args.k) throw new Error(`${kernel}: kOut given without k`);
  // Out of place = copy, then rotate the copy in place: one kernel, and no buffer is ever
  // bound both read-only and writable in one dispatch.
  let qDst = q;
  if (args.qOut) {
    expectTensor(kernel, "qOut", args.qOut, "f32", q.shape);
    rec.copy(q, args.qOut);
    qDst = args.qOut;
  }
  let kDst = args.k;
  if (args.kOut && args.k) {
    expectTensor(kernel, "kOut", args.kOut, "f32", args.k.shape);
    rec.copy(args.k, args.kOut);
    kDst = args.kOut;
  }
  const half = hd / 2;
  rec.dispatch(`${kernel} ${T}x(${nQ}+${nK})x${hd}`, rec.rt.pipeline(source, {}, "rope"),
    new Params(8).u32(T).u32(nQ).u32(nK).u32(half).u32(hd).f32(sign).u32(0).u32(0).buffer,
    [positions, invFreq, qDst, kDst ?? rec.rt.placeholder], flatGrid(T * (nQ + nK) * half));
}

/** Rotates q (and k) by θ = pos·inv_freq: in place, or into qOut/kOut. */
export function ropeForward(rec: Recorder, args: RopeArgs) {
  rope(rec, "ropeForward", args, 1);
}

export interface RopeAppendArgs {
  q: Tensor; // f32 (T, nQ, hd), rotated in place
  k: Tensor; // f32 (T, nK, hd), rotated in place
  v: Tensor; // f32 (T, nK, hd)
  positions: Tensor; // i32 (T)
  invFreq: Tensor; // f32 (hd/2)
  /** i32 (T): the cache row of each token; < 0 skips it. */
  rows: Tensor;
  kCache: Tensor; // f32 or f16 (maxT, nK, hd), one layer's
  vCache: Tensor; // same dtype and shape as kCache
}

/** Whether ropeForwardAppend takes this head dim (two rotation pairs per thread: hd a multiple of 4). */
export const ropeAppendFits = (hd: number) => hd % 4 === 0;

/**
 * ropeForward of q and k, then kCache[rows[t]] = k[t] (rotated), vCache[rows[t]] = v[t], in one
 * dispatch (rope.wgsl rope_append): the same bits as ropeForward followed by kvCacheAppend.
 */
export function ropeForwardAppend(rec: Recorder, args: RopeAppendArgs) {
  const K = "ropeForwardAppend";
  const { positions, rows, kCache, vCache } = args;
  const { T, nQ, nK, hd } = checkPairedRope(K, args);
  expectTensor(K, "rows", rows, "i32", [T]);
  if (kCache.shape.length !== 3 || kCache.shape[1] !== nK || kCache.shape[2] !== hd) throw new Error(`${K}: kCache must be (maxT, ${nK}, ${hd}), got [${kCache.shape.join(", ")}]`);
  expectTensor(K, "kCache", kCache, ["f32", "f16"]);
  expectTensor(K, "vCache", vCache, kCache.dtype, kCache.shape);
  const maxT = kCache.shape[0]!;
  rec.dispatch(`${K} ${T}x(${nQ}+${nK})x${hd}`, rec.rt.pipeline(source, { CACHE_F16: kCache.dtype === "f16" ? 1 : 0 }, "rope_append"),
    new Params(8).u32(T).u32(nQ).u32(nK).u32(hd / 2).u32(hd).f32(1).u32(maxT).u32(0).buffer,
    [positions, args.invFreq, args.q, args.k, args.v, rows, kCache, vCache], flatGrid(T * (nQ + nK) * (hd / 4)));
}

/** The shapes of the two-pairs-a-thread kernels (rope_append, rope_f16): q, k, v f32, hd a multiple of 4. */
function checkPairedRope(K: string, a: { q: Tensor; k: Tensor; v: Tensor; positions: Tensor; invFreq: Tensor }) {
  expectTensor(K, "q", a.q, "f32");
  if (a.q.shape.length !== 3) throw new Error(`${K}: q must be (T, nQ, hd), got [${a.q.shape.join(", ")}]`);
  const [T, nQ, hd] = a.q.shape as [number, number, number];
  if (!ropeAppendFits(hd)) throw new Error(`${K}: head dim ${hd} must be a multiple of 4`);
  expectTensor(K, "k", a.k, "f32");
  if (a.k.shape.length !== 3 || a.k.shape[0] !== T || a.k.shape[2] !== hd) throw new Error(`${K}: k must be (${T}, nK, ${hd}), got [${a.k.shape.join(", ")}]`);
  const nK = a.k.shape[1]!;
  expectTensor(K, "v", a.v, "f32", [T, nK, hd]);
  expectTensor(K, "positions", a.positions, "i32", [T]);
  expectTensor(K, "invFreq", a.invFreq, "f32", [hd / 2]);
  return { T, nQ, nK, hd };
}

export interface RopeF16Args {
  q: Tensor; // f32 (T, nQ, hd), rotated in place
  k: Tensor; // f32 (T, nK, hd), rotated in place
  v: Tensor; // f32 (T, nK, hd), read
  positions: Tensor; // i32 (T)
  invFreq: Tensor; // f32 (hd/2)
  /** f16 copies written: the rotated q and k, and v. */
  q16: Tensor;
  k16: Tensor;
  v16: Tensor;
}

/**
 * ropeForward of q and k, and f16 copies of the rotated q, k and of v, in one dispatch (rope.wgsl
 * rope_f16): the tensor-core attention's inputs without three conversion passes, with the bits of
 * ropeForward then toF16 of each. hd a multiple of 4 (ropeAppendFits).
 */
export function ropeForwardF16(rec: Recorder, args: RopeF16Args) {
  const K = "ropeForwardF16";
  const { q, k, v, positions, invFreq, q16, k16, v16 } = args;
  const { T, nQ, nK, hd } = checkPairedRope(K, args);
  expectTensor(K, "q16", q16, "f16", [T, nQ, hd]);
  expectTensor(K, "k16", k16, "f16", [T, nK, hd]);
  expectTensor(K, "v16", v16, "f16", [T, nK, hd]);
  rec.dispatch(`${K} ${T}x(${nQ}+${nK})x${hd}`, rec.rt.pipeline(source, {}, "rope_f16"),
    new Params(8).u32(T).u32(nQ).u32(nK).u32(hd / 2).u32(hd).f32(1).u32(0).u32(0).buffer,
    [positions, invFreq, q, k, v, q16, k16, v16], flatGrid(T * (nQ + nK) * (hd / 4)));
}

/**
 * Backward of ropeForward: dq, dk (the gradients of the rotated q, k) rotated by −θ, in place
 * or into qOut/kOut. Differentiates `out = R(θ)·x`: dx = R(θ)ᵀ·dout = R(−θ)·dout.
 */
export function ropeBackward(rec: Recorder, args: RopeArgs) {
  rope(rec, "ropeBackward", args, -1);
}
