/**
 * `bun run bench -- --kernels [--quick]`: one JSON line per op and shape,
 * {op, shape, dtype, ms, gflops | gbs, relErr}, relErr measured in the same run against a
 * float64 reference (sampled entries where the full reference is too expensive).
 */
import { type GpuRuntime, hasTensorCoreMatmul, matmul, matmulTensorCore } from "@tuneloom/kernels";
import { randn, toF16Bits, fromF16Bits } from "@tuneloom/kernels/testing.ts";
import { sampledRelError, timeGpu } from "./timing.ts";

export interface KernelBenchLine {
  op: string;
  shape: string;
  dtype: string;
  ms: number;
  gflops?: number;
  gbs?: number;
  relErr: number;
}

async function benchMatmul(rt: GpuRuntime, M: number, N: number, K: number, dtype: "f32" | "f16", tc: boolean, iters: number): Promise<KernelBenchLine> {
  const a = randn(M * K, 1, 11);
  const bF32 = randn(N * K, 1, 12);
  const bBits = dtype === "f16" ? toF16Bits(bF32) : null;
  const b = bBits ? fromF16Bits(bBits) : bF32;
  const ta = rt.upload("f32", [M, K], a);
  const tb = bBits ? rt.upload("f16", [N, K], bBits) : rt.upload("f32", [N, K], bF32);
  const tc_ = rt.empty("f32", [M, N]);
  const args = { a: ta, b: tb, c: tc_, M, N, K, transB: true };
  const ms = await timeGpu(rt, (rec) => (tc ? matmulTensorCore(rec, args) : matmul(rec, args)), iters);
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
    dtype: dtype === "f16" ? "f32 x f16 -> f32" : "f32",
    ms,
    gflops: (2 * M * N * K) / (ms * 1e6),
    relErr,
  };
}

export async function* kernelBenchmarks(rt: GpuRuntime, quick: boolean): AsyncGenerator<KernelBenchLine> {
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
