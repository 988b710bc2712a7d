/**
 * LoRA on a frozen linear layer (litgpt's lora.py, in WGSL kernels), with PEFT's lora_dropout:
 *
 *   x̃ = dropout(x)                                        (T, in), x̃ = x when not training
 *   y  = x·Wᵀ (+ b) + s · (x̃·Aᵀ)·Bᵀ      A (r, in), B (out, r), s = α/r (α/√r with rsLoRA)
 *
 * Only the LoRA branch sees dropout; the frozen path sees x. A starts Kaiming-uniform and B at
 * zero, so training starts from the base model exactly. W is frozen: backward gives dx and the
 * gradients of A and B only.
 *
 * The dropout mask is never stored: it is a hash of (seed, element index) (kernels' dropout),
 * so the backward, and a gradient-checkpointing recompute of the forward, regenerate exactly
 * the forward's x̃ from x and the module's seed.
 *
 * Projections that read the same input (q/k/v, gate/up) go through one call as a group: their
 * h's share one (T, n·r) buffer, module i in columns i·r … i·r + r − 1. When the group's A's
 * (and their gradients) lie back to back in one buffer and no module has dropout,
 * [A_1; …; A_n] is one (n·r, in) matrix: h = x·[A_1; …; A_n]ᵀ, dA += dhᵀ·x and
 * dx += dh·[A_1; …; A_n] are one product each, reading x (or writing dx) once instead of n
 * times. Otherwise each module runs on its own columns; the results agree up to f32 summation
 * order.
 *
 * On tensor cores (16-bit frozen weights on a GPU with subgroup matrices, more than 16 rows, r and
 * every width a multiple of 16, A's stacked; with dropout the products run per module, as below): h = x16·[A]16ᵀ is one thin split-K product, each
 * s·h_i·B_iᵀ rides on its frozen product as an extra K = r slice of the same output tile (no
 * second pass over y), dh_i = s·dy16_i·B16_i is thin split-K, and dh·[A] rides on the last frozen
 * input-gradient product as an extra K = n·r slice. dA += dhᵀ·x and dBᵀ += s·hᵀ·dy (they reduce
 * over tokens) are split-K tensor-core products of few rows (shortTcPlan) reading dh and h
 * transposed to f16 (tiny) and x, dy in f16, dBᵀ reduced into dB transposed (loraTensorCores.grads;
 * off: f32 products). Operands are rounded to f16 as the frozen products' are; the f32 path is what
 * the parity tests against PEFT check, this one is checked against it.
 */
import {
  type AuxSlice, type MatmulArgs, type Recorder, Tensor, bgmvExpand, bgmvShrink, dropoutBackward, dropoutForward, fillRowsWithBias,
  convertTransposedF16, hasTensorCoreMatmul, matmul, matmulAuto, matmulTensorCore, matmulTensorCoreSplitK, matmulTensorCoreThin, scale,
  gemvGroup, shortTcPlan, tensorCoreUnsupported, toF16,
} from "@tuneloom/kernels";
import type { LoraTarget } from "../lora-config.ts";


/** Training-time dropout on a module's LoRA input; absent at inference and evaluation. */
export interface LoraDropout {
  /** Probability of zeroing an input element, in (0, 1). */
  p: number;
  /**
   * u32 mask seed, unique per (run seed, step, layer, module, micro-batch); the trainer makes it
   * with kernels' `dropoutSeed`. Forward, recompute and backward must see the same value.
   */
  seed: number;
  /**
   * f32 scratch of at least T·in elements, for x̃ and then the LoRA part of dx. One buffer can
   * serve every module of a step: each call uses it only between its own dispatches.
   */
  scratch: Tensor;
}

export interface LoraModule {
  A: Tensor; // f32 (r, in)
  B: Tensor; // f32 (out, r)
  /** s in ΔW = s·B·A (lora-config.ts loraScaling). */
  scaling: number;
  /** Gradients, accumulated (+=) by the backward; absent at inference. */
  dA?: Tensor; // f32 (r, in)
  dB?: Tensor; // f32 (out, r)
  dropout?: LoraDropout;
  /**
   * f16 copies of A, B and s·B that the owner keeps current for as long as the module is used
   * (the LoRA trainer refreshes them at the start of each step): the tensor-core products read
   * these instead of converting the weights at every use. Absent: converted where needed.
   */
  f16?: { A: Tensor; B: Tensor; sB: Tensor };
}

export type LayerLora = Partial<Record<LoraTarget, LoraModule>>;

/** x̃ (T, in) = dropout(x) written into the module's scratch. */
function droppedInput(rec: Recorder, x: Tensor, d: LoraDropout, fn: string): Tensor {
  const [T, inF] = x.shape as [number, number];
  if (d.scratch.dtype !== "f32" || d.scratch.numel < T * inF) {
    throw new Error(`${fn}: LoRA dropout scratch must be f32 with at least ${T}·${inF} elements, got ${d.scratch.dtype} [${d.scratch.shape}]`);
  }
  const xd = new Tensor(d.scratch.buffer, "f32", [T, inF], d.scratch.byteOffset, "lora_x_dropped");
  dropoutForward(rec, x, xd, d.p, d.seed);
  return xd;
}

/** A frozen projection of a group (same input x) and its LoRA, if adapted. */
export interface LoraProjection {
  w: Tensor; // (out, in), f32/f16/bf16
  bias?: Tensor; // f32 (out)
  lora?: LoraModule;
}

/** A forward projection's output: written, or with `accumulate` added to (y += …; no bias then). */
export interface LoraOutput {
  y: Tensor;
  accumulate?: boolean;
}

/** The adapted modules of a group, in order, with the rank they share. */
function adaptedOf(projs: readonly LoraProjection[], fn: string): { mods: LoraModule[]; r: number } {
  const mods = projs.flatMap((p) => (p.lora ? [p.lora] : []));
  const r = mods[0]?.A.shape[0] ?? 0;
  for (const m of mods) if (m.A.shape[0] !== r) throw new Error(`${fn}: the LoRA modules of a group must share one rank, got ${m.A.shape[0]} and ${r}`);
  return { mods, r };
}

/** (T, n·r) view of a group's h or dh buffer; throws if it is too small. */
function groupColumns(buf: Tensor | undefined, T: number, width: number, what: string, fn: string): Tensor {
  if (!buf || buf.dtype !== "f32" || buf.numel < T * width) {
    throw new Error(`${fn}: LoRA needs an f32 (T, n·r) = (${T}, ${width}) buffer for ${what}, got ${buf ? `${buf.dtype} [${buf.shape}]` : "none"}`);
  }
  return new Tensor(buf.buffer, "f32", [T, width], buf.byteOffset, buf.label);
}

/**
 * [t_1; …; t_n] as one (n·rows, cols) tensor when the tensors lie back to back in one buffer
 * (the trainer's flat layout puts each layer's A's, and their gradients, in module order), else null.
 */
function stacked(ts: readonly Tensor[]): Tensor | null {
  const [rows, cols] = ts[0]!.shape as [number, number];
  const dtype = ts[0]!.dtype, bytes = dtype === "f32" ? 4 : 2;
  for (const [i, t] of ts.entries()) {
    if (t.buffer !== ts[0]!.buffer || t.dtype !== dtype || t.shape[0] !== rows || t.shape[1] !== cols || t.byteOffset !== ts[0]!.byteOffset + i * rows * cols * bytes) return null;
  }
  return new Tensor(ts[0]!.buffer, dtype, [ts.length * rows, cols], ts[0]!.byteOffset, `${ts[0]!.label}:stacked`);
}

/**
 * An f16 weight for this recording: `kept` (a module's f16 copy, LoraModule.f16) when there is one,
 * else `t` converted now. `done()` recycles what was converted.
 */
function weight16(rec: Recorder, t: Tensor, kept: Tensor | null | undefined, scaling = 1): { w: Tensor; done: () => void } {
  if (kept) return { w: kept, done: () => {} };
  const w = scaledF16(rec, t, scaling);
  return { w, done: () => rec.recycle(w) };
}

/** The group's A's stacked, in f16: the modules' kept copies when every one has them back to back. */
function stackedA16(rec: Recorder, mods: readonly LoraModule[], A: Tensor) {
  const kept = mods.every((m) => m.f16) ? (mods.length === 1 ? mods[0]!.f16!.A : stacked(mods.map((m) => m.f16!.A))) : null;
  return weight16(rec, A, kept);
}

/** One product over the whole group is possible (see the module comment). */
function fusable(mods: readonly LoraModule[]): boolean {
  return mods.length > 1 && mods.every((m) => !m.dropout); // each s_i applies to B_i's products only
}

/** [h_1 … h_n] (T, n·r) = [x̃_1·A_1ᵀ … x̃_n·A_nᵀ] in f32 products, into `h` (one product when fusable). */
function loraMidsF32(rec: Recorder, x: Tensor, mods: readonly LoraModule[], r: number, h: Tensor | undefined, fn: string): Tensor {
  const [T, inF] = x.shape as [number, number];
  const ld = mods.length * r;
  const hs = groupColumns(h, T, ld, "h", fn);
  const A = fusable(mods) ? stacked(mods.map((m) => m.A)) : null;
  if (A) {
    matmul(rec, { a: x, b: A, c: hs, M: T, N: ld, K: inF, transB: true }); // [h_1 … h_n] = x·[A_1; …; A_n]ᵀ (T, n·r)
  } else {
    for (const [i, m] of mods.entries()) {
      const xl = m.dropout ? droppedInput(rec, x, m.dropout, fn) : x; // x̃_i (T, in)
      matmul(rec, { a: xl, b: m.A, c: hs, M: T, N: r, K: inF, transB: true, ldc: ld, offsetC: i * r }); // h_i = x̃_i·A_iᵀ
    }
  }
  return hs;
}

/** The same on tensor cores (tensorCoreLora): from xh = x rounded to f16, and A stacked or null. */
function loraMidsTc(rec: Recorder, x: Tensor, xh: Tensor, mods: readonly LoraModule[], r: number, A: Tensor | null, h: Tensor | undefined, fn: string): Tensor {
  const [T, inF] = x.shape as [number, number];
  const ld = mods.length * r;
  const hs = groupColumns(h, T, ld, "h", fn);
  if (A) {
    const A16 = stackedA16(rec, mods, A); // (n·r, in)
    matmulTensorCoreThin(rec, { a: xh, b: A16.w, c: hs, M: T, N: ld, K: inF, transB: true }); // [h_1 … h_n] = x·[A]ᵀ (T, n·r), f32
    A16.done();
  } else {
    for (const [i, m] of mods.entries()) {
      // h_i = x̃_i·A_iᵀ, x̃_i = dropout(x) (or x) rounded to f16
      const xl = m.dropout ? droppedInput(rec, x, m.dropout, fn) : x;
      const xl16 = m.dropout ? toF16(rec, xl) : xh, A16 = weight16(rec, m.A, m.f16?.A);
      matmulTensorCoreThin(rec, { a: xl16, b: A16.w, c: hs, M: T, N: r, K: inF, transB: true, ldc: ld, offsetC: i * r });
      A16.done();
      if (xl16 !== xh) rec.recycle(xl16);
    }
  }
  return hs;
}

/**
 * Only the h_i of linearsLoraForward (same products, same bits), for a gradient-checkpointing
 * recompute whose outputs y_i the backward never reads (down_proj's: the layer output). No frozen
 * products; nothing when no projection of the group is adapted.
 */
export function linearsLoraMids(rec: Recorder, x: Tensor, projs: readonly LoraProjection[], h: Tensor | undefined, x16?: Tensor) {
  const { mods, r } = adaptedOf(projs, "linearsLoraMids");
  if (mods.length === 0) return;
  const tc = tensorCoreLora(rec, x, projs, mods, r);
  if (!tc) return void loraMidsF32(rec, x, mods, r, h, "linearsLoraMids");
  const xh = x16 ?? toF16(rec, x);
  loraMidsTc(rec, x, xh, mods, r, tc.A, h, "linearsLoraMids");
  if (!x16) rec.recycle(xh);
}

/**
 * y_i (T, out_i) = x (T, in)·W_iᵀ + bias_i, plus s·h_i·B_iᵀ with h_i = x̃_i·A_iᵀ (T, r) kept in
 * columns of `h` (T, n·r) for the backward, for every projection i of a group that reads x; with
 * `accumulate`, y_i += the same (a residual added by the product itself; no bias then).
 * `x16`: x already rounded to f16, used for the frozen products on tensor cores; the LoRA
 * branch always reads the f32 x.
 */
export function linearsLoraForward(
  rec: Recorder, x: Tensor, projs: readonly (LoraProjection & LoraOutput)[], h: Tensor | undefined, x16?: Tensor,
) {
  const T = x.shape[0]!;
  const { mods, r } = adaptedOf(projs, "linearsLoraForward");
  for (const p of projs) if (p.accumulate && p.bias) throw new Error("linearsLoraForward: a bias on an accumulated output");
  const tc = tensorCoreLora(rec, x, projs, mods, r);
  if (tc) return loraForwardTc(rec, x, projs, h, x16, mods, r, tc.A);
  // A few rows (decode): the group's frozen products in one GEMV dispatch where it applies.
  const grouped = projs.length > 1 && T <= 16 && !projs.some((p) => p.accumulate) && gemvGroup(rec, x, T, x.shape[1]!, projs.map(({ w, bias, y }) => ({ w, y, bias })));
  if (!grouped) for (const { w, bias, y, accumulate } of projs) {
    const [outF, inF] = w.shape as [number, number];
    const base = { b: w, c: y, bias, M: T, N: outF, K: inF, transB: true, beta: accumulate ? 1 : 0 };
    const a = x16 && tensorCoreUnsupported({ ...base, a: x16, bias: undefined }) === null ? x16 : x;
    matmulAuto(rec, { ...base, a }); // y_i (+)= x·W_iᵀ + b_i
  }
  if (mods.length === 0) return;
  const ld = mods.length * r;
  const hs = loraMidsF32(rec, x, mods, r, h, "linearsLoraForward");
  const ys = projs.filter((p) => p.lora).map((p) => p.y);
  for (const [i, m] of mods.entries()) {
    const outF = m.B.shape[0]!;
    // y_i += s·h_i·B_iᵀ
    matmul(rec, { a: hs, b: m.B, c: ys[i]!, M: T, N: outF, K: r, transB: true, lda: ld, offsetA: i * r, alpha: m.scaling, beta: 1 });
  }
}

/**
 * Whether LoRA may run on tensor cores (module comment). On by default since its GPU tests passed on
 * an H100 (session 6: the 1B step's f32 LoRA products went from 77 to 18 ms, 392 → 364 ms of GPU
 * time). `TUNELOOM_LORA_TC=0` turns it off (A/B measurements); tests flip `enabled`.
 */
export const loraTensorCores = {
  enabled: process.env.TUNELOOM_LORA_TC !== "0",
  /** dA and dB on tensor cores as well (session 7; `TUNELOOM_LORA_GRAD_TC=0` keeps them f32). */
  grads: process.env.TUNELOOM_LORA_GRAD_TC !== "0",
};

/** t (R, C) f32 → (C, R) f16, a scratch of the recording (recycle it). */
function transposedF16(rec: Recorder, t: Tensor): Tensor {
  const [R, C] = t.shape as [number, number];
  const out = rec.scratch("f16", [C, R], `${t.label}:f16ᵀ`);
  convertTransposedF16(rec, t, out);
  return out;
}

/** acc (M, N) += alpha · aT16[rows at offsetA] (M, K = T) · b16 (T, N), or its transpose into acc (N, M). */
function shortProductTc(rec: Recorder, args: MatmulArgs, transposeC = false) {
  const { cfg, splits } = shortTcPlan(args.M, args.N, args.K);
  matmulTensorCoreSplitK(rec, args, cfg, splits, "LoRA gradients on tensor cores", { transposeC });
}

/**
 * How a group's LoRA runs on tensor cores (module comment), or null when it does not: a GPU with
 * subgroup matrices, f16 frozen weights, more than 16 rows, T, in, every out and r multiples of 16.
 * Without dropout the A's must lie back to back (or be one module): `A` is [A_1; …; A_n] and h, dA
 * and dh·A are one product each. With dropout each module reads its own x̃_i: `A` is null and the
 * products run per module (dh_i·A_i is masked by the dropout backward, so it is no aux slice).
 */
function tensorCoreLora(rec: Recorder, x: Tensor, projs: readonly LoraProjection[], mods: readonly LoraModule[], r: number): { A: Tensor | null } | null {
  const [T, inF] = x.shape as [number, number];
  if (mods.length === 0 || !loraTensorCores.enabled || !hasTensorCoreMatmul(rec.rt)) return null;
  // (decode-sized batches, ≤ 16 rows, keep GEMV for the frozen products)
  if (T <= 16 || T % 16 || inF % 16 || r % 16 || projs.some((p) => p.w.dtype !== "f16" || p.w.shape[0]! % 16)) return null;
  if (mods.some((m) => m.dropout)) return { A: null };
  const A = mods.length === 1 ? mods[0]!.A : stacked(mods.map((m) => m.A));
  return A ? { A } : null;
}

/** f16 copy of s·B (a scratch of the recording: recycle it). */
function scaledF16(rec: Recorder, B: Tensor, s: number): Tensor {
  if (s === 1) return toF16(rec, B);
  const sB = rec.scratch("f32", B.shape, "lora_sB");
  scale(rec, s, B, sB);
  const out = toF16(rec, sB);
  rec.recycle(sB);
  return out;
}

/** A frozen product on tensor cores with an aux slice: y = a·op(W) (+ bias) (+ y) + aux. */
function frozenWithAux(rec: Recorder, args: MatmulArgs, aux: AuxSlice | undefined) {
  let beta = args.beta ?? 0;
  if (args.bias) {
    if (beta !== 0) throw new Error("frozenWithAux: a bias on an accumulated output");
    fillRowsWithBias(rec, args.bias, args.c, args.M, args.N);
    beta = 1;
  }
  matmulTensorCore(rec, { ...args, bias: undefined, beta }, undefined, aux);
}

/** linearsLoraForward on tensor cores (see the module comment). */
function loraForwardTc(
  rec: Recorder, x: Tensor, projs: readonly (LoraProjection & LoraOutput)[], h: Tensor | undefined, x16: Tensor | undefined,
  mods: readonly LoraModule[], r: number, A: Tensor | null,
) {
  const [T, inF] = x.shape as [number, number];
  const ld = mods.length * r;
  const xh = x16 ?? toF16(rec, x);
  const hs = loraMidsTc(rec, x, xh, mods, r, A, h, "linearsLoraForward");
  const h16 = toF16(rec, hs);
  let i = 0;
  for (const { w, bias, y, lora, accumulate } of projs) {
    const outF = w.shape[0]!;
    const sB16 = lora ? weight16(rec, lora.B, lora.f16?.sB, lora.scaling) : undefined; // (out, r)
    // y (+)= x·Wᵀ + b (+ h_i·(s·B_i)ᵀ as the tile's last K = r slice)
    frozenWithAux(rec, { a: xh, b: w, c: y, bias, M: T, N: outF, K: inF, transB: true, beta: accumulate ? 1 : 0 },
      sB16 ? { a2: h16, b2: sB16.w, K2: r, lda2: ld, offsetA2: i++ * r } : undefined);
    sB16?.done();
  }
  rec.recycle(h16);
  if (!x16) rec.recycle(xh);
}

/**
 * Backward of linearsLoraForward. dx (T, in) = Σ_i dy_i·W_i (+ the LoRA parts), written when
 * betaDx = 0, added when 1. Every dA_i, dB_i accumulates (+=) so micro-batches sum. `dh` is
 * (T, n·r) scratch. With dropout, x̃_i is regenerated from x and the module's seed (so each
 * `lora.dropout` must be the forward's). `dy16` (per projection): dy_i already rounded to f16 (the
 * bits of toF16, written by the kernel that made dy_i), read by the tensor-core products instead of
 * converting here; ignored where they do not run. `x16`: x rounded to f16 the same way (e.g. kept
 * from the recompute that made x), read by the tensor-core dA products instead of converting x.
 */
export function linearsLoraBackward(
  rec: Recorder, x: Tensor, projs: readonly (LoraProjection & { dy: Tensor; dy16?: Tensor })[], dx: Tensor, betaDx: 0 | 1,
  h: Tensor | undefined, dh: Tensor | undefined, x16?: Tensor,
) {
  const [T, inF] = x.shape as [number, number];
  const { mods, r } = adaptedOf(projs, "linearsLoraBackward");
  const tc = tensorCoreLora(rec, x, projs, mods, r);
  if (tc) return loraBackwardTc(rec, x, projs, dx, betaDx, h, dh, mods, r, tc.A, x16);
  // backward of y_i = x·W_iᵀ:  dx = Σ_i dy_i·W_i (from dy_i's f16 copy where tensor cores take it)
  for (const [i, { w, dy, dy16 }] of projs.entries()) {
    const outF = w.shape[0]!;
    const base = { b: w, c: dx, M: T, N: inF, K: outF, beta: i === 0 ? betaDx : 1 };
    matmulAuto(rec, { ...base, a: dy16 && tensorCoreUnsupported({ ...base, a: dy16 }) === null ? dy16 : dy });
  }
  if (mods.length === 0) return;
  for (const m of mods) if (!m.dA || !m.dB) throw new Error("linearsLoraBackward: LoRA backward needs dA and dB");
  const ld = mods.length * r;
  const hs = groupColumns(h, T, ld, "h", "linearsLoraBackward");
  const dhs = groupColumns(dh, T, ld, "dh", "linearsLoraBackward");
  const dys = projs.filter((p) => p.lora).map((p) => p.dy);
  for (const [i, m] of mods.entries()) {
    const outF = m.B.shape[0]!, s = m.scaling, dy = dys[i]!;
    // backward of y_i += s·h_i·B_iᵀ:  dB_i += s·dy_iᵀ·h_i,  dh_i = s·dy_i·B_i
    matmul(rec, { a: dy, b: hs, c: m.dB!, M: outF, N: r, K: T, transA: true, ldb: ld, offsetB: i * r, alpha: s, beta: 1 });
    matmul(rec, { a: dy, b: m.B, c: dhs, M: T, N: r, K: outF, ldc: ld, offsetC: i * r, alpha: s });
  }
  const A = fusable(mods) ? stacked(mods.map((m) => m.A)) : null;
  const dA = A ? stacked(mods.map((m) => m.dA!)) : null;
  if (A && dA) {
    // backward of [h_1 … h_n] = x·[A_1; …; A_n]ᵀ:  d[A_1; …; A_n] += dhᵀ·x,  dx += dh·[A_1; …; A_n]
    matmul(rec, { a: dhs, b: x, c: dA, M: ld, N: inF, K: T, transA: true, beta: 1 });
    matmul(rec, { a: dhs, b: A, c: dx, M: T, N: inF, K: ld, beta: 1 });
    return;
  }
  for (const [i, m] of mods.entries()) {
    const cols = { lda: ld, offsetA: i * r };
    if (!m.dropout) {
      // backward of h_i = x·A_iᵀ:  dA_i += dh_iᵀ·x,  dx += dh_i·A_i
      matmul(rec, { a: dhs, b: x, c: m.dA!, M: r, N: inF, K: T, transA: true, beta: 1, ...cols });
      matmul(rec, { a: dhs, b: m.A, c: dx, M: T, N: inF, K: r, beta: 1, ...cols });
      continue;
    }
    const d = m.dropout;
    // backward of h_i = x̃_i·A_iᵀ:  dA_i += dh_iᵀ·x̃_i,  dx̃_i = dh_i·A_i
    const xd = droppedInput(rec, x, d, "linearsLoraBackward"); // x̃_i regenerated into the scratch
    matmul(rec, { a: dhs, b: xd, c: m.dA!, M: r, N: inF, K: T, transA: true, beta: 1, ...cols });
    const dxd = xd; // x̃_i is no longer needed: the scratch now holds dx̃_i (T, in)
    matmul(rec, { a: dhs, b: m.A, c: dxd, M: T, N: inF, K: r, ...cols });
    // backward of x̃_i = dropout(x):  dx += dx̃_i · keep / (1 − p)
    dropoutBackward(rec, dxd, dx, d.p, d.seed, 1);
  }
}

/** linearsLoraBackward on tensor cores (see the module comment; `A` null: per module, with dropout). */
function loraBackwardTc(
  rec: Recorder, x: Tensor, projs: readonly (LoraProjection & { dy: Tensor; dy16?: Tensor })[], dx: Tensor, betaDx: 0 | 1,
  h: Tensor | undefined, dh: Tensor | undefined, mods: readonly LoraModule[], r: number, A: Tensor | null, keptX16?: Tensor,
) {
  const [T, inF] = x.shape as [number, number];
  for (const m of mods) if (!m.dA || !m.dB) throw new Error("linearsLoraBackward: LoRA backward needs dA and dB");
  // x in f16 for the dA products: the caller's copy, else converted here (and recycled after)
  const x16Of = () => keptX16 ?? toF16(rec, x);
  const done16 = (t: Tensor | undefined) => { if (t && t !== keptX16) rec.recycle(t); };
  const ld = mods.length * r;
  const hs = groupColumns(h, T, ld, "h", "linearsLoraBackward");
  const dhs = groupColumns(dh, T, ld, "dh", "linearsLoraBackward");
  const dy16s = projs.map(({ dy, dy16 }) => dy16 ?? toF16(rec, dy)); // each dy_i rounded once: dh_i, dB_i and the frozen dx product read it
  // dA, dB on tensor cores: h and (after the loop) dh transposed to f16, (n·r, T) each, module i in rows i·r …
  const gradsTc = loraTensorCores.grads;
  const hT16 = gradsTc ? transposedF16(rec, hs) : undefined;
  let i = 0;
  for (const [j, { dy, lora: m }] of projs.entries()) {
    if (!m) continue;
    const outF = m.B.shape[0]!, s = m.scaling;
    // backward of y_i += s·h_i·B_iᵀ:  dB_i += s·dy_iᵀ·h_i,  dh_i = s·dy_i·B_i (tensor cores)
    if (hT16) shortProductTc(rec, { a: hT16, b: dy16s[j]!, c: m.dB!, M: r, N: outF, K: T, lda: T, offsetA: i * r * T, ldc: r, alpha: s, beta: 1 }, true);
    else matmul(rec, { a: dy, b: hs, c: m.dB!, M: outF, N: r, K: T, transA: true, ldb: ld, offsetB: i * r, alpha: s, beta: 1 });
    const B16 = weight16(rec, m.B, m.f16?.B); // (out, r)
    matmulTensorCoreThin(rec, { a: dy16s[j]!, b: B16.w, c: dhs, M: T, N: r, K: outF, ldc: ld, offsetC: i * r, alpha: s });
    B16.done();
    i++;
  }
  // backward of y_i = x·W_iᵀ:  dx = Σ_i dy_i·W_i, with dh·[A] as the last product's aux slice
  // when the A's are stacked (no dropout); per module below otherwise.
  let aux: AuxSlice | undefined;
  let auxDone = () => {};
  if (A) {
    // backward of [h_1 … h_n] = x·[A]ᵀ:  d[A] += dhᵀ·x,  dx += dh·[A]
    const dA = mods.length === 1 ? mods[0]!.dA! : stacked(mods.map((m) => m.dA!));
    if (!dA) throw new Error("linearsLoraBackward: stacked A's need stacked dA's");
    if (gradsTc) {
      const dhT16 = transposedF16(rec, dhs), x16 = x16Of();
      shortProductTc(rec, { a: dhT16, b: x16, c: dA, M: ld, N: inF, K: T, beta: 1 });
      rec.recycle(dhT16);
      done16(x16);
    } else matmul(rec, { a: dhs, b: x, c: dA, M: ld, N: inF, K: T, transA: true, beta: 1 });
    const A16 = stackedA16(rec, mods, A), dh16 = toF16(rec, dhs);
    aux = { a2: dh16, b2: A16.w, K2: ld };
    auxDone = () => { rec.recycle(dh16); A16.done(); };
  }
  if (hT16) rec.recycle(hT16);
  for (const [j, { w }] of projs.entries()) {
    const outF = w.shape[0]!;
    matmulTensorCore(rec, { a: dy16s[j]!, b: w, c: dx, M: T, N: inF, K: outF, beta: j === 0 ? betaDx : 1 }, undefined,
      j === projs.length - 1 ? aux : undefined);
  }
  auxDone();
  for (const [j, t] of dy16s.entries()) if (t !== projs[j]!.dy16) rec.recycle(t);
  if (A) return;
  const dh16 = toF16(rec, dhs);
  const dhT16 = gradsTc ? transposedF16(rec, dhs) : undefined;
  const x16 = gradsTc && mods.some((m) => !m.dropout) ? x16Of() : undefined;
  // dA_i += dh_iᵀ·input: on tensor cores from dhᵀ's rows i·r … (f16 input), else f32 from dh's columns.
  const dAProduct = (i: number, m: LoraModule, input: Tensor, input16: Tensor | undefined) => {
    if (dhT16 && input16) shortProductTc(rec, { a: dhT16, b: input16, c: m.dA!, M: r, N: inF, K: T, lda: T, offsetA: i * r * T, beta: 1 });
    else matmul(rec, { a: dhs, b: input, c: m.dA!, M: r, N: inF, K: T, transA: true, beta: 1, lda: ld, offsetA: i * r });
  };
  for (const [i, m] of mods.entries()) {
    const cols = { lda: ld, offsetA: i * r };
    const A16 = weight16(rec, m.A, m.f16?.A); // (r, in)
    if (!m.dropout) {
      // backward of h_i = x·A_iᵀ:  dA_i += dh_iᵀ·x,  dx += dh_i·A_i (tensor cores)
      dAProduct(i, m, x, x16);
      matmulTensorCore(rec, { a: dh16, b: A16.w, c: dx, M: T, N: inF, K: r, beta: 1, ...cols });
    } else {
      const d = m.dropout;
      // backward of h_i = x̃_i·A_iᵀ:  dA_i += dh_iᵀ·x̃_i (x̃_i regenerated),  dx̃_i = dh_i·A_i (tensor cores)
      const xd = droppedInput(rec, x, d, "linearsLoraBackward");
      const xd16 = dhT16 ? toF16(rec, xd) : undefined;
      dAProduct(i, m, xd, xd16);
      if (xd16) rec.recycle(xd16);
      const dxd = xd; // x̃_i is no longer needed: the scratch now holds dx̃_i (T, in)
      matmulTensorCore(rec, { a: dh16, b: A16.w, c: dxd, M: T, N: inF, K: r, ...cols });
      // backward of x̃_i = dropout(x):  dx += dx̃_i · keep / (1 − p)
      dropoutBackward(rec, dxd, dx, d.p, d.seed, 1);
    }
    A16.done();
  }
  rec.recycle(dh16);
  if (dhT16) rec.recycle(dhT16);
  done16(x16);
}

/**
 * Several adapters in one batch (serving, lora-slots.ts): each row picks its adapter's slot out
 * of stacked A's and B's, so a batch that mixes adapters is ONE forward (kernels' bgmv).
 */
export interface GatheredRows {
  /** i32 (T): each row's slot, −1 for the base (no LoRA delta). */
  rows: Tensor;
  /** u32 (S, 7): each slot's rank per target module (LORA_TARGETS order), 0 = not adapted. */
  ranks: Tensor;
  /** f32 (S): each slot's s = α/r (α/√r with rsLoRA). */
  scales: Tensor;
  /** The padded rank of the stacks. */
  R: number;
  /**
   * Runs of consecutive rows on one slot with that slot's table entries as the host has them
   * (LoraSlots.segments): when given, the LoRA runs as dense products per run (SGMV-style:
   * prefill, where a prompt's tokens share a slot) instead of the per-row BGMV kernels.
   */
  segments?: readonly SlotSegment[];
}

/** Rows start … start + count − 1 all on `slot` (≥ 0); its ranks per LORA_TARGETS column and its scale. */
export interface SlotSegment {
  start: number;
  count: number;
  slot: number;
  ranks: readonly number[];
  scale: number;
}

/** One projection group's stacks: module i's A in rows i·R … i·R + R − 1 of each slot's block. */
export interface GatheredGroup {
  A: Tensor; // (S, n·R, in)
  B: readonly Tensor[]; // module i: (S, out_i, R)
  /** Column of the group's first module in the rank table. */
  rankCol: number;
}

/** A layer's gathered LoRA: its groups' stacks and the rows' slots. */
export interface GatheredLayerLora {
  gathered: GatheredRows;
  groups: Readonly<Record<"qkv" | "o" | "gateUp" | "down", GatheredGroup>>;
}

/**
 * linearsGatheredLoraForward over runs of rows that share a slot (prefill): per run, one product
 * h = x_run·[A_1; …; A_n][slot]ᵀ (the slot's block of the A stack, zero past each module's rank)
 * and per adapted module y_i,run += s·h_i,run·B_i[slot]ᵀ over its rank, on the matmul kernels:
 * the stacks are read once per run instead of once per row. Rows outside the runs (the base)
 * are left as they are.
 */
function segmentedLoraForward(rec: Recorder, x: Tensor, ys: readonly Tensor[], g: GatheredGroup, R: number, segments: readonly SlotSegment[], hs: Tensor) {
  const inF = x.shape[1]!, nR = ys.length * R;
  for (const seg of segments) {
    const ranks = ys.map((_, i) => seg.ranks[g.rankCol + i] ?? 0);
    if (ranks.every((r) => r === 0)) continue; // the adapter leaves this group alone
    // h_run (count, n·R) = x_run · A[slot]ᵀ
    matmul(rec, { a: x, b: g.A, c: hs, M: seg.count, N: nR, K: inF, transB: true, offsetA: seg.start * inF, offsetB: seg.slot * nR * inF, offsetC: seg.start * nR });
    for (const [i, y] of ys.entries()) {
      const r = ranks[i]!, out = y.shape[1]!;
      if (r === 0) continue;
      // y_i,run += s · h_i,run (count, r) · B_i[slot] (out, r)ᵀ
      matmul(rec, {
        a: hs, b: g.B[i]!, c: y, M: seg.count, N: out, K: r, transB: true, alpha: seg.scale, beta: 1,
        lda: nR, offsetA: seg.start * nR + i * R, ldb: R, offsetB: seg.slot * out * R, offsetC: seg.start * out,
      });
    }
  }
}

/**
 * y_i (T, out_i) += s[slot_t]·h_i·B_i[slot_t]ᵀ with [h_1 … h_n] = x·[A_1; …; A_n][slot_t]ᵀ
 * (T, n·R) in `h`, for every row t with a slot: the LoRA part of a group whose frozen products
 * (y_i = x·W_iᵀ + b_i) are already recorded. One shrink for the group, one expand per module.
 */
export function linearsGatheredLoraForward(rec: Recorder, x: Tensor, ys: readonly Tensor[], g: GatheredGroup, rows: GatheredRows, h: Tensor | undefined) {
  const T = x.shape[0]!, R = rows.R;
  if (g.B.length !== ys.length) throw new Error(`linearsGatheredLoraForward: ${ys.length} outputs for a group of ${g.B.length} modules`);
  const hs = groupColumns(h, T, ys.length * R, "h", "linearsGatheredLoraForward");
  if (rows.segments) return segmentedLoraForward(rec, x, ys, g, R, rows.segments, hs);
  const common = { slots: rows.rows, ranks: rows.ranks };
  bgmvShrink(rec, { ...common, x, A: g.A, R, rankCol: g.rankCol, h: hs }); // [h_1 … h_n] = x·[A_1; …; A_n][slot]ᵀ
  for (const [i, y] of ys.entries()) {
    bgmvExpand(rec, { ...common, h: hs, hOffset: i * R, B: g.B[i]!, scales: rows.scales, rankCol: g.rankCol + i, y }); // y_i += s·h_i·B_i[slot]ᵀ
  }
}
