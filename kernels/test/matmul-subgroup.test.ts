import { describe, expect, test } from "bun:test";
import { type TcConfig, getRuntime, parseTcConfig, tcConfigName, hasTensorCoreMatmul, matmulAuto, matmulTensorCore, tensorCoreUnsupported } from "../src/index.ts";
import { fromF16Bits, matmulRef, randn, relError, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
const available = hasTensorCoreMatmul(rt);

// Runs where the adapter offers f16 subgroup matrices (the H200 with Dawn's NVIDIA toggles);
// lavapipe has none, so there this file only checks the portable fallback and the shape rules.
describe.skipIf(!available)("tensor-core matmul (subgroup matrices, f16 inputs)", () => {
  // Shapes that are multiples of 16 but not of the workgroup tile, so the clamped edge tiles run.
  const shapes: [number, number, number][] = [
    [16, 16, 16],
    [144, 80, 48],
    [272, 576, 64],
    [512, 1536, 576],
  ];
  const configs: TcConfig[] = [
    { tm: 4, tn: 4, sgm: 1, sgn: 1 },
    { tm: 4, tn: 2, sgm: 2, sgn: 2 },
    { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true },
    { tm: 2, tn: 4, sgm: 2, sgn: 2, staged: true },
    { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64 },
    { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, double: true },
    { tm: 4, tn: 4, sgm: 2, sgn: 1, staged: true, bk: 32, double: true },
    { tm: 4, tn: 4, sgm: 2, sgn: 1 },
    // Grouped rasters: groups taller than the grid (4 > 3 rows of tiles at M = 272) and a last
    // group shorter than the others (2 + 1 rows).
    { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, group: 4 },
    { tm: 2, tn: 4, sgm: 2, sgn: 2, staged: true, group: 2 },
  ];
  for (const cfg of configs) {
    for (const [M, N, K] of shapes) {
      for (const transB of [true, false]) {
        test(`${cfg.tm}x${cfg.tn}_${cfg.sgm}x${cfg.sgn}${cfg.staged ? ` staged k${cfg.bk ?? 32}${cfg.double ? " double" : ""}${cfg.group ? ` group ${cfg.group}` : ""}` : ""} M=${M} N=${N} K=${K} transB=${transB}, C = A·B and C += A·B`, async () => {
          const aBits = toF16Bits(randn(M * K)), bBits = toF16Bits(randn(K * N));
          const a = fromF16Bits(aBits), b = fromF16Bits(bBits);
          const c0 = randn(M * N);
          const ta = rt.upload("f16", [M, K], aBits), tb = rt.upload("f16", [K * N], bBits);
          const tc = rt.empty("f32", [M, N]), tacc = rt.upload("f32", [M, N], c0);
          const rec = rt.recorder();
          matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, cfg);
          matmulTensorCore(rec, { a: ta, b: tb, c: tacc, M, N, K, transB, beta: 1 }, cfg);
          rec.submit();
          const [out, acc] = [await rt.read(tc), await rt.read(tacc)];
          rec.release();
          const ref = matmulRef(a, b, M, N, K, false, transB);
          // f16 inputs are exact in f64 here, so only the f32 accumulation order differs.
          expect(relError(out, ref)).toBeLessThan(1e-5);
          expect(relError(acc, ref.map((v, i) => v + c0[i]!))).toBeLessThan(1e-5);
          rt.release(ta, tb, tc, tacc);
        });
      }
    }
  }

  test("batched along z with strides", async () => {
    const M = 32, N = 48, K = 64, batch = 3;
    const aBits = toF16Bits(randn(batch * M * K)), bBits = toF16Bits(randn(batch * N * K));
    const ta = rt.upload("f16", [batch * M * K], aBits), tb = rt.upload("f16", [batch * N * K], bBits), tc = rt.empty("f32", [batch * M * N]);
    const rec = rt.recorder();
    matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB: true, batch });
    rec.submit();
    const out = await rt.read(tc);
    rec.release();
    const a = fromF16Bits(aBits), b = fromF16Bits(bBits);
    for (let z = 0; z < batch; z++) {
      const ref = matmulRef(a.subarray(z * M * K, (z + 1) * M * K), b.subarray(z * N * K, (z + 1) * N * K), M, N, K, false, true);
      expect(relError(out.subarray(z * M * N, (z + 1) * M * N), ref)).toBeLessThan(1e-5);
    }
    rt.release(ta, tb, tc);
  });
});

test("tensorCoreUnsupported names what keeps operands off the tensor cores", () => {
  const t = (dtype: "f32" | "f16", shape: number[]) => ({ dtype, shape, numel: shape.reduce((x, y) => x * y, 1) }) as never;
  const base = { a: t("f32", [32, 32]), b: t("f16", [32, 32]), c: t("f32", [32, 32]), M: 32, N: 32, K: 32, transB: true };
  expect(tensorCoreUnsupported(base)).toBeNull();
  expect(tensorCoreUnsupported({ ...base, M: 33 })).toContain("multiple of 16");
  expect(tensorCoreUnsupported({ ...base, b: t("f32", [32, 32]) })).toContain("B is f32");
  expect(tensorCoreUnsupported({ ...base, alpha: 0.5 })).toContain("alpha");
  expect(tensorCoreUnsupported({ ...base, transA: true })).toContain("transposed A");
});

test("matmulAuto with a bias (tensor cores: C filled with the bias, then accumulated)", async () => {
  const M = 64, N = 48, K = 32;
  const a = randn(M * K), bBits = toF16Bits(randn(N * K)), bias = randn(N);
  const ta = rt.upload("f32", [M, K], a), tb = rt.upload("f16", [N, K], bBits), tbias = rt.upload("f32", [N], bias);
  const tc = rt.upload("f32", [M, N], randn(M * N)); // garbage that must be overwritten
  const rec = rt.recorder();
  matmulAuto(rec, { a: ta, b: tb, c: tc, bias: tbias, M, N, K, transB: true });
  rec.submit();
  const ref = matmulRef(a, fromF16Bits(bBits), M, N, K, false, true).map((v, i) => v + bias[i % N]!);
  expect(relError(await rt.read(tc), ref)).toBeLessThan(available ? 2e-3 : 1e-5);
  rec.release();
  rt.release(ta, tb, tbias, tc);
});

for (const [M, N, K] of [[33, 40, 24], [64, 48, 32]] as const) {
  test(`matmulAuto ${M}x${N}x${K} (f32 A, f16 B) is correct on this device, whichever path it takes`, async () => {
    const a = randn(M * K), bBits = toF16Bits(randn(N * K));
    const ta = rt.upload("f32", [M, K], a), tb = rt.upload("f16", [N, K], bBits), tc = rt.empty("f32", [M, N]);
    const rec = rt.recorder();
    matmulAuto(rec, { a: ta, b: tb, c: tc, M, N, K, transB: true });
    rec.submit();
    const err = relError(await rt.read(tc), matmulRef(a, fromF16Bits(bBits), M, N, K, false, true));
    // On tensor cores A is rounded to f16 (2^-11 relative per element).
    expect(err).toBeLessThan(available && M % 16 === 0 ? 2e-3 : 1e-5);
    rec.release();
    rt.release(ta, tb, tc);
  });
}

test("tile configuration names parse and print back", () => {
  for (const name of ["4x4_1x1", "4x4_1x1c", "4x4_2x4s", "4x4_2x2sk64d", "4x4_2x2sg8", "2x4_4x4sdg4", "4x4_2x4s-no-loads"]) {
    expect(tcConfigName(parseTcConfig(name))).toBe(name);
  }
  expect(parseTcConfig("4x4_2x2sg8")).toEqual({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 32, double: false, group: 8 });
  expect(() => parseTcConfig("4x4_2x2sg0")).toThrow("group");
  expect(() => parseTcConfig("4x4_2x2x")).toThrow("bad tensor-core config");
});
