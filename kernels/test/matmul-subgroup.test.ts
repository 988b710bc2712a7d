import { describe, expect, test } from "bun:test";
import { type TcConfig, constStrideStaging, getRuntime, guardFreeLoads, noPrefetchStaging, parseTcConfig, stagedForm, unrolledCopyFits, unrolledStaging, shortTcPlan, tcConfigName, hasTensorCoreMatmul, matmulAuto, matmulTensorCore, matmulTensorCoreThin, tensorCoreUnsupported, thinTcPlan, splitKPlan, tcConfigFor, linearBackwardWeightTensorCore, weightGradTensorCores } from "../src/index.ts";
import { fromF16Bits, matmulRef, randn, relError, toF16Bits } from "../src/testing.ts";
import { fitWorkgroupStorage, stagedSource, stagedWorkgroupBytes } from "../src/matmul-tc-staged.ts";

const rt = await getRuntime();
const available = hasTensorCoreMatmul(rt);
// Subgroup matrices emulated on lavapipe (TUNELOOM_EMULATE_TC=1, `bun run test:tc`): every pipeline
// takes seconds to build there, so the tensor-core blocks run a smaller set of tiles and shapes.
const emulated = rt.caps.subgroupMatrixEmulated;
const fitsDevice = (cfg: TcConfig) => [true, false].every((tB) => stagedWorkgroupBytes(tB, cfg) <= rt.caps.limits.maxComputeWorkgroupStorageSize);

// Runs where the adapter offers f16 subgroup matrices (the H100/H200 with Dawn's NVIDIA toggles) or
// emulates them; elsewhere this file only checks the portable fallback and the shape rules.
describe.skipIf(!available)("tensor-core matmul (subgroup matrices, f16 inputs)", () => {
  // Shapes that are multiples of 16 but not of the workgroup tile, so the clamped edge tiles run;
  // emulated: K = 320 for a K loop of many slices at a CPU's speed.
  const shapes: [number, number, number][] = emulated ? [[16, 16, 16], [144, 80, 48], [272, 400, 320]] : [
    [16, 16, 16],
    [144, 80, 48],
    [272, 576, 64],
    [512, 1536, 576],
  ];
  // Emulated: the forms the table and plans pick (global, plain staged, unrolled with 32- and
  // 64-deep slices) and the two-deep prefetch with guard-free loads and constant strides, in tiles that fit lavapipe's
  // 32 KiB of workgroup memory (the 64-deep picks' geometry in a 64×128 tile).
  const emulatedConfigs = ["4x4_1x1", "4x4_2x2s", "4x4_2x2sg8u", "2x2_2x4sk64g8u", "4x4_2x2sg8ulfc"].map(parseTcConfig);
  const configs: TcConfig[] = emulated ? emulatedConfigs : [
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
    { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 16, group: 8 },
    // The table's most frequent pick (K slice 64 past K = 16 and 48), double buffering with
    // 2×4 matrices, 8 subgroups over 128×256, and the 16-row tiles of LoRA's dA/dB (shortTcPlan).
    { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, group: 8 },
    { tm: 2, tn: 4, sgm: 2, sgn: 2, staged: true, double: true },
    { tm: 4, tn: 4, sgm: 2, sgn: 4, staged: true },
    { tm: 1, tn: 4, sgm: 1, sgn: 4, staged: true, bk: 64 },
    // The unrolled copy (session 8): the table's forms, 8 subgroups over 128×256 and 256×128,
    // 8 subgroups of 2×4 matrices, double buffering, and 16-row tiles whose copy leaves threads idle.
    ...["4x4_2x2sk64g8u", "4x4_2x2sg8u", "4x4_2x2sk16u", "4x4_2x4sk16g8u", "4x4_4x2sg8u", "2x4_4x2sk64g8u", "4x2_2x4sk64g8u", "4x4_2x2sdg8u", "1x4_1x4sk16u", "1x4_1x4sk64u", "2x4_4x1sk64u",
      // the two-deep prefetch (session 11): the two picks' tiles and 16-deep slices
      "4x4_2x2sg8ul", "4x2_2x4sk64g8ul", "2x4_4x2sk16g8ul",
      // guard-free loads in interior tiles (session 17): the two picks' tiles, with the two-deep prefetch
      "4x2_2x4sk64g8uf", "4x4_2x2sg8uf", "4x4_2x2sg8ulf",
      // a 64×128 tile of 4 warps for narrow products (N = 512: twice the workgroups of 128×128; session 17)
      "4x2_1x4sk64g8u",
      // K, lda and ldb as override constants (session 17), with and without guard-free loads
      "4x2_2x4sk64g8uc", "4x2_2x4sk64g8ufc", "4x4_2x2sg8uc",
      // no register prefetch (session 17): the picks' tiles
      "4x2_2x4sk64g8un", "4x4_2x2sg8un", "4x4_2x2sg8unfc"].map(parseTcConfig),
  ];
  for (const cfg of configs) {
    if (emulated && !fitsDevice(cfg)) throw new Error(`${tcConfigName(cfg)} does not fit this device's workgroup memory: take it out of the emulated list`);
    for (const [M, N, K] of shapes) {
      for (const transB of [true, false]) {
        // Emulated: C += A·B (a second pipeline, seconds to build) in the x·Wᵀ form only.
        const accumulate = !emulated || transB;
        test(`${tcConfigName(cfg)} M=${M} N=${N} K=${K} transB=${transB}, C = A·B${accumulate ? " and C += A·B" : ""}`, async () => {
          const aBits = toF16Bits(randn(M * K)), bBits = toF16Bits(randn(K * N));
          const a = fromF16Bits(aBits), b = fromF16Bits(bBits);
          const c0 = randn(M * N);
          const ta = rt.upload("f16", [M, K], aBits), tb = rt.upload("f16", [K * N], bBits);
          const tc = rt.empty("f32", [M, N]), tacc = rt.upload("f32", [M, N], c0);
          const rec = rt.recorder();
          matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, cfg);
          if (accumulate) matmulTensorCore(rec, { a: ta, b: tb, c: tacc, M, N, K, transB, beta: 1 }, cfg);
          rec.submit();
          const [out, acc] = [await rt.read(tc), await rt.read(tacc)];
          rec.release();
          const ref = matmulRef(a, b, M, N, K, false, transB);
          // f16 inputs are exact in f64 here, so only the f32 accumulation order differs.
          expect(relError(out, ref)).toBeLessThan(1e-5);
          if (accumulate) expect(relError(acc, ref.map((v, i) => v + c0[i]!))).toBeLessThan(1e-5);
          rt.release(ta, tb, tc, tacc);
        });
      }
    }
  }

  // The aux slice: C (+)= A·op(B) + A2·op(B2), A2 a column block (offset, row stride) of a wider
  // matrix as LoRA's h is; on both kernels, both forms, written and accumulated.
  // (the last: session 17's forms together, constant strides beside the aux slice's own strides)
  const auxConfigs: TcConfig[] = emulated ? [parseTcConfig("4x4_2x2sg8u")] : [{ tm: 4, tn: 4, sgm: 1, sgn: 1 }, { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, group: 4 }, { tm: 2, tn: 4, sgm: 2, sgn: 2, staged: true }, parseTcConfig("4x4_2x2sk64g8u"), parseTcConfig("2x4_4x2sk64g8u"), parseTcConfig("4x2_2x4sk64g8unfc")];
  for (const cfg of auxConfigs) {
    for (const transB of [true, false]) {
      test(`aux slice ${tcConfigName(cfg)} transB=${transB}: C (+)= A·op(B) + A2·op(B2)`, async () => {
        const M = 272, N = 144, K = 96, K2 = 32, lda2 = 80, offA2 = 16;
        const aBits = toF16Bits(randn(M * K)), bBits = toF16Bits(randn(K * N));
        const a2Bits = toF16Bits(randn(M * lda2)), b2Bits = toF16Bits(randn(K2 * N));
        const [a, b, a2full, b2] = [aBits, bBits, a2Bits, b2Bits].map(fromF16Bits) as Float32Array[];
        const a2 = new Float32Array(M * K2);
        for (let m = 0; m < M; m++) for (let k = 0; k < K2; k++) a2[m * K2 + k] = a2full![offA2 + m * lda2 + k]!;
        const c0 = randn(M * N);
        const ta = rt.upload("f16", [M, K], aBits), tb = rt.upload("f16", [K * N], bBits);
        const ta2 = rt.upload("f16", [M * lda2], a2Bits), tb2 = rt.upload("f16", [K2 * N], b2Bits);
        const tc = rt.empty("f32", [M, N]), tacc = rt.upload("f32", [M, N], c0);
        const rec = rt.recorder();
        const aux = { a2: ta2, b2: tb2, K2, lda2, offsetA2: offA2 };
        matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, cfg, aux);
        matmulTensorCore(rec, { a: ta, b: tb, c: tacc, M, N, K, transB, beta: 1 }, cfg, aux);
        rec.submit();
        const [out, acc] = [await rt.read(tc), await rt.read(tacc)];
        rec.release();
        const ref = matmulRef(a!, b!, M, N, K, false, transB), ref2 = matmulRef(a2, b2!, M, N, K2, false, transB);
        const sum = ref.map((v, i) => v + ref2[i]!);
        expect(relError(out, sum)).toBeLessThan(1e-5);
        expect(relError(acc, sum.map((v, i) => v + c0[i]!))).toBeLessThan(1e-5);
        rt.release(ta, tb, ta2, tb2, tc, tacc);
      });
    }
  }

  // Thin products (LoRA's h = x·Aᵀ and dh = dy·B): split along K, reduced with alpha and beta
  // into a column block (offset, ldc) of a wider C, operands starting at element offsets.
  for (const [M, N, K] of (emulated ? [[272, 16, 8192], [512, 32, 576]] : [[4096, 48, 2048], [272, 16, 8192], [512, 32, 576]]) as [number, number, number][]) {
    for (const transB of [true, false]) {
      test(`thin split-K M=${M} N=${N} K=${K} transB=${transB}, alpha, beta, offsets`, async () => {
        const offA = 8, offB = 16, ldc = N + 32, offC = 16, alpha = 0.75;
        const aBits = toF16Bits(randn(offA + M * K)), bBits = toF16Bits(randn(offB + K * N));
        const a = fromF16Bits(aBits).subarray(offA), b = fromF16Bits(bBits).subarray(offB);
        const c0 = randn(M * ldc);
        const ta = rt.upload("f16", [offA + M * K], aBits), tb = rt.upload("f16", [offB + K * N], bBits);
        const tc = rt.upload("f32", [M * ldc], c0);
        const rec = rt.recorder();
        matmulTensorCoreThin(rec, { a: ta, b: tb, c: tc, M, N, K, transB, offsetA: offA, offsetB: offB, ldc, offsetC: offC, alpha, beta: 1 });
        rec.submit();
        const out = await rt.read(tc);
        rec.release();
        const ref = matmulRef(a, b, M, N, K, false, transB);
        const got = new Float32Array(M * N), want = new Float64Array(M * N);
        for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
          got[m * N + n] = out[offC + m * ldc + n]!;
          want[m * N + n] = alpha * ref[m * N + n]! + c0[offC + m * ldc + n]!;
        }
        expect(relError(got, want)).toBeLessThan(1e-5);
        // Columns outside the block are untouched.
        for (let m = 0; m < M; m += 97) expect(out[m * ldc]).toBe(c0[m * ldc]!);
        rt.release(ta, tb, tc);
      });
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
  expect(tensorCoreUnsupported({ ...base, offsetA: 4 })).toContain("offsets");
  expect(tensorCoreUnsupported({ ...base, offsetA: 8, offsetC: 4 })).toBeNull();
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
  for (const name of ["4x4_1x1", "4x4_1x1c", "4x4_2x4s", "4x4_2x2sk64d", "4x4_2x2sg8", "4x4_2x2sk16g8", "2x4_4x4sdg4", "4x4_2x4s-no-loads", "4x4_2x2sk64g8", "4x4_2x2s-no-stores", "4x4_2x2sk64g8u", "4x4_2x2sdu-no-loads", "4x2_2x4sk64g8u", "2x4_4x2sk64g8u-no-barriers", "4x4_2x2sg8ul", "4x2_2x4sk64g8ul", "4x2_2x4sk64g8uf", "4x4_2x2sg8ulf", "4x2_2x4sk64g8ufc", "4x4_2x2sg8uc", "4x4_2x2sk64g8c", "4x2_2x4sk64g8un", "4x4_2x2sg8unfc"]) {
    expect(tcConfigName(parseTcConfig(name))).toBe(name);
  }
  expect(parseTcConfig("4x4_2x2sk64g8")).toEqual({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, double: false, group: 8 });
  expect(parseTcConfig("4x4_2x2sk64g8u")).toEqual({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, double: false, group: 8, unrolled: true });
  expect(parseTcConfig("4x2_2x4sdg8u")).toEqual({ tm: 4, tn: 2, sgm: 2, sgn: 4, staged: true, bk: 32, double: true, group: 8, unrolled: true });
  expect(parseTcConfig("4x4_2x2sg8ul")).toEqual({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 32, double: false, group: 8, unrolled: true, prefetch2: true });
  for (const bad of ["4x4_2x2sg8l", "4x4_2x2sdg8ul", "4x4_2x2sg8ul-no-loads"]) expect(() => parseTcConfig(bad)).toThrow("two-deep prefetch (l)");
  for (const bad of ["4x4_2x2sg8f", "4x4_2x2sdg8f"]) expect(() => parseTcConfig(bad)).toThrow("guard-free loads (f)");
  expect(() => parseTcConfig("4x4_2x2sg8uc-no-loads")).toThrow("constant strides (c) do not combine with diags");
  for (const bad of ["4x4_2x2sg8n", "4x4_2x2sg8uln", "4x4_2x2sdg8un", "4x4_2x2sg8un-no-loads"]) expect(() => parseTcConfig(bad)).toThrow("no prefetch (n)");
  expect(parseTcConfig("4x4_2x2sg8uc").constStrides).toBe(true);
  expect(parseTcConfig("4x4_1x1c")).toEqual({ tm: 4, tn: 4, sgm: 1, sgn: 1, staged: false, constStrides: true });
  expect(parseTcConfig("4x4_2x2sg8")).toEqual({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 32, double: false, group: 8 });
  // Session 7's losing variants (rotated stores r, matrix-copy staging m, global prefetch p) and
  // session 10-11's (conflict-free stores w, interleaved pipeline i, W staged transposed t) and session
  // 13's B from global memory (b, 0.34-0.59× of the picks in session 15) are gone.
  for (const gone of ["4x4_2x2sk64g8r", "4x4_2x2sk64g8m", "4x4_2x2sk64g8um", "4x4_1x1p", "2x4_4x2sk64g8uw", "2x4_4x2sdg8ui", "2x4_4x2sk64g8ut", "4x2_2x4sk64g8ub", "4x4_2x2sg8ulb"]) expect(() => parseTcConfig(gone)).toThrow("bad tensor-core config");
  // Kernels are cached by name, so configs that differ in any one field must have different names.
  const base: TcConfig = { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, group: 8 };
  const oneFieldApart: TcConfig[] = [base, { ...base, double: true }, { ...base, bk: 32 },
    { ...base, group: 4 }, { ...base, diag: "no-stores" }, { ...base, unrolled: true }, { ...base, double: true, unrolled: true }, { ...base, unrolled: true, prefetch2: true }, { tm: 4, tn: 4, sgm: 2, sgn: 2 },
    { tm: 4, tn: 4, sgm: 2, sgn: 2, constStrides: true }];
  expect(new Set(oneFieldApart.map(tcConfigName)).size).toBe(oneFieldApart.length);
  expect(() => parseTcConfig("4x4_2x2sg0")).toThrow("group");
  expect(() => parseTcConfig("4x4_2x2x")).toThrow("bad tensor-core config");
});

test("staged tiles shrink to the device's workgroup memory: single buffer first, then shorter K slices", () => {
  const declared = (code: string) => [...code.matchAll(/var<workgroup> \w+: array<f16, (\d+)>/g)].reduce((n, m) => n + 2 * Number(m[1]), 0);
  for (const name of ["4x2_2x4sk64g8u", "4x4_2x2sdg8u", "2x4_4x2sk16g8ul", "4x4_2x2s"]) for (const transB of [true, false]) {
    expect(stagedWorkgroupBytes(transB, parseTcConfig(name))).toBe(declared(stagedSource(transB, parseTcConfig(name)).code));
  }
  const fit = (name: string, limit: number, transB = true) => tcConfigName(fitWorkgroupStorage(parseTcConfig(name), transB, limit));
  expect(fit("4x2_2x4sk64g8u", 49152)).toBe("4x2_2x4sk64g8u"); // the H100's 48 KiB: the table's pick as it is
  expect(fit("4x2_2x4sk64g8u", 32768)).toBe("4x2_2x4sg8u"); // 36,864 bytes at K slice 64, 20,480 at 32
  expect(fit("4x2_2x4sk64g8uf", 32768, false)).toBe("4x2_2x4sg8uf");
  expect(fit("4x4_2x2sdg8u", 32768)).toBe("4x4_2x2sg8u"); // double buffering goes first
  expect(fit("4x4_2x2sdg8u", 16384)).toBe("4x4_2x2sk16g8u");
  expect(fit("4x4_1x1", 0)).toBe("4x4_1x1"); // the global kernel stages nothing
  expect(() => fit("4x4_2x2sg8u", 8192)).toThrow("even with 16-deep slices; the device allows 8192");
  // Shorter slices keep the unrolled copy and its forms valid (fitWorkgroupStorage relies on it).
  for (const name of ["4x2_2x4sk64g8ufc", "4x2_2x4sk64g8un", "4x4_2x2sdg8u", "2x4_4x2sk64g8ul", "1x4_1x4sk64u"]) for (const transB of [true, false]) for (const limit of [32768, 20480]) {
    const shrunk = fitWorkgroupStorage(parseTcConfig(name), transB, limit);
    expect(stagedWorkgroupBytes(transB, shrunk)).toBeLessThanOrEqual(limit);
    expect(unrolledCopyFits(shrunk, transB)).toBe(true);
  }
});

test("thin tensor-core plan: staged 128-row tiles as wide as N, K split while workgroups are few", () => {
  // LoRA's q/k/v h at Llama-1B shapes: 32 tiles, K = 2048 split 16 ways (chunks of 128).
  expect(thinTcPlan(4096, 48, 2048)).toEqual({ cfg: { tm: 2, tn: 3, sgm: 4, sgn: 1, staged: true, bk: 64 }, splits: 16 });
  // Down's h: K = 8192, 16 ways.
  expect(thinTcPlan(4096, 16, 8192)).toEqual({ cfg: { tm: 2, tn: 1, sgm: 4, sgn: 1, staged: true, bk: 64 }, splits: 16 });
  // Short K is not split below chunks of 128.
  expect(thinTcPlan(512, 16, 256).splits).toBe(2);
  expect(thinTcPlan(512, 16, 128).splits).toBe(1);
  for (const [M, N, K] of [[4096, 32, 576], [8192, 64, 4096], [16, 16, 16]]) {
    const { splits } = thinTcPlan(M!, N!, K!);
    expect(K! % (16 * splits)).toBe(0);
  }
});

test("the unrolled switch turns every staged pick unrolled where the tile allows, and nothing else", () => {
  const was = unrolledStaging.enabled;
  try {
    // SmolLM2's up/gate forward: a table pick without the unrolled copy (the sweep's, session 11).
    unrolledStaging.enabled = false;
    expect(tcConfigFor(4096, 1536, 576, true)).toEqual(parseTcConfig("4x4_2x2sk64g8"));
    unrolledStaging.enabled = true;
    expect(tcConfigFor(4096, 1536, 576, true)).toEqual({ ...parseTcConfig("4x4_2x2sk64g8"), unrolled: true });
    expect(tcConfigFor(4096, 4096, 4096, false).unrolled).toBe(true);
    expect(thinTcPlan(4096, 48, 2048, true).cfg.unrolled).toBe(true);
    // 48 columns of B staged [k][n] are 6 vectors per row: 128 threads do not divide them.
    expect(thinTcPlan(4096, 48, 2048, false).cfg.unrolled).toBeUndefined();
    expect(unrolledCopyFits(parseTcConfig("2x3_4x1sk64"), false)).toBe(false);
    expect(shortTcPlan(16, 2048, 4096).cfg.unrolled).toBe(true);
    expect(splitKPlan(896, 896, 4096).cfg.unrolled).toBe(true);
    expect(stagedForm({ tm: 4, tn: 4, sgm: 1, sgn: 1 }, true).unrolled).toBeUndefined(); // the global kernel
  } finally {
    unrolledStaging.enabled = was;
  }
});

test("the guard-free, constant-stride and no-prefetch switches add their forms to the picks they apply to, and to nothing else", () => {
  const was = { ...guardFreeLoads }, constWas = { ...constStrideStaging }, prefetchWas = { ...noPrefetchStaging }, unrolledWas = unrolledStaging.enabled;
  try {
    unrolledStaging.enabled = false;
    guardFreeLoads.enabled = false;
    expect(tcConfigFor(4096, 2048, 8192, false).guardFree).toBeUndefined();
    guardFreeLoads.enabled = true;
    expect(tcConfigFor(4096, 2048, 8192, false)).toEqual({ ...tcConfigFor(4096, 2048, 8192, false), guardFree: true });
    expect(tcConfigName(tcConfigFor(4096, 2048, 8192, false))).toMatch(/uf$/); // the dy·W pick, 4x2_2x4sk64g8u
    expect(tcConfigFor(4096, 1536, 576, true).guardFree).toBeUndefined(); // a pick without the unrolled copy
    expect(stagedForm({ tm: 4, tn: 4, sgm: 1, sgn: 1 }, true).guardFree).toBeUndefined(); // the global kernel
    expect(stagedForm(parseTcConfig("4x4_2x2sg8u-no-loads"), true).guardFree).toBeUndefined(); // diags stay as named
    guardFreeLoads.enabled = false;
    constStrideStaging.enabled = true;
    expect(tcConfigName(tcConfigFor(4096, 2048, 8192, false))).toBe("4x2_2x4sk64g8uc");
    expect(tcConfigName(tcConfigFor(4096, 1536, 576, true))).toBe("4x4_2x2sk64g8c"); // every staged pick, unrolled or not
    expect(stagedForm({ tm: 4, tn: 4, sgm: 1, sgn: 1 }, true).constStrides).toBeUndefined(); // the global kernel
    constStrideStaging.enabled = false;
    noPrefetchStaging.enabled = true;
    expect(tcConfigName(tcConfigFor(4096, 2048, 8192, false))).toBe("4x2_2x4sk64g8un");
    expect(tcConfigName(tcConfigFor(4096, 1536, 576, true))).toBe("4x4_2x2sk64g8"); // not unrolled: unchanged
    expect(tcConfigName(stagedForm(parseTcConfig("4x4_2x2sg8ul"), true))).toBe("4x4_2x2sg8ul"); // l keeps its prefetch
    expect(tcConfigName(stagedForm(parseTcConfig("4x4_2x2sdg8u"), true))).toBe("4x4_2x2sdg8u"); // double-buffered
  } finally {
    Object.assign(noPrefetchStaging, prefetchWas);
    Object.assign(guardFreeLoads, was);
    Object.assign(constStrideStaging, constWas);
    unrolledStaging.enabled = unrolledWas;
  }
});

test("tile rule for shapes the sweep did not measure: staged tiles, narrow outputs included", () => {
  expect(tcConfigFor(4096, 96, 1000, true)).toEqual({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, group: 8 });
  expect(tcConfigFor(4096, 1000, 96, true).staged).toBe(true);
  // Wide shapes off the table (an LM head chunk): the measured winners per form.
  expect(tcConfigName(tcConfigFor(4096, 16000, 2000, true))).toBe("4x4_2x2sg8u"); // session 11 sweep
  expect(tcConfigName(tcConfigFor(4096, 2000, 16000, false))).toBe("4x2_2x4sk64g8u");
});

test("split-K plan for weight gradients: only when the output tiles are few, chunks of at least 256", () => {
  // Qwen2.5-0.5B's q/o dW (896×896, K = 4096 tokens): 49 tiles, split 8 ways.
  expect(splitKPlan(896, 896, 4096)).toEqual({ cfg: { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, group: 8 }, splits: 8 });
  // Its k/v dW (128×896): 7 tiles, split 16 ways (chunks of 256).
  expect(splitKPlan(128, 896, 4096).splits).toBe(16);
  // Llama-1B's gate dW (8192×2048): 1,024 tiles, no split.
  expect(splitKPlan(8192, 2048, 4096).splits).toBe(1);
  // Short K: never chunks under 256.
  expect(splitKPlan(192, 576, 512).splits).toBe(2);
  expect(splitKPlan(80, 48, 96).splits).toBe(1);
});

// Full fine-tuning's weight gradients on tensor cores: dW (+)= dyᵀ·x with dy transposed and
// rounded to f16 in one pass (convertTransposedF16), against float64 on the f16-rounded inputs.
describe.skipIf(!available)("weight gradient on tensor cores (dW = dyᵀ·x)", () => {
  const was = weightGradTensorCores.enabled;
  for (const [T, inF, outF] of [[96, 48, 80], [512, 576, 192], [4096 / 8, 2048 / 8, 8192 / 8]] as const) {
    test(`T=${T}, in=${inF}, out=${outF}: dW = dyᵀ·x, then dW += dyᵀ·x`, async () => {
      weightGradTensorCores.enabled = true;
      try {
        const x = randn(T * inF), dy = randn(T * outF, 0.05), dw0 = randn(outF * inF);
        const x16 = fromF16Bits(toF16Bits(x)), dy16 = fromF16Bits(toF16Bits(dy));
        const ref = matmulRef(dy16, x16, outF, inF, T, true, false);
        const tx = rt.upload("f32", [T, inF], x), tdy = rt.upload("f32", [T, outF], dy);
        for (const beta of [0, 1] as const) {
          const dw = rt.upload("f32", [outF, inF], dw0);
          const rec = rt.recorder("dw-tc");
          expect(linearBackwardWeightTensorCore(rec, tx, tdy, dw, beta)).toBe(true);
          rec.submit();
          const out = await rt.read(dw);
          const want = beta ? ref.map((v, i) => v + dw0[i]!) : ref;
          expect(relError(out, want)).toBeLessThan(2e-3);
          rt.release(dw);
        }
        rt.release(tx, tdy);
      } finally {
        weightGradTensorCores.enabled = was;
      }
    });
  }
  test("shapes off the 16-grid are declined (the caller keeps the portable kernel)", () => {
    weightGradTensorCores.enabled = true;
    try {
      const rec = rt.recorder("dw-tc-decline");
      expect(linearBackwardWeightTensorCore(rec, rt.empty("f32", [24, 32]), rt.empty("f32", [24, 16]), rt.empty("f32", [16, 32]), 1)).toBe(false);
      rec.release();
    } finally {
      weightGradTensorCores.enabled = was;
    }
  });
});
