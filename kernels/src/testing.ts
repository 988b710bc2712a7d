/**
 * Helpers for kernel tests: seeded random inputs (never zeros; host-data.ts), float64 references
 * and the relative-error metric every kernel is judged by: ‖out − ref‖ / ‖ref‖, NaN never passes.
 */

// Seeded inputs, f16/bf16 bits and relError live in host-data.ts (benchmarks use them too).
export { fromBf16Bits, fromF16Bits, randn, relError, rng, toBf16Bits, toF16Bits } from "./host-data.ts";

/** float64 C = op(A)·op(B): A (M,K) or (K,M) when transA; B (K,N) or (N,K) when transB. */
export function matmulRef(
  a: ArrayLike<number>, b: ArrayLike<number>, M: number, N: number, K: number,
  transA = false, transB = false,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        s += a[transA ? k * M + m : m * K + k]! * b[transB ? n * K + k : k * N + n]!;
      }
      c[m * N + n] = s;
    }
  }
  return c;
}

/** float64 RMSNorm of the rows of x (T, C): y = x·r∘w with r = 1/√(mean(x²) + eps) per row (rstd). */
export function rmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, T: number, C: number, eps: number) {
  const y = new Float64Array(T * C);
  const rstd = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c]! ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = r;
    for (let c = 0; c < C; c++) y[t * C + c] = x[t * C + c]! * r * w[c]!;
  }
  return { y, rstd };
}
