import { afterAll, describe, expect, test } from "bun:test";
import { fillRowsWithBias, getRuntime, linearBackwardInput, linearBackwardWeight, linearForward, matmul, type MatmulKernel, splitKFactor, splitKReduce } from "../src/index.ts";
import { fromBf16Bits, fromF16Bits, matmulRef, randn, relError, toBf16Bits, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
/** Pipeline compilation on a cold cache, on a shared 2-core CPU with lavapipe. */
const COLD_PIPELINES_TIMEOUT_MS = 120_000;
afterAll(() => rt.trimPool());

// Shapes that are not multiples of the 64×64×16 tile, plus one tiny and one tall-skinny.
const shapes: [number, number, number][] = [
  [1, 1, 1],
  [7, 13, 5],
  [65, 33, 17],
  [129, 70, 100],
  [3, 200, 96],
];

// Both portable forms run here whatever the device picks by default (tiled on GPUs, direct on CPU drivers).
const KERNELS: MatmulKernel[] = ["tiled", "direct"];

describe.each(KERNELS)("matmul f32 against float64 (%s)", (kernel) => {
  for (const [M, N, K] of shapes) {
    for (const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]] as const) {
      test(`M=${M} N=${N} K=${K} transA=${transA} transB=${transB}`, async () => {
        const a = randn(M * K);
        const b = randn(K * N);
        const ta = rt.upload("f32", [M * K], a);
        const tb = rt.upload("f32", [K * N], b);
        const tc = rt.empty("f32", [M * N]);
        const rec = rt.recorder();
        matmul(rec, { a: ta, b: tb, c: tc, M, N, K, transA, transB }, kernel);
        rec.submit();
        const out = await rt.read(tc);
        rec.release();
        rt.release(ta, tb, tc);
        expect(relError(out, matmulRef(a, b, M, N, K, transA, transB))).toBeLessThan(1e-5);
      });
    }
  }
});

describe("linear-layer forms", () => {
  const T = 37, inF = 72, outF = 50;
  test("y = x·Wᵀ + bias, dx = dy·W, dW = dyᵀ·x and xᵀ·dy", async () => {
    const x = randn(T * inF), w = randn(outF * inF), dy = randn(T * outF), bias = randn(outF);
    const tx = rt.upload("f32", [T, inF], x), tw = rt.upload("f32", [outF, inF], w);
    const tdy = rt.upload("f32", [T, outF], dy), tbias = rt.upload("f32", [outF], bias);
    const ty = rt.empty("f32", [T, outF]), tdx = rt.empty("f32", [T, inF]);
    const tdw = rt.empty("f32", [outF, inF]), txtdy = rt.empty("f32", [inF, outF]);
    const rec = rt.recorder();
    linearForward(rec, tx, tw, ty, tbias);
    linearBackwardInput(rec, tdy, tw, tdx);
    linearBackwardWeight(rec, tx, tdy, tdw);
    matmul(rec, { a: tx, b: tdy, c: txtdy, M: inF, N: outF, K: T, transA: true }); // xᵀ·dy
    rec.submit();
    const yRef = matmulRef(x, w, T, outF, inF, false, true);
    for (let t = 0; t < T; t++) for (let o = 0; o < outF; o++) yRef[t * outF + o]! += bias[o]!;
    expect(relError(await rt.read(ty), yRef)).toBeLessThan(1e-5);
    expect(relError(await rt.read(tdx), matmulRef(dy, w, T, inF, outF))).toBeLessThan(1e-5);
    expect(relError(await rt.read(tdw), matmulRef(dy, x, outF, inF, T, true, false))).toBeLessThan(1e-5);
    expect(relError(await rt.read(txtdy), matmulRef(x, dy, inF, outF, T, true, false))).toBeLessThan(1e-5);
    rec.release();
  });

  test("beta = 1 accumulates into the output (gradient accumulation)", async () => {
    const x = randn(T * inF), dy1 = randn(T * outF), dy2 = randn(T * outF);
    const tx = rt.upload("f32", [T, inF], x);
    const t1 = rt.upload("f32", [T, outF], dy1), t2 = rt.upload("f32", [T, outF], dy2);
    const tdw = rt.empty("f32", [outF, inF]);
    const rec = rt.recorder();
    linearBackwardWeight(rec, tx, t1, tdw, 0.5, 0);
    linearBackwardWeight(rec, tx, t2, tdw, 0.5, 1);
    rec.submit();
    const r1 = matmulRef(dy1, x, outF, inF, T, true), r2 = matmulRef(dy2, x, outF, inF, T, true);
    const ref = r1.map((v, i) => 0.5 * (v + r2[i]!));
    expect(relError(await rt.read(tdw), ref)).toBeLessThan(1e-5);
    rec.release();
  });

  // Each case compiles two pipelines of its own; on a cold shader cache and a 2-core software
  // driver that alone takes longer than bun's 5 s default, so the timeout is sized for that.
  for (const [dtype, kernel] of [["f16", "tiled"], ["bf16", "tiled"], ["f16", "direct"], ["bf16", "direct"]] as const) {
    test(`16-bit weights (${dtype}, ${kernel}): forward and input gradient`, { timeout: COLD_PIPELINES_TIMEOUT_MS }, async () => {
      const x = randn(T * inF), dy = randn(T * outF);
      const bits = dtype === "f16" ? toF16Bits(randn(outF * inF)) : toBf16Bits(randn(outF * inF));
      const w = dtype === "f16" ? fromF16Bits(bits) : fromBf16Bits(bits); // the exact values stored
      const tw = rt.upload(dtype, [outF, inF], bits);
      const tx = rt.upload("f32", [T, inF], x), tdy = rt.upload("f32", [T, outF], dy);
      const ty = rt.empty("f32", [T, outF]), tdx = rt.empty("f32", [T, inF]);
      const rec = rt.recorder();
      matmul(rec, { a: tx, b: tw, c: ty, M: T, N: outF, K: inF, transB: true }, kernel); // y = x·Wᵀ
      matmul(rec, { a: tdy, b: tw, c: tdx, M: T, N: inF, K: outF }, kernel); // dx = dy·W
      rec.submit();
      expect(relError(await rt.read(ty), matmulRef(x, w, T, outF, inF, false, true))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdx), matmulRef(dy, w, T, inF, outF))).toBeLessThan(1e-5);
      rec.release();
    });
  }

  test("shape mismatches are errors that name the kernel", () => {
    const tx = rt.empty("f32", [4, 8]), tw = rt.empty("f32", [3, 9]), ty = rt.empty("f32", [4, 3]);
    const rec = rt.recorder();
    expect(() => linearForward(rec, tx, tw, ty)).toThrow(/linearForward: x has 8 features, W expects 9/);
    expect(() => matmul(rec, { a: tx, b: tw, c: ty, M: 40, N: 3, K: 8 })).toThrow(/matmul: a has 32 elements/);
  });
});

describe("split-K (skinny products with a long K)", () => {
  test("splitKFactor splits only small grids with long K, into divisors of K", () => {
    expect(splitKFactor(4096, 4096, 4096)).toBe(1); // plenty of tiles
    expect(splitKFactor(16, 576, 100)).toBe(1); // K too short
    for (const [M, N, K] of [[16, 576, 4096], [576, 16, 4096], [4096, 16, 576], [16, 1536, 4096]] as const) {
      const s = splitKFactor(M, N, K);
      expect(s).toBeGreaterThan(1);
      expect(K % s).toBe(0);
      expect(K / s).toBeGreaterThanOrEqual(64);
    }
  });

  // The LoRA shapes: dA = dhᵀ·x (transA, M = r), dB = dyᵀ·h (transA, N = r), h = x·Aᵀ (transB, N = r),
  // with alpha, beta = 1 over a random C and a bias, against float64.
  const cases: [string, number, number, number, boolean, boolean][] = [
    ["dA-like", 16, 96, 2048, true, false],
    ["dB-like", 96, 16, 2048, true, false],
    ["h-like", 256, 16, 576, false, true],
    ["odd", 20, 40, 1152, false, false],
  ];
  for (const [name, M, N, K, transA, transB] of cases) for (const kernel of KERNELS) {
    test(`${name} M=${M} N=${N} K=${K} (${kernel}${kernel === "tiled" ? `, splits ${splitKFactor(M, N, K)}` : ""})`, async () => {
      expect(splitKFactor(M, N, K)).toBeGreaterThan(1);
      const a = randn(M * K), b = randn(K * N), bias = randn(N), c0 = randn(M * N);
      const ta = rt.upload("f32", [M * K], a), tb = rt.upload("f32", [K * N], b), tbias = rt.upload("f32", [N], bias);
      const tc = rt.upload("f32", [M, N], c0);
      const rec = rt.recorder();
      matmul(rec, { a: ta, b: tb, c: tc, bias: tbias, M, N, K, transA, transB, alpha: 0.75, beta: 1 }, kernel);
      rec.submit();
      const out = await rt.read(tc);
      rec.release();
      const ref = matmulRef(a, b, M, N, K, transA, transB);
      for (let i = 0; i < M * N; i++) ref[i] = 0.75 * ref[i]! + bias[i % N]! + c0[i]!;
      expect(relError(out, ref)).toBeLessThan(1e-5);
      rt.release(ta, tb, tbias, tc);
    });
  }
});

test("fillRowsWithBias writes the bias into every row, respecting ldc", async () => {
  const M = 5, N = 7, ldc = 9;
  const bias = randn(N), c0 = randn(M * ldc);
  const tbias = rt.upload("f32", [N], bias), tc = rt.upload("f32", [M * ldc], c0);
  const rec = rt.recorder();
  fillRowsWithBias(rec, tbias, tc, M, N, ldc);
  rec.submit();
  const out = await rt.read(tc);
  rec.release();
  for (let m = 0; m < M; m++) for (let n = 0; n < ldc; n++) expect(out[m * ldc + n]).toBe(n < N ? bias[n]! : c0[m * ldc + n]!);
  rt.release(tbias, tc);
});

describe("element offsets: operands that are column blocks of wider matrices", () => {
  // op(A), op(B) and C each live at a column offset of a wider row-major matrix (ld = its width),
  // as LoRA's per-module slices of a fused (T, n·r) activation do. Offsets are not 256-byte
  // aligned, so binding offsets could not express them. C's other columns must stay untouched.
  const cases: [string, number, number, number, boolean, boolean][] = [
    ["plain", 37, 21, 45, false, true],
    ["transA", 30, 16, 70, true, false],
    ["split-K dB-like", 96, 16, 2048, true, false],
    ["split-K dh-like", 256, 16, 576, false, false],
  ];
  for (const [name, M, N, K, transA, transB] of cases) for (const kernel of KERNELS) {
    test(`${name} M=${M} N=${N} K=${K} (${kernel}${kernel === "tiled" ? `, splits ${splitKFactor(M, N, K)}` : ""})`, async () => {
      const [aRows, aCols] = transA ? [K, M] : [M, K];
      const [bRows, bCols] = transB ? [N, K] : [K, N];
      const pad = (cols: number, extra: number) => cols + extra; // width of the wider matrix
      const lda = pad(aCols, 5), ldb = pad(bCols, 3), ldc = pad(N, 7);
      const offA = 3, offB = 2, offC = 5; // column offsets (elements) inside each wider row
      const aW = randn(aRows * lda), bW = randn(bRows * ldb), cW = randn(M * ldc);
      const block = (w: Float32Array, rows: number, cols: number, ld: number, off: number) =>
        Float32Array.from({ length: rows * cols }, (_, i) => w[Math.floor(i / cols) * ld + off + (i % cols)]!);
      const a = block(aW, aRows, aCols, lda, offA), b = block(bW, bRows, bCols, ldb, offB);
      const ta = rt.upload("f32", [aRows * lda], aW), tb = rt.upload("f32", [bRows * ldb], bW), tc = rt.upload("f32", [M * ldc], cW);
      const rec = rt.recorder();
      matmul(rec, { a: ta, b: tb, c: tc, M, N, K, transA, transB, lda, ldb, ldc, offsetA: offA, offsetB: offB, offsetC: offC, alpha: 0.5, beta: 1 }, kernel);
      rec.submit();
      const out = await rt.read(tc);
      rec.release();
      const prod = matmulRef(a, b, M, N, K, transA, transB);
      const got = new Float64Array(M * N), ref = new Float64Array(M * N);
      for (let m = 0; m < M; m++) {
        for (let j = 0; j < ldc; j++) {
          const i = m * ldc + j;
          if (j >= offC && j < offC + N) {
            got[m * N + j - offC] = out[i]!;
            ref[m * N + j - offC] = 0.5 * prod[m * N + j - offC]! + cW[i]!;
          } else expect(out[i]).toBe(cW[i]!);
        }
      }
      expect(relError(got, ref)).toBeLessThan(1e-5);
      rt.release(ta, tb, tc);
    });
  }

  // 16-bit B at an element offset (a slot's block of a LoRA stack, lora.ts segmentedLoraForward):
  // even and odd offsets into the packed words, with lda/ldb wider than the block.
  for (const dtype of ["f16", "bf16"] as const) for (const offB of [2, 3]) for (const kernel of KERNELS) {
    test(`${dtype} B at element offset ${offB}, transB, alpha and beta (${kernel})`, async () => {
      const M = 21, N = 40, K = 8, ldb = 16, lda = 24, offA = 7;
      const aW = randn(M * lda), bBits = dtype === "f16" ? toF16Bits(randn(offB + N * ldb)) : toBf16Bits(randn(offB + N * ldb));
      const bVals = dtype === "f16" ? fromF16Bits(bBits) : fromBf16Bits(bBits);
      const c0 = randn(M * N);
      const a = Float32Array.from({ length: M * K }, (_, i) => aW[Math.floor(i / K) * lda + offA + (i % K)]!);
      const b = Float32Array.from({ length: N * K }, (_, i) => bVals[offB + Math.floor(i / K) * ldb + (i % K)]!);
      const ta = rt.upload("f32", [M * lda], aW), tb = rt.upload(dtype, [bBits.length], bBits), tc = rt.upload("f32", [M, N], c0);
      const rec = rt.recorder();
      matmul(rec, { a: ta, b: tb, c: tc, M, N, K, transB: true, lda, ldb, offsetA: offA, offsetB: offB, alpha: 0.25, beta: 1 }, kernel);
      rec.submit();
      const out = await rt.read(tc);
      rec.release();
      const ref = matmulRef(a, b, M, N, K, false, true).map((v, i) => 0.25 * v + c0[i]!);
      expect(relError(out, ref)).toBeLessThan(1e-5);
      rt.release(ta, tb, tc);
    });
  }

  test("an offset past the end of an operand is refused", () => {
    const t = rt.empty("f32", [64]);
    const rec = rt.recorder();
    expect(() => matmul(rec, { a: t, b: t, c: t, M: 4, N: 4, K: 4, offsetA: 50 })).toThrow(/a has 64 elements/);
    expect(() => matmul(rec, { a: t, b: t, c: t, M: 4, N: 4, K: 4, offsetC: -1 })).toThrow(/offsetC must be a non-negative integer/);
    rec.release();
    rt.release(t);
  });
});

describe.each(KERNELS)("batched along z with strides (%s)", (kernel) => {
  test("three independent problems, each at its own stride, transA and transB", async () => {
    const M = 13, N = 11, K = 9, batch = 3;
    const strideA = M * K + 5, strideB = K * N + 3, strideC = M * N + 7;
    const aAll = randn(batch * strideA), bAll = randn(batch * strideB), c0 = randn(batch * strideC);
    const ta = rt.upload("f32", [aAll.length], aAll), tb = rt.upload("f32", [bAll.length], bAll), tc = rt.upload("f32", [c0.length], c0);
    const rec = rt.recorder();
    matmul(rec, { a: ta, b: tb, c: tc, M, N, K, transA: true, transB: true, batch, strideA, strideB, strideC, beta: 1 }, kernel);
    rec.submit();
    const out = await rt.read(tc);
    rec.release();
    for (let z = 0; z < batch; z++) {
      const ref = matmulRef(aAll.subarray(z * strideA, z * strideA + M * K), bAll.subarray(z * strideB, z * strideB + K * N), M, N, K, true, true);
      const got = out.subarray(z * strideC, z * strideC + M * N);
      for (let i = 0; i < M * N; i++) ref[i] = ref[i]! + c0[z * strideC + i]!;
      expect(relError(got, ref)).toBeLessThan(1e-5);
      // The gap between problems is untouched.
      for (let i = M * N; i < strideC; i++) expect(out[z * strideC + i]).toBe(c0[z * strideC + i]!);
    }
    rt.release(ta, tb, tc);
  });
});

// The split-K reduction into a transposed C (LoRA's dBᵀ = hᵀ·dy reduced into dB (out, r)).
describe("splitKReduce into a transposed C", () => {
  // S = 3 (the remainder loop alone), 4 (one round of four), 7 and 16 (rounds and a remainder).
  test.each([3, 4, 7, 16])("C (N, M) stride ldc at an offset += alpha · Σ partials (S = %i, M, N), other elements untouched", async (S) => {
    const rt = await getRuntime();
    const M = 5, N = 7, ldc = 9, offC = 4, alpha = 0.5;
    const part = randn(S * M * N), c0 = randn(offC + N * ldc);
    const tp = rt.upload("f32", [S * M * N], part), tc = rt.upload("f32", [offC + N * ldc], c0);
    const rec = rt.recorder("splitk transposed");
    splitKReduce(rec, tp, tc, { M, N, ldc, splits: S, alpha, beta: 1, offsetC: offC, transposeC: true });
    rec.submit();
    const out = await rt.read(tc);
    rec.release();
    const want = Float64Array.from(c0);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      let s = 0;
      for (let z = 0; z < S; z++) s += part[z * M * N + m * N + n]!;
      want[offC + n * ldc + m]! += alpha * s;
    }
    expect(relError(out, want)).toBeLessThan(1e-6);
    for (let n = 0; n < N; n++) for (let m = M; m < ldc && offC + n * ldc + m < out.length; m++) expect(out[offC + n * ldc + m]).toBe(c0[offC + n * ldc + m]!);
    expect(() => splitKReduce(rec, tp, tc, { M, N: N + 1, ldc, splits: S, alpha, beta: 1, offsetC: offC, transposeC: true })).toThrow("splitKReduce");
    rt.release(tp, tc);
  });
});
