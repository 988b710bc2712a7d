/**
 * `bun run bench -- --kernels [--quick] [--ops a,b] [--model m1,m2]`: one JSON line per op and
 * shape, {op, shape, dtype, ms, gflops | gbs, relErr, model?}, relErr measured in the same run
 * against a float64 reference (sampled entries or a slice where the full reference is too
 * expensive). Every kernel of @tuneloom/kernels runs at the shapes of the published models
 * (BENCH_MODELS, 8×512 tokens), or at tiny shapes with --quick (seconds on lavapipe).
 * kernels-common.ts has the shared parts; each kernels-*.ts file measures one family of ops.
 */
import { type GpuRuntime, hasTensorCoreMatmul, matmul, matmulAuto } from "@tuneloom/kernels";
import { randn, toF16Bits, fromF16Bits } from "@tuneloom/kernels/host-data.ts";
import { benchAttention, benchAttentionDecode } from "./kernels-attention.ts";
import { type KernelBenchLine, type KernelShape, modelShape, quickShape } from "./kernels-common.ts";
import { benchCrossEntropy, benchSampling } from "./kernels-head.ts";
import { benchAdamw, benchGradNorm } from "./kernels-optimizer.ts";
import {
  SharedTables, benchConvert, benchDropout, benchEmbedding, benchResidualAdd, benchRmsnorm, benchRope, benchSwiglu,
} from "./kernels-pointwise.ts";
import { BENCH_MODELS } from "./model-shapes.ts";
import { sampledRelError, timeGpu } from "./timing.ts";

export { type KernelBenchLine, kernelTolerance } from "./kernels-common.ts";

async function benchMatmul(rt: GpuRuntime, M: number, N: number, K: number, dtype: "f32" | "f16", tc: boolean, iters: number): Promise<KernelBenchLine> {
  const a = randn(M * K, 1, 11);
  const bF32 = randn(N * K, 1, 12);
  const bBits = dtype === "f16" ? toF16Bits(bF32) : null;
  const b = bBits ? fromF16Bits(bBits) : bF32;
  const ta = rt.upload("f32", [M, K], a);
  const tb = bBits ? rt.upload("f16", [N, K], bBits) : rt.upload("f32", [N, K], bF32);
  const tc_ = rt.empty("f32", [M, N]);
  const args = { a: ta, b: tb, c: tc_, M, N, K, transB: true };
  const ms = await timeGpu(rt, (rec) => (tc ? matmulAuto(rec, args) : matmul(rec, args)), iters); // tc: A rounded to f16, then tensor cores
  const out = await rt.read(tc_);
  const relErr = sampledRelError(out, (i) => {
    const m = Math.floor(i / N), n = i % N;
    let s = 0;
    for (let k = 0; k < K; k++) s += a[m * K + k]! * b[n * K + k]!;
    return s;
  }, 512);
  rt.release(ta, tb, tc_);
  return {
    op: tc ? "matmul_tensorcore" : "matmul",
    shape: `${M}x${N}x${K}`,
    dtype: tc ? "f32 A (rounded to f16) x f16 -> f32, tensor cores" : dtype === "f16" ? "f32 x f16 -> f32" : "f32",
    ms,
    gflops: (2 * M * N * K) / (ms * 1e6),
    relErr,
  };
}

async function* matmulBenchmarks(rt: GpuRuntime, quick: boolean): AsyncGenerator<KernelBenchLine> {
  const soft = rt.caps.isSoftware;
  const big = soft ? 256 : quick ? 2048 : 4096;
  const iters = soft ? 2 : 10;
  // The linear-layer shapes of the three target models at 8×512 tokens, plus the square ceiling.
  const T = soft ? 64 : 4096;
  const shapes: [number, number, number][] = [[big, big, big], [T, 576, 576], [T, 1536, 576], [T, 896, 896], [T, 4864, 896], [T, 2048, 2048], [T, 8192, 2048]];
  for (const [M, N, K] of quick ? shapes.slice(0, 2) : shapes) {
    yield await benchMatmul(rt, M, N, K, "f32", false, iters);
    yield await benchMatmul(rt, M, N, K, "f16", false, iters);
    if (hasTensorCoreMatmul(rt)) yield await benchMatmul(rt, M, N, K, "f16", true, iters);
  }
}

type PerShape = (rt: GpuRuntime, s: KernelShape, tables: SharedTables) => AsyncGenerator<KernelBenchLine>;

/** The op families, in the order they run, as --ops names them. */
const PER_SHAPE: Record<string, PerShape> = {
  embedding: benchEmbedding,
  rmsnorm: benchRmsnorm,
  rope: benchRope,
  swiglu: benchSwiglu,
  residual_add: benchResidualAdd,
  attention: benchAttention,
  attention_decode: benchAttentionDecode,
  cross_entropy: benchCrossEntropy,
  adamw: benchAdamw,
  grad_norm: benchGradNorm,
  convert: benchConvert,
  dropout: benchDropout,
};
export const KERNEL_OPS = ["matmul", ...Object.keys(PER_SHAPE), "sampling"];

export interface KernelBenchOptions {
  /** Tiny shapes (seconds on lavapipe) instead of the models'. */
  quick: boolean;
  /** Op families to run (KERNEL_OPS names); default all. */
  ops?: string[];
  /** BENCH_MODELS names whose shapes to run (not with quick); default all. */
  models?: string[];
  /**
   * Called when an op family throws; the run goes on with the next one. Without it the
   * error propagates (tests want that).
   */
  onError?: (op: string, shape: string, err: unknown) => void;
}

export async function* kernelBenchmarks(rt: GpuRuntime, o: KernelBenchOptions): AsyncGenerator<KernelBenchLine> {
  const ops = o.ops ?? KERNEL_OPS;
  const unknown = ops.filter((op) => !KERNEL_OPS.includes(op));
  if (unknown.length) throw new Error(`unknown kernel op '${unknown[0]}' (known: ${KERNEL_OPS.join(", ")})`);
  if (o.quick && o.models) throw new Error("--quick runs its own tiny shapes; leave out --model (or --quick)");
  const shapes = o.quick ? [quickShape()] : (o.models ?? Object.keys(BENCH_MODELS)).map(modelShape);

  async function* guarded(op: string, shape: string, lines: AsyncGenerator<KernelBenchLine>): AsyncGenerator<KernelBenchLine> {
    try {
      yield* lines;
    } catch (err) {
      if (!o.onError) throw err;
      o.onError(op, shape, err);
    }
  }

  if (ops.includes("matmul")) yield* guarded("matmul", o.quick ? "quick" : "all", matmulBenchmarks(rt, o.quick));
  for (const s of shapes) {
    const tables = new SharedTables(rt, s);
    try {
      for (const [op, bench] of Object.entries(PER_SHAPE)) {
        if (ops.includes(op)) yield* guarded(op, s.name, bench(rt, s, tables));
      }
    } finally {
      tables.release();
      rt.trimPool();
    }
  }
  if (ops.includes("sampling")) yield* guarded("sampling", "vocab 151936", benchSampling(rt, o.quick ? [1, 2] : [1, 8]));
}
