import type { DType } from "./dtype.ts";
import { wgslLoader } from "./load16.ts";
import { cdiv, flatGrid, Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import matmulWgsl from "./matmul.wgsl" with { type: "text" };
import matmulDirectWgsl from "./matmul-direct.wgsl" with { type: "text" };
import matmulInterfaceWgsl from "./matmul-interface.wgsl" with { type: "text" };
import splitKWgsl from "./matmul-splitk.wgsl" with { type: "text" };

/**
 * The portable kernel's two forms: `tiled` (matmul.wgsl: 64×64 tiles staged through workgroup
 * memory, split-K for skinny products; for GPUs) and `direct` (matmul-direct.wgsl: 8×8 blocks
 * straight from memory, no barriers; ~4× faster on CPU drivers such as lavapipe).
 */
export type MatmulKernel = "tiled" | "direct";

/** `direct` on software (CPU) adapters, `tiled` on GPUs. */
export const defaultMatmulKernel = (rt: GpuRuntime): MatmulKernel => (rt.caps.isSoftware ? "direct" : "tiled");

const sources = new Map<string, KernelSource>();
function matmulSource(kernel: MatmulKernel, bDtype: DType): KernelSource {
  const key = `${kernel}:${bDtype}`;
  let s = sources.get(key);
  if (!s) {
    const code = (kernel === "direct" ? matmulDirectWgsl : matmulWgsl)
      .replace("//!INTERFACE", matmulInterfaceWgsl.replace("//!LOAD_B", wgslLoader("b", 2, bDtype)));
    s = { name: `matmul_${kernel === "direct" ? "direct_" : ""}b${bDtype}`, code };
    sources.set(key, s);
  }
  return s;
}

export interface MatmulArgs {
  /** f32; (M, K), or (K, M) when transA. */
  a: Tensor;
  /** f32/f16/bf16; (K, N), or (N, K) when transB. */
  b: Tensor;
  /** f32 (M, N) output. */
  c: Tensor;
  /** Optional f32 (N) added to every row. */
  bias?: Tensor;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  /** C = alpha·op(A)·op(B) + beta·C (beta = 1 accumulates, e.g. gradients over micro-batches). */
  alpha?: number;
  beta?: number;
  /** Independent problems along workgroup z, each offset by the strides (in elements). */
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
  lda?: number;
  ldb?: number;
  ldc?: number;
  /**
   * Element offsets of A, B and C in their buffers (default 0), for operands that start inside
   * a wider matrix, e.g. a column block with ld = the full width (portable kernel only).
   */
  offsetA?: number;
  offsetB?: number;
  offsetC?: number;
}

/** Records C = alpha·op(A)·op(B) (+ bias) + beta·C (with the device's kernel form unless `kernel` is given). */
export function matmul(rec: Recorder, args: MatmulArgs, kernel: MatmulKernel = defaultMatmulKernel(rec.rt)) {
  const { a, b, c, M, N, K } = args;
  const transA = args.transA ?? false;
  const transB = args.transB ?? false;
  const batch = args.batch ?? 1;
  expectTensor("matmul", "a", a, "f32");
  expectTensor("matmul", "b", b, ["f32", "f16", "bf16"]);
  expectTensor("matmul", "c", c, "f32");
  const lda = args.lda ?? (transA ? M : K);
  const ldb = args.ldb ?? (transB ? K : N);
  const ldc = args.ldc ?? N;
  const strideA = args.strideA ?? M * K;
  const strideB = args.strideB ?? K * N;
  const strideC = args.strideC ?? M * N;
  const offA = args.offsetA ?? 0, offB = args.offsetB ?? 0, offC = args.offsetC ?? 0;
  for (const [name, v] of [["offsetA", offA], ["offsetB", offB], ["offsetC", offC]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`matmul: ${name} must be a non-negative integer, got ${v}`);
  }
  const need = (off: number, rows: number, cols: number, ld: number, stride: number) =>
    rows === 0 || cols === 0 ? 0 : off + (batch - 1) * stride + (rows - 1) * ld + cols;
  if (need(offA, transA ? K : M, transA ? M : K, lda, strideA) > a.numel) throw new Error(`matmul: a has ${a.numel} elements, too few for M=${M} K=${K}`);
  if (need(offB, transB ? N : K, transB ? K : N, ldb, strideB) > b.numel) throw new Error(`matmul: b has ${b.numel} elements, too few for K=${K} N=${N}`);
  if (need(offC, M, N, ldc, strideC) > c.numel) throw new Error(`matmul: c has ${c.numel} elements, too few for M=${M} N=${N}`);
  if (args.bias) expectTensor("matmul", "bias", args.bias, "f32", [N]);

  const rt = rec.rt;
  const splits = batch === 1 && kernel === "tiled" ? splitKFactor(M, N, K) : 1;
  if (splits > 1) return matmulSplitK(rec, { ...args, lda, ldb, ldc }, splits);
  const pipeline = rt.pipeline(matmulSource(kernel, b.dtype), {
    TRANS_A: transA ? 1 : 0,
    TRANS_B: transB ? 1 : 0,
    HAS_BIAS: args.bias ? 1 : 0,
  });
  const params = new Params(16)
    .u32(M).u32(N).u32(K).u32(lda)
    .u32(ldb).u32(ldc).u32(strideA).u32(strideB)
    .u32(strideC).f32(args.alpha ?? 1).f32(args.beta ?? 0).u32(offA)
    .u32(offB).u32(offC).u32(0).u32(0);
  // tiled: one workgroup per 64×64 tile; direct: 64 invocations per workgroup, one per 8×8 block.
  const grid: [number, number, number] = kernel === "tiled"
    ? [cdiv(N, 64), cdiv(M, 64), batch]
    : [...flatGrid(cdiv(N, 8) * cdiv(M, 8), 64), batch];
  rec.dispatch(`matmul ${M}x${N}x${K}${transA ? " tA" : ""}${transB ? " tB" : ""}`, pipeline, params.buffer,
    [a, b, args.bias ?? rt.placeholder, c], grid);
}

/** Workgroups that keep the H200's 132 SMs busy (two per SM); fewer tiles than this get split along K. */
const SPLIT_K_TARGET_GRID = 264;
const SPLIT_K_MIN_CHUNK = 64;

/**
 * How many K-chunks to split a (M, N, K) product into: 1 when its 64×64 tiles already fill the
 * GPU or K is short; else a divisor of K (chunks of at least 64) that brings the grid near
 * SPLIT_K_TARGET_GRID. Skinny LoRA products (r = 16 on one side, K = tokens) need it most.
 */
export function splitKFactor(M: number, N: number, K: number): number {
  const grid = cdiv(M, 64) * cdiv(N, 64);
  if (grid >= SPLIT_K_TARGET_GRID / 2 || K < 2 * SPLIT_K_MIN_CHUNK) return 1;
  const want = Math.min(Math.ceil(SPLIT_K_TARGET_GRID / grid), Math.floor(K / SPLIT_K_MIN_CHUNK));
  for (let d = 0; d <= want; d++) {
    for (const s of [want + d, want - d]) if (s >= 2 && s * SPLIT_K_MIN_CHUNK <= K && K % s === 0) return s;
  }
  return 1;
}

const splitKReduceSource: KernelSource = { name: "matmul_splitk_reduce", code: splitKWgsl };

/**
 * C = alpha·op(A)·op(B) (+ bias) + beta·C as `splits` independent K-chunk products (workgroup z
 * = chunk, written to a scratch (splits, M, N)), then one reduction pass that applies alpha,
 * bias and beta. Same result as matmul() up to f32 summation order.
 */
function matmulSplitK(rec: Recorder, args: MatmulArgs & { lda: number; ldb: number; ldc: number }, splits: number) {
  const { M, N, K, lda, ldb } = args;
  const transA = args.transA ?? false, transB = args.transB ?? false;
  const Kc = K / splits;
  const part = rec.scratch("f32", [splits, M, N], "splitk_partials");
  matmul(rec, {
    a: args.a, b: args.b, c: part, M, N, K: Kc, transA, transB, lda, ldb, ldc: N, batch: splits,
    offsetA: args.offsetA, offsetB: args.offsetB,
    // chunk z starts Kc rows down (K is the row index of a stored A (K, M) / B (K, N)) or Kc columns across
    strideA: transA ? Kc * lda : Kc, strideB: transB ? Kc : Kc * ldb, strideC: M * N,
  }, "tiled");
  splitKReduce(rec, part, args.c, { M, N, ldc: args.ldc, splits, alpha: args.alpha ?? 1, beta: args.beta ?? 0, offsetC: args.offsetC ?? 0, bias: args.bias });
  rec.recycle(part);
}

/**
 * C (M, N, row stride ldc, from element offsetC) = alpha·Σ_s part[s] (+ bias) + beta·C, where part
 * is the (splits, M, N) f32 scratch of a split-K product (this kernel or the tensor-core one).
 */
export function splitKReduce(
  rec: Recorder, part: Tensor, c: Tensor,
  o: { M: number; N: number; ldc: number; splits: number; alpha: number; beta: number; offsetC: number; bias?: Tensor; transposeC?: boolean },
) {
  const { M, N, ldc, splits } = o;
  const tC = o.transposeC ?? false; // C holds the (N, M) transpose, row stride ldc
  expectTensor("splitKReduce", "part", part, "f32");
  expectTensor("splitKReduce", "c", c, "f32");
  if (tC && o.bias) throw new Error("splitKReduce: a bias with a transposed C is not supported");
  if (part.numel < splits * M * N) throw new Error(`splitKReduce: part has ${part.numel} elements, too few for ${splits}·${M}·${N}`);
  const [rows, cols] = tC ? [N, M] : [M, N];
  if (o.offsetC + (rows - 1) * ldc + cols > c.numel) throw new Error(`splitKReduce: c has ${c.numel} elements, too few for ${tC ? "Cᵀ " : ""}M=${M} N=${N} ldc=${ldc}`);
  const params = new Params(8).u32(M).u32(N).u32(ldc).u32(splits).f32(o.alpha).f32(o.beta).u32(o.offsetC).u32(0);
  rec.dispatch(`matmul_splitk_reduce ${M}x${N}${tC ? "ᵀ" : ""} s=${splits}`, rec.rt.pipeline(splitKReduceSource, { HAS_BIAS: o.bias ? 1 : 0, TRANSPOSE_C: tC ? 1 : 0 }), params.buffer,
    [part, o.bias ?? rec.rt.placeholder, c], flatGrid(M * N));
}

/** c (M, N, row stride ldc) = bias broadcast to every row (the split-K reduction over zero partials). */
export function fillRowsWithBias(rec: Recorder, bias: Tensor, c: Tensor, M: number, N: number, ldc = N) {
  expectTensor("fillRowsWithBias", "bias", bias, "f32", [N]);
  expectTensor("fillRowsWithBias", "c", c, "f32");
  const params = new Params(8).u32(M).u32(N).u32(ldc).u32(0).f32(1).f32(0).u32(0).u32(0);
  rec.dispatch(`fillRowsWithBias ${M}x${N}`, rec.rt.pipeline(splitKReduceSource, { HAS_BIAS: 1 }), params.buffer,
    [rec.rt.placeholder, bias, c], flatGrid(M * N));
}

/** y (T, out) = x (T, in) · Wᵀ, W (out, in) in f32/f16/bf16, + bias (out). `beta = 1` adds into y. */
export function linearForward(rec: Recorder, x: Tensor, w: Tensor, y: Tensor, bias?: Tensor, beta = 0) {
  const [T, inF] = x.shape as [number, number];
  const [outF, inW] = w.shape as [number, number];
  if (inW !== inF) throw new Error(`linearForward: x has ${inF} features, W expects ${inW}`);
  matmul(rec, { a: x, b: w, c: y, bias, M: T, N: outF, K: inF, transB: true, beta });
}

/** dx (T, in) = dy (T, out) · W (out, in). `beta = 1` accumulates into dx (residual branches). */
export function linearBackwardInput(rec: Recorder, dy: Tensor, w: Tensor, dx: Tensor, beta = 0) {
  const [T, outF] = dy.shape as [number, number];
  const [outW, inF] = w.shape as [number, number];
  if (outW !== outF) throw new Error(`linearBackwardInput: dy has ${outF} features, W has ${outW} rows`);
  matmul(rec, { a: dy, b: w, c: dx, M: T, N: inF, K: outF, beta });
}

/** dW (out, in) = dyᵀ (out, T) · x (T, in), scaled by alpha; `beta = 1` accumulates. */
export function linearBackwardWeight(rec: Recorder, x: Tensor, dy: Tensor, dw: Tensor, alpha = 1, beta = 0) {
  const [T, inF] = x.shape as [number, number];
  const [T2, outF] = dy.shape as [number, number];
  if (T !== T2) throw new Error(`linearBackwardWeight: x has ${T} rows, dy has ${T2}`);
  matmul(rec, { a: dy, b: x, c: dw, M: outF, N: inF, K: T, transA: true, alpha, beta });
}
