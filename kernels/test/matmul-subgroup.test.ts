import { describe, expect, test } from "bun:test";
import { getRuntime, hasTensorCoreMatmul, matmulAuto, matmulTensorCore } from "../src/index.ts";
import { fromF16Bits, matmulRef, randn, relError, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
const available = hasTensorCoreMatmul(rt);

// Runs where the adapter offers f16 subgroup matrices (the H200 with Dawn's NVIDIA toggles);
// lavapipe has none, so there this file only checks that the portable fallback is taken.
describe.skipIf(!available)("tensor-core matmul (subgroup matrices, f16 inputs)", () => {
  const shapes: [number, number, number][] = [
    [16, 16, 16],
    [130, 72, 100],
    [257, 576, 64],
    [512, 1536, 576],
  ];
  for (const [M, N, K] of shapes) {
    for (const transB of [true, false]) {
      test(`M=${M} N=${N} K=${K} transB=${transB}`, async () => {
        const a = randn(M * K);
        const bBits = toF16Bits(randn(K * N));
        const b = fromF16Bits(bBits);
        const bias = randn(N);
        const ta = rt.upload("f32", [M, K], a), tb = rt.upload("f16", [K * N], bBits), tbias = rt.upload("f32", [N], bias);
        const c0 = randn(M * N);
        const tc = rt.upload("f32", [M, N], c0);
        const rec = rt.recorder();
        matmulTensorCore(rec, { a: ta, b: tb, c: tc, bias: tbias, M, N, K, transB, alpha: 0.5, beta: 1 });
        rec.submit();
        const out = await rt.read(tc);
        rec.release();
        const ref = matmulRef(a, b, M, N, K, false, transB);
        for (let i = 0; i < M * N; i++) ref[i] = 0.5 * ref[i]! + bias[i % N]! + c0[i]!;
        expect(relError(out, ref)).toBeLessThan(2e-3);
        rt.release(ta, tb, tbias, tc);
      });
    }
  }
});

test("matmulAuto picks a path that is correct on this device", async () => {
  const M = 33, N = 40, K = 24;
  const a = randn(M * K), bBits = toF16Bits(randn(N * K));
  const ta = rt.upload("f32", [M, K], a), tb = rt.upload("f16", [N, K], bBits), tc = rt.empty("f32", [M, N]);
  const rec = rt.recorder();
  matmulAuto(rec, { a: ta, b: tb, c: tc, M, N, K, transB: true });
  rec.submit();
  const err = relError(await rt.read(tc), matmulRef(a, fromF16Bits(bBits), M, N, K, false, true));
  expect(err).toBeLessThan(available ? 2e-3 : 1e-5);
  rec.release();
});
