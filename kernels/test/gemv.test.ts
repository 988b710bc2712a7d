import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type DType, getRuntime, gemv, gemvDepth, gemvGateUpSwiglu, gemvGroup, gemvGrouping, gemvPrologueSupported, gemvSupported, Tensor } from "../src/index.ts";
import { fromBf16Bits, fromF16Bits, randn, relError, rmsnormRef, rng, toBf16Bits, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());
/** A cold lavapipe compiles each new pipeline in 1-6 s (bun test's own timeout is 5 s). */
const COMPILE_TIMEOUT = 60_000;

/** W as the dtype's stored bits and the exact values they hold (the float64 reference widens the same bits). */
function weights(dtype: DType, w: Float32Array): { data: ArrayBufferView; values: Float32Array } {
  if (dtype === "f16") {
    const bits = toF16Bits(w);
    return { data: bits, values: fromF16Bits(bits) };
  }
  if (dtype === "bf16") {
    const bits = toBf16Bits(w);
    return { data: bits, values: fromBf16Bits(bits) };
  }
  return { data: w, values: w };
}

/** Uniform in [-1, 1) from a fresh seed: randn's Box-Muller takes 1.7 s for the 28M weights of the LM-head case. */
function uniformSigned(n: number): Float32Array {
  const r = rng((Math.random() * 2 ** 32) >>> 0);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = 2 * r.uniform() - 1;
  return out;
}

/** float64 y[m][n] = Σ_k x[m·lda + k]·w[n·ldb + k]. */
function ref(x: Float32Array, w: Float32Array, M: number, N: number, K: number, lda: number, ldb: number) {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * lda + k]! * w[n * ldb + k]!;
      out[m * N + n] = s;
    }
  }
  return out;
}

/** Submits, compares every output with its float64 reference (f32 bound), releases. */
async function submitAndCheck(rec: ReturnType<typeof rt.recorder>, checks: { out: Tensor; expect: Float64Array; what: string }[], held: Tensor[]) {
  rec.submit();
  for (const c of checks) {
    const err = relError(await rt.read(c.out), c.expect);
    if (!(err < 1e-5)) throw new Error(`${c.what}: relErr ${err}`);
  }
  rec.release();
  rt.release(...held);
}

const cases: [number, number, number[]][] = [
  [1536, 576, [1, 3, 8, 16]],
  [577, 131, [1, 3, 8, 16]], // K not a multiple of 8, odd N: the scalar kernel
  [64, 8, [1, 3, 8, 16]],
  [49152, 576, [1]], // LM-head-like: 4 rows of W per thread
];

// Both forms run on every device (the default is `row` on CPU drivers, `lanes` on GPUs).
const FORMS = ["lanes", "row"] as const;

describe.each(FORMS)("gemv against float64 (%s)", (form) => {
  for (const [N, K, Ms] of cases) {
    test(`N=${N} K=${K}, M in {${Ms}}, W f32/f16/bf16, bias + beta=1 and plain beta=0`, async () => {
      const w32 = N * K > 4e6 ? uniformSigned(N * K) : randn(N * K), bias = randn(N);
      const tbias = rt.upload("f32", [N], bias);
      const rec = rt.recorder();
      const checks: { out: Tensor; expect: Float64Array; what: string }[] = [];
      const held: Tensor[] = [tbias];
      for (const dtype of ["f32", "f16", "bf16"] as const) {
        const { data, values } = weights(dtype, w32);
        const tw = rt.upload(dtype, [N, K], data);
        held.push(tw);
        for (const M of Ms) {
          const x = randn(M * K), y0 = randn(M * N);
          const tx = rt.upload("f32", [M, K], x);
          const ty1 = rt.upload("f32", [M, N], y0);
          const ty0 = rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN)); // beta = 0 must not read it
          held.push(tx, ty1, ty0);
          const args = { a: tx, b: tw, M, N, K, transB: true };
          expect(gemvSupported({ ...args, c: ty1, beta: 1 })).toBe(true);
          gemv(rec, { ...args, c: ty1, bias: tbias, beta: 1 }, { form });
          gemv(rec, { ...args, c: ty0 }, { form });
          const plain = ref(x, values, M, N, K, K, K);
          checks.push({ out: ty1, expect: plain.map((v, i) => v + bias[i % N]! + y0[i]!), what: `${dtype} M=${M} bias+beta` });
          checks.push({ out: ty0, expect: plain, what: `${dtype} M=${M} plain` });
        }
      }
      await submitAndCheck(rec, checks, held);
    }, COMPILE_TIMEOUT);
  }

  // 4 rows of W per thread (large N, e.g. a decode batch of 5-13 over the LM head): MS·4
  // accumulators in rounds of 16, the last round partial. Found on an H100: M = 12 over
  // Llama's 128,256-row head did not compile (the last round read acc past MS).
  test("4 rows of W per thread with x slices whose accumulators do not fill the last round (M = 5, 6, 7, 11, 12, 13)", async () => {
    const N = 200, K = 64;
    const { data, values } = weights("f16", randn(N * K));
    const tw = rt.upload("f16", [N, K], data);
    const rec = rt.recorder();
    const checks: { out: Tensor; expect: Float64Array; M: number }[] = [];
    const held: Tensor[] = [tw];
    for (const M of [5, 6, 7, 11, 12, 13]) {
      const x = randn(M * K);
      const tx = rt.upload("f32", [M, K], x), ty = rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN));
      held.push(tx, ty);
      gemv(rec, { a: tx, b: tw, c: ty, M, N, K, transB: true }, { form, rows: 4 });
      checks.push({ out: ty, expect: ref(x, values, M, N, K, K, K), M });
    }
    rec.submit();
    for (const c of checks) {
      const err = relError(await rt.read(c.out), c.expect);
      if (!(err < 1e-5)) throw new Error(`M=${c.M}: relErr ${err}`);
    }
    rec.release();
    rt.release(...held);
  }, COMPILE_TIMEOUT * 2);

  test("a row chunk of W bound on its own, y columns at an offset with ldc, lda > K", async () => {
    // The LM-head pattern: W (N, K) in two chunks of rows, y (M, N) written chunk by chunk.
    const N = 300, K = 64, M = 11, lda = 72, split = 128; // M = 11: two x slices of 6, the second one row short
    for (const dtype of ["f16", "f32"] as const) {
      const { data, values } = weights(dtype, randn(N * K));
      const x = randn(M * lda);
      const tw = rt.upload(dtype, [N, K], data), tx = rt.upload("f32", [M, lda], x);
      const ty = rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN));
      const rec = rt.recorder();
      const eb = dtype === "f16" ? 2 : 4;
      for (const [n0, n] of [[0, split], [split, N - split]] as const) {
        const wChunk = new Tensor(tw.buffer, dtype, [n, K], tw.byteOffset + n0 * K * eb);
        const yChunk = new Tensor(ty.buffer, "f32", [M * N - n0], ty.byteOffset + n0 * 4);
        gemv(rec, { a: tx, b: wChunk, c: yChunk, M, N: n, K, transB: true, lda, ldc: N }, { form });
      }
      rec.submit();
      expect(relError(await rt.read(ty), ref(x, values, M, N, K, lda, K))).toBeLessThan(1e-5);
      rec.release();
      rt.release(tw, tx, ty);
    }
  }, COMPILE_TIMEOUT);

  test("gemvSupported and argument errors", () => {
    const tx = rt.empty("f32", [4, 8]), tw = rt.empty("f32", [3, 8]), ty = rt.empty("f32", [4, 3]);
    const base = { a: tx, b: tw, c: ty, M: 4, N: 3, K: 8, transB: true };
    expect(gemvSupported(base)).toBe(true);
    expect(gemvSupported({ ...base, M: 17 })).toBe(false);
    expect(gemvSupported({ ...base, transB: false })).toBe(false);
    expect(gemvSupported({ ...base, transA: true })).toBe(false);
    expect(gemvSupported({ ...base, alpha: 0.5 })).toBe(false);
    expect(gemvSupported({ ...base, beta: 0.5 })).toBe(false);
    const rec = rt.recorder();
    expect(() => gemv(rec, { ...base, M: 17 })).toThrow(/gemv: needs transB/);
    expect(() => gemv(rec, { ...base, lda: 4 })).toThrow(/gemv: strides/);
    expect(() => gemv(rec, { ...base, N: 4, ldc: 4 })).toThrow(/gemv: b has 24 elements/);
    rec.release();
    rt.release(tx, tw, ty);
  });
});

// Decode's q/k/v and gate/up: one dispatch of the GPU kernel for two or three weights that read the
// same x, each part's workgroups beside the others' (forced to the GPU form here on every device).
// Four and sixteen words of W in flight per thread (gemvDepth; the default is 8 since session 11,
// which the other tests here run): the U·RT loads per round change with the rows per thread, and
// the last round of a row is partial (K = 8·32·U·k + a remainder), so every rows-per-thread choice
// and a grouped call run here.
describe.each([4, 16] as const)("gemv with %i words in flight per thread against float64", (words) => {
  const was = gemvDepth.words;
  beforeAll(() => { gemvDepth.words = words; });
  afterAll(() => { gemvDepth.words = was; });
  test("rows of W per thread 1, 2, 4; M in {1, 3, 9}; K with a partial last round; f16 and bf16", async () => {
    const N = 96, K = 8 * 32 * 8 + 40;
    const rec = rt.recorder();
    const checks: { out: Tensor; expect: Float64Array; what: string }[] = [];
    const held: Tensor[] = [];
    for (const dtype of ["f16", "bf16"] as const) {
      const { data, values } = weights(dtype, randn(N * K));
      const tw = rt.upload(dtype, [N, K], data);
      held.push(tw);
      for (const rows of [1, 2, 4] as const) {
        for (const M of [1, 3, 9]) {
          const x = randn(M * K);
          const tx = rt.upload("f32", [M, K], x), ty = rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN));
          held.push(tx, ty);
          gemv(rec, { a: tx, b: tw, c: ty, M, N, K, transB: true }, { form: "lanes", rows });
          checks.push({ out: ty, expect: ref(x, values, M, N, K, K, K), what: `${dtype} rows=${rows} M=${M}` });
        }
      }
    }
    await submitAndCheck(rec, checks, held);
  }, COMPILE_TIMEOUT * 4);

  test("grouped q/k/v-like parts, M = 1", async () => {
    const was = gemvGrouping.enabled;
    gemvGrouping.enabled = true;
    try {
      const Ns = [64, 16, 16], K = 8 * 32 * 8 + 8, M = 1;
      const ws = Ns.map((N) => weights("f16", randn(N * K)));
      const tws = ws.map((w, j) => rt.upload("f16", [Ns[j]!, K], w.data));
      const x = randn(M * K);
      const tx = rt.upload("f32", [M, K], x);
      const tys = Ns.map((N) => rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN)));
      const rec = rt.recorder();
      expect(gemvGroup(rec, tx, M, K, Ns.map((_, j) => ({ w: tws[j]!, y: tys[j]! })), { form: "lanes" })).toBe(true);
      await submitAndCheck(rec, Ns.map((N, j) => ({ out: tys[j]!, expect: ref(x, ws[j]!.values, M, N, K, K, K), what: `part ${j}` })), [...tws, tx, ...tys]);
    } finally {
      gemvGrouping.enabled = was;
    }
  }, COMPILE_TIMEOUT * 2);
});

describe("gemv group against float64", () => {
  const was = gemvGrouping.enabled; // on by default since session 16 (gemv.ts)
  beforeAll(() => { gemvGrouping.enabled = true; });
  afterAll(() => { gemvGrouping.enabled = was; });
  // (Each new M slice and rows-per-thread pair is a pipeline compile of seconds on lavapipe.)
  const cases: { Ns: number[]; K: number; bias: boolean[]; Ms: number[] }[] = [
    { Ns: [128, 32, 32], K: 576, bias: [true, true, true], Ms: [1, 3, 16] }, // q/k/v with biases (Qwen2)
    { Ns: [40, 24, 8], K: 64, bias: [false, true, false], Ms: [1, 9] }, // parts that do not fill their last workgroup
    { Ns: [200, 200], K: 136, bias: [false, false], Ms: [1, 9] }, // gate/up
    { Ns: [2100, 300, 300], K: 64, bias: [false, false, false], Ms: [1] }, // enough rows for 2 rows of W per thread
  ];
  for (const { Ns, K, bias, Ms } of cases) {
    test(`N = ${Ns.join(" + ")}, K = ${K}, W f32/f16/bf16, M in {${Ms}}`, async () => {
      const rec = rt.recorder();
      const held: Tensor[] = [];
      const checks: { out: Tensor; expect: Float64Array; what: string }[] = [];
      for (const dtype of ["f32", "f16", "bf16"] as const) {
        const ws = Ns.map((N) => weights(dtype, randn(N * K)));
        const bs = Ns.map((N) => randn(N));
        const tws = ws.map((w, j) => rt.upload(dtype, [Ns[j]!, K], w.data));
        const tbs = bs.map((b, j) => (bias[j] ? rt.upload("f32", [Ns[j]!], b) : undefined));
        held.push(...tws, ...tbs.filter((t): t is Tensor => !!t));
        for (const M of Ms) {
          const x = randn(M * K);
          const tx = rt.upload("f32", [M, K], x);
          const tys = Ns.map((N) => rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN)));
          held.push(tx, ...tys);
          const ran = gemvGroup(rec, tx, M, K, Ns.map((_, j) => ({ w: tws[j]!, y: tys[j]!, bias: tbs[j] })), { form: "lanes" });
          expect(ran).toBe(true);
          Ns.forEach((N, j) => {
            const plain = ref(x, ws[j]!.values, M, N, K, K, K);
            checks.push({ out: tys[j]!, expect: bias[j] ? plain.map((v, i) => v + bs[j]![i % N]!) : plain, what: `${dtype} M=${M} part ${j}` });
          });
        }
      }
      await submitAndCheck(rec, checks, held);
    }, COMPILE_TIMEOUT * 4);
  }

  // The decode layer's norm and its q/k/v (gate/up) in one dispatch: every part reads rmsnorm(x),
  // each workgroup summing x² over the chunks it reads. Rows of x at different scales (one r for
  // every row fails), M past the one-slice limit (9: two x slices, each its own r), 1-4 rows of W
  // per thread, biases on some parts.
  test("with the RMSNorm fused in front: q/k/v- and gate/up-like parts, W f32/f16/bf16, M in {1, 3, 9}", async () => {
    const rec = rt.recorder();
    const held: Tensor[] = [];
    const checks: { out: Tensor; expect: Float64Array; what: string }[] = [];
    const K = 8 * 32 * 8 + 40, eps = 1e-5;
    const g = randn(K), tg = rt.upload("f32", [K], g);
    held.push(tg);
    for (const dtype of ["f32", "f16", "bf16"] as const) {
      for (const [Ns, bias, M, rows] of [[[96, 24, 24], [true, false, true], 1, undefined], [[80, 80], [false, false], 3, 2], [[64, 16, 16], [false, true, false], 9, 1]] as const) {
        const ws = Ns.map((N) => weights(dtype, randn(N * K)));
        const bs = Ns.map((N) => randn(N));
        const tws = ws.map((w, j) => rt.upload(dtype, [Ns[j]!, K], w.data));
        const tbs = bs.map((b, j) => (bias[j] ? rt.upload("f32", [Ns[j]!], b) : undefined));
        const x = randn(M * K).map((v, i) => v * 4 ** (Math.floor(i / K) % 4 - 1));
        const tx = rt.upload("f32", [M, K], x);
        const tys = Ns.map((N) => rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN)));
        held.push(...tws, ...tbs.filter((t): t is Tensor => !!t), tx, ...tys);
        const parts = Ns.map((_, j) => ({ w: tws[j]!, y: tys[j]!, bias: tbs[j] }));
        expect(gemvGroup(rec, tx, M, K, parts, { form: "lanes", ...(rows ? { rows } : {}) }, { weight: tg, eps })).toBe(true);
        const xn = rmsnormRef(x, g, M, K, eps).y as unknown as Float32Array; // ref() only indexes it
        Ns.forEach((N, j) => {
          const plain = ref(xn, ws[j]!.values, M, N, K, K, K);
          checks.push({ out: tys[j]!, expect: bias[j] ? plain.map((v, i) => v + bs[j]![i % N]!) : plain, what: `${dtype} M=${M} part ${j} +rmsnorm` });
        });
      }
    }
    await submitAndCheck(rec, checks, held);
  }, COMPILE_TIMEOUT * 6);

  // Decode's gate/up and SwiGLU in one dispatch (gemvGateUpSwiglu): act = silu(gate)·up from the two
  // products, gate and up never written; with and without the norm in front, biases on one part,
  // gates of both signs and large magnitude (σ's two branches), M past the one-slice limit.
  test("gate/up with the SwiGLU epilogue (act only), with and without the RMSNorm, W f32/f16/bf16, M in {1, 9}", async () => {
    const rec = rt.recorder();
    const held: Tensor[] = [];
    const checks: { out: Tensor; expect: Float64Array; what: string }[] = [];
    const K = 8 * 32 * 4 + 24, N = 72, eps = 1e-6;
    const g = randn(K), tg = rt.upload("f32", [K], g);
    held.push(tg);
    const silu = (v: number) => v / (1 + Math.exp(-v));
    for (const dtype of ["f32", "f16", "bf16"] as const) {
      for (const [M, normed, rows] of [[1, true, undefined], [9, false, 2]] as const) {
        const [wg, wu] = [weights(dtype, randn(N * K, 0.2)), weights(dtype, randn(N * K, 0.2))];
        const bu = randn(N);
        const twg = rt.upload(dtype, [N, K], wg.data), twu = rt.upload(dtype, [N, K], wu.data), tbu = rt.upload("f32", [N], bu);
        const x = randn(M * K).map((v, i) => v * 4 ** (Math.floor(i / K) % 4 - 1));
        const tx = rt.upload("f32", [M, K], x);
        const act = rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN));
        held.push(twg, twu, tbu, tx, act);
        const ran = gemvGateUpSwiglu(rec, tx, M, K, { w: twg }, { w: twu, bias: tbu }, act, { form: "lanes", ...(rows ? { rows } : {}) },
          normed ? { weight: tg, eps } : undefined);
        expect(ran).toBe(true);
        const xin = normed ? rmsnormRef(x, g, M, K, eps).y as unknown as Float32Array : x;
        const gate = ref(xin, wg.values, M, N, K, K, K), up = ref(xin, wu.values, M, N, K, K, K);
        const expect64 = gate.map((gv, i) => silu(gv) * (up[i]! + bu[i % N]!));
        checks.push({ out: act, expect: expect64, what: `${dtype} M=${M}${normed ? " +rmsnorm" : ""} +swiglu` });
      }
    }
    await submitAndCheck(rec, checks, held);
  }, COMPILE_TIMEOUT * 6);

  test("declined (nothing recorded) where it does not apply: switched off, mixed dtypes, one output buffer twice, K off the 8-half grid, the CPU form", () => {
    const K = 64, M = 1;
    const tx = rt.empty("f32", [M, K]);
    const w16 = rt.empty("f16", [32, K]), w32 = rt.empty("f32", [32, K]), y1 = rt.empty("f32", [M, 32]), y2 = rt.empty("f32", [M, 32]);
    const rec = rt.recorder();
    gemvGrouping.enabled = false;
    expect(gemvGroup(rec, tx, M, K, [{ w: w16, y: y1 }, { w: w16, y: y2 }], { form: "lanes" })).toBe(false);
    gemvGrouping.enabled = true;
    expect(gemvGroup(rec, tx, M, K, [{ w: w16, y: y1 }, { w: w32, y: y2 }], { form: "lanes" })).toBe(false);
    expect(gemvGroup(rec, tx, M, K, [{ w: w16, y: y1 }, { w: w16, y: y1 }], { form: "lanes" })).toBe(false);
    expect(gemvGroup(rec, tx, M, K, [{ w: w16, y: y1 }, { w: w16, y: y2 }], { form: "row" })).toBe(false);
    const x60 = rt.empty("f32", [M, 60]), w60 = rt.empty("f16", [32, 60]);
    expect(gemvGroup(rec, x60, M, 60, [{ w: w60, y: y1 }, { w: w60, y: y2 }], { form: "lanes" })).toBe(false);
    expect(gemvGroup(rec, tx, 17, K, [{ w: w16, y: y1 }, { w: w16, y: y2 }], { form: "lanes" })).toBe(false);
    // a norm weight of the wrong length or dtype
    const gShort = rt.empty("f32", [K - 8]), g16 = rt.empty("f16", [K]);
    expect(gemvGroup(rec, tx, M, K, [{ w: w16, y: y1 }, { w: w16, y: y2 }], { form: "lanes" }, { weight: gShort, eps: 1e-5 })).toBe(false);
    expect(gemvGroup(rec, tx, M, K, [{ w: w16, y: y1 }, { w: w16, y: y2 }], { form: "lanes" }, { weight: g16, eps: 1e-5 })).toBe(false);
    // SwiGLU's gate and up of different shapes, act too short
    const w16b = rt.empty("f16", [16, K]), yShort = rt.empty("f32", [M, 16]);
    expect(gemvGateUpSwiglu(rec, tx, M, K, { w: w16 }, { w: w16b }, y1, { form: "lanes" })).toBe(false);
    expect(gemvGateUpSwiglu(rec, tx, M, K, { w: w16 }, { w: w16 }, yShort, { form: "lanes" })).toBe(false);
    rt.release(w16b, yShort);
    expect(rec.length).toBe(0);
    rec.release();
    rt.release(tx, w16, w32, y1, y2, x60, w60, gShort, g16);
  });
});

type Check = { out: Tensor; expect: Float64Array; what: string };
/**
 * Records `each` once per W dtype (f32, f16, bf16: a random (N, K) W uploaded in it, with the values
 * its bits hold), then submits and checks every output pushed to `checks` against float64.
 */
async function overWeightDtypes(N: number, K: number, each: (rec: ReturnType<typeof rt.recorder>, w: { t: Tensor; values: Float32Array; dtype: DType }, checks: Check[], held: Tensor[]) => void) {
  const rec = rt.recorder();
  const checks: Check[] = [];
  const held: Tensor[] = [];
  for (const dtype of ["f32", "f16", "bf16"] as const) {
    const { data, values } = weights(dtype, randn(N * K));
    const t = rt.upload(dtype, [N, K], data);
    held.push(t);
    each(rec, { t, values, dtype }, checks, held);
  }
  await submitAndCheck(rec, checks, held);
}

// Decode's RMSNorm fused in front of the GEMV (GemvPrologue's norm): y = (x·r∘g)·Wᵀ (+ bias), r = 1/√(mean(x²) + eps)
// per row of x, against float64 in both forms, every dtype, M past the one-slice limit (9, 16: two
// x slices, each with its own r), rows of W per thread 1/2/4, and a partial last round of K.
describe("gemv with the RMSNorm fused in front against float64", () => {
  for (const form of ["lanes", "row"] as const) {
    test(`${form} form: M in {1, 3, 9, 16}, W f32/f16/bf16, rows 1/2/4, bias, eps 1e-5 and 1e-6`, async () => {
      const N = 72, K = 8 * 32 * 8 + 40;
      await overWeightDtypes(N, K, (rec, { t: tw, values, dtype }, checks, held) => {
        for (const [M, rows, eps] of [[1, 1, 1e-5], [3, 2, 1e-6], [9, 4, 1e-5], [16, 2, 1e-6]] as const) {
          // rows of x at very different scales: a wrong r per row (or one r for every row) shows
          const x = randn(M * K).map((v, i) => v * 4 ** (Math.floor(i / K) % 4 - 1));
          const g = randn(K), bias = randn(N);
          const tx = rt.upload("f32", [M, K], x), tg = rt.upload("f32", [K], g), tb = rt.upload("f32", [N], bias);
          const ty = rt.upload("f32", [M, N], new Float32Array(M * N).fill(NaN));
          held.push(tx, tg, tb, ty);
          gemv(rec, { a: tx, b: tw, c: ty, M, N, K, transB: true, bias: tb }, { form, rows }, { norm: { weight: tg, eps } });
          const expect = ref(rmsnormRef(x, g, M, K, eps).y as unknown as Float32Array, values, M, N, K, K, K); // ref() only indexes it
          for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) expect[m * N + n]! += bias[n]!;
          checks.push({ out: ty, expect, what: `${form} ${dtype} M=${M} rows=${rows}` });
        }
      });
    }, COMPILE_TIMEOUT * 6);
  }

  test("gemvPrologueSupported: aligned rows only; a wrong norm weight is refused before recording", () => {
    const K = 64, N = 8;
    const x = rt.upload("f32", [1, K], randn(K)), w = rt.upload("f16", [N, K], toF16Bits(randn(N * K))), y = rt.empty("f32", [1, N]);
    const g = rt.upload("f32", [K], randn(K)), gShort = rt.upload("f32", [K - 8], randn(K - 8));
    const args = { a: x, b: w, c: y, M: 1, N, K, transB: true };
    expect(gemvPrologueSupported(args, { norm: { weight: g, eps: 1e-5 } })).toBe(true);
    expect(gemvPrologueSupported({ ...args, K: K - 4, lda: K, ldb: K }, { norm: { weight: g, eps: 1e-5 } })).toBe(false); // K off the 8-half grid
    const rec = rt.recorder();
    expect(() => gemv(rec, args, undefined, { norm: { weight: gShort, eps: 1e-5 } })).toThrow(/norm weight/);
    rec.release();
    rt.release(x, w, y, g, gShort);
  });
});

// Decode's SwiGLU fused in front of down_proj's GEMV (GemvPrologue's swiglu): y = (silu(gate)·up)·Wᵀ (+ y),
// against float64 in both forms and every dtype, gates of both signs and large magnitude (σ's two
// branches, exp of large arguments), beta = 1 as down_proj adds into the residual stream.
describe("gemv with SwiGLU fused in front against float64", () => {
  for (const form of ["lanes", "row"] as const) {
    test(`${form} form: M in {1, 3, 9, 16}, W f32/f16/bf16, beta 0 and 1`, async () => {
      const N = 40, K = 8 * 32 * 8 + 24;
      await overWeightDtypes(N, K, (rec, { t: tw, values, dtype }, checks, held) => {
        for (const [M, beta] of [[1, 1], [3, 0], [9, 1], [16, 0]] as const) {
          const gate = randn(M * K).map((v) => 6 * v), up = randn(M * K), y0 = randn(M * N);
          const act = new Float64Array(M * K);
          for (let i = 0; i < M * K; i++) act[i] = gate[i]! / (1 + Math.exp(-gate[i]!)) * up[i]!;
          const tg = rt.upload("f32", [M, K], gate), tu = rt.upload("f32", [M, K], up), ty = rt.upload("f32", [M, N], beta ? y0 : new Float32Array(M * N).fill(NaN));
          held.push(tg, tu, ty);
          gemv(rec, { a: tg, b: tw, c: ty, M, N, K, transB: true, beta }, { form }, { swiglu: { up: tu } });
          const expect = ref(act as unknown as Float32Array, values, M, N, K, K, K);
          if (beta) for (let i = 0; i < M * N; i++) expect[i]! += y0[i]!;
          checks.push({ out: ty, expect, what: `${form} ${dtype} M=${M} beta=${beta}` });
        }
      });
    }, COMPILE_TIMEOUT * 6);
  }

  test("up must be shaped like x", () => {
    const K = 64, N = 8;
    const x = rt.upload("f32", [2, K], randn(2 * K)), w = rt.upload("f16", [N, K], toF16Bits(randn(N * K))), y = rt.empty("f32", [2, N]);
    const up1 = rt.upload("f32", [1, K], randn(K));
    const args = { a: x, b: w, c: y, M: 2, N, K, transB: true };
    expect(gemvPrologueSupported(args, { swiglu: { up: x } })).toBe(true);
    expect(gemvPrologueSupported(args, { swiglu: { up: up1 } })).toBe(false);
    const rec = rt.recorder();
    expect(() => gemv(rec, args, undefined, { swiglu: { up: up1 } })).toThrow(/up/);
    rec.release();
    rt.release(x, w, y, up1);
  });
});
