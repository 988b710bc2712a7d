import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { type AttentionDiag, attentionDiagFrom, attentionTcForm, attentionTcSource, dkvGroupSum, plainAttentionBytes, stagedAttentionBytes, tensorCoreAttentionSupported } from "../src/attention-tc.ts";
import {
  attentionBackward, attentionDecode, attentionDecodeScratchSize, attentionForward, decodeSplitKeys, getRuntime, hasTensorCoreMatmul, kvCacheAppend,
  type Recorder, type Tensor,
} from "../src/index.ts";
import { fromF16Bits, randn, relError, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
setDefaultTimeout(60_000); // a cold pipeline compile on lavapipe takes seconds
afterAll(() => rt.trimPool());

// ------------------------------------------------------------------ float64 reference

interface Problem {
  T: number;
  nH: number;
  nKV: number;
  hd: number;
  seq: Int32Array;
  scale: number;
  window: number;
}

/** Keys query i sees, by the rule in attention.wgsl. */
function visible(P: Problem, i: number, j: number): boolean {
  const s = P.seq[i]!;
  return s >= 0 && P.seq[j] === s && j <= i && (P.window === 0 || i - j < P.window);
}

/** Naive masked softmax attention and its backward in float64 (dout optional). */
function attentionRef(P: Problem, q: Float32Array, k: Float32Array, v: Float32Array, dout?: Float32Array) {
  const { T, nH, nKV, hd, scale } = P;
  const group = nH / nKV;
  const out = new Float64Array(T * nH * hd);
  const lse = new Float64Array(T * nH);
  const dq = new Float64Array(T * nH * hd);
  const dk = new Float64Array(T * nKV * hd);
  const dv = new Float64Array(T * nKV * hd);
  const s = new Float64Array(T);
  for (let h = 0; h < nH; h++) {
    const g = Math.floor(h / group);
    const qi = (t: number) => (t * nH + h) * hd;
    const kj = (t: number) => (t * nKV + g) * hd;
    for (let i = 0; i < T; i++) {
      let m = -Infinity;
      for (let j = 0; j < T; j++) {
        if (!visible(P, i, j)) continue;
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += q[qi(i) + d]! * k[kj(j) + d]!;
        s[j] = scale * dot;
        m = Math.max(m, s[j]!);
      }
      if (m === -Infinity) continue; // sees nothing: out 0, lse 0, no gradient
      let l = 0;
      for (let j = 0; j < T; j++) if (visible(P, i, j)) l += Math.exp(s[j]! - m);
      lse[i * nH + h] = m + Math.log(l);
      for (let j = 0; j < T; j++) {
        if (!visible(P, i, j)) continue;
        const p = Math.exp(s[j]! - m) / l;
        s[j] = p; // s now holds probabilities
        for (let d = 0; d < hd; d++) out[qi(i) + d]! += p * v[kj(j) + d]!;
      }
      if (!dout) continue;
      let D = 0;
      for (let d = 0; d < hd; d++) D += dout[qi(i) + d]! * out[qi(i) + d]!;
      for (let j = 0; j < T; j++) {
        if (!visible(P, i, j)) continue;
        const p = s[j]!;
        let dp = 0;
        for (let d = 0; d < hd; d++) dp += dout[qi(i) + d]! * v[kj(j) + d]!;
        const ds = p * (dp - D);
        for (let d = 0; d < hd; d++) {
          dq[qi(i) + d]! += scale * ds * k[kj(j) + d]!;
          dk[kj(j) + d]! += scale * ds * q[qi(i) + d]!;
          dv[kj(j) + d]! += p * dout[qi(i) + d]!;
        }
      }
    }
  }
  return { out, lse, dq, dk, dv };
}

/** seq ids for packed sequences of the given lengths followed by `pad` padding tokens. */
function packed(lengths: number[], pad = 0): Int32Array {
  const ids: number[] = [];
  lengths.forEach((n, s) => { for (let i = 0; i < n; i++) ids.push(s); });
  for (let i = 0; i < pad; i++) ids.push(-1);
  return Int32Array.from(ids);
}

function problem(nH: number, nKV: number, hd: number, seq: Int32Array, opts: { scale?: number; window?: number } = {}): Problem {
  return { T: seq.length, nH, nKV, hd, seq, scale: opts.scale ?? 1 / Math.sqrt(hd), window: opts.window ?? 0 };
}

// ------------------------------------------------------------------ GPU runs

interface Inputs { q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array }
function randomInputs(P: Problem): Inputs {
  return {
    q: randn(P.T * P.nH * P.hd),
    k: randn(P.T * P.nKV * P.hd),
    v: randn(P.T * P.nKV * P.hd),
    dout: randn(P.T * P.nH * P.hd),
  };
}

async function runGpu(P: Problem, x: Inputs, backward = true, tensorCores = false) {
  const { T, nH, nKV, hd } = P;
  const t = {
    q: rt.upload("f32", [T, nH, hd], x.q), k: rt.upload("f32", [T, nKV, hd], x.k), v: rt.upload("f32", [T, nKV, hd], x.v),
    seqId: rt.upload("i32", [T], P.seq), dout: rt.upload("f32", [T, nH, hd], x.dout),
    out: rt.empty("f32", [T, nH, hd]), lse: rt.empty("f32", [T, nH]), dsum: rt.empty("f32", [T, nH]),
    dq: rt.empty("f32", [T, nH, hd]), dk: rt.empty("f32", [T, nKV, hd]), dv: rt.empty("f32", [T, nKV, hd]),
  };
  const rec = rt.recorder("attention test");
  const opts = { scale: P.scale, window: P.window };
  attentionForward(rec, { ...t, ...opts, tensorCores });
  if (backward) attentionBackward(rec, { ...t, ...opts, tensorCores });
  rec.submit();
  const res = {
    out: await rt.read(t.out), lse: await rt.read(t.lse),
    dq: backward ? await rt.read(t.dq) : null, dk: backward ? await rt.read(t.dk) : null, dv: backward ? await rt.read(t.dv) : null,
  };
  rec.release();
  rt.release(...Object.values(t));
  return res;
}

const ZERO_REF = -1;
/** relError, except that an all-zero reference (T = 1: p = 1 has no gradient) needs exact zeros. */
function relOrZero(out: Float32Array, ref: Float64Array): number {
  if (ref.some((x) => x !== 0)) return relError(out, ref);
  return out.every((x) => x === 0) ? ZERO_REF : Infinity;
}

async function checkAgainstReference(P: Problem) {
  const x = randomInputs(P);
  const ref = attentionRef(P, x.q, x.k, x.v, x.dout);
  const gpu = await runGpu(P, x);
  const err = {
    out: relOrZero(gpu.out, ref.out), lse: relOrZero(gpu.lse, ref.lse),
    dq: relOrZero(gpu.dq!, ref.dq), dk: relOrZero(gpu.dk!, ref.dk), dv: relOrZero(gpu.dv!, ref.dv),
  };
  for (const [name, e] of Object.entries(err)) {
    if (e === ZERO_REF) continue;
    if (!(e < 1e-5)) throw new Error(`${name}: relative error ${e} (all: ${JSON.stringify(err)})`);
  }
  return gpu;
}

// ------------------------------------------------------------------ tests

const MODELS = [
  { name: "SmolLM2-135M", nH: 9, nKV: 3 },
  { name: "Qwen2.5-0.5B", nH: 14, nKV: 2 },
  { name: "Llama-3.2-1B", nH: 32, nKV: 8 },
];

describe("attention forward + backward against float64 (out, lse, dq, dk, dv)", () => {
  for (const m of MODELS) {
    for (const T of [1, 7, 129]) {
      test(`${m.name} heads ${m.nH}/${m.nKV}, hd 64, T=${T}`, async () => {
        await checkAgainstReference(problem(m.nH, m.nKV, 64, packed([T])));
      });
    }
  }

  test("packed batch: sequences (5, 1, 17) + 3 padding tokens; padding gives exact zeros", async () => {
    const P = problem(14, 2, 64, packed([5, 1, 17], 3));
    const gpu = await checkAgainstReference(P);
    const row = P.nH * P.hd;
    for (let t = 23; t < 26; t++) {
      for (const a of [gpu.out, gpu.dq!]) expect(a.subarray(t * row, (t + 1) * row).every((x) => x === 0)).toBe(true);
      for (const a of [gpu.dk!, gpu.dv!]) expect(a.subarray(t * P.nKV * P.hd, (t + 1) * P.nKV * P.hd).every((x) => x === 0)).toBe(true);
      expect(gpu.lse.subarray(t * P.nH, (t + 1) * P.nH).every((x) => x === 0)).toBe(true);
    }
  });

  test("hd 128 (Llama-3 8B / Mistral), packed (40, 33), explicit scale", async () => {
    await checkAgainstReference(problem(8, 2, 128, packed([40, 33], 2), { scale: 0.07 }));
  });

  test("sliding window 7 and 40 across tile boundaries, packed (70, 45) + padding", async () => {
    await checkAgainstReference(problem(4, 2, 64, packed([70, 45], 4), { window: 7 }));
    await checkAgainstReference(problem(4, 1, 64, packed([70, 45], 4), { window: 40 }));
  });

  test("padding between sequences and a leading padding token", async () => {
    const seq = Int32Array.from([-1, 0, 0, 0, -1, -1, 1, 1, 1, 1, 1, -1, 2, 2]);
    await checkAgainstReference(problem(9, 3, 64, seq));
  });
});

// The tensor-core forward rounds q, k, v and the probabilities to f16: compare against float64 on
// the f16-rounded inputs, at the 16-bit tolerance. Runs where subgroup matrices exist (H100/H200).
describe.skipIf(!hasTensorCoreMatmul(rt) || !tensorCoreAttentionSupported(rt.recorder("probe"), 64, 64))("tensor-core attention forward + backward (f16 operands)", () => {
  const round16 = (x: Float32Array) => fromF16Bits(toF16Bits(x));
  const cases: [string, Problem][] = [
    ["SmolLM2 heads 9/3, T=160 (3 key tiles, a partial query tile)", problem(9, 3, 64, packed([160]))],
    ["packed (48, 16, 80) + 16 padding, heads 14/2", problem(14, 2, 64, packed([48, 16, 80], 16))],
    ["hd 128, heads 8/2, packed (96, 32)", problem(8, 2, 128, packed([96, 32]), { scale: 0.07 })],
    ["sliding window 40, heads 4/1, T=144", problem(4, 1, 64, packed([144]), { window: 40 })],
    ["hd 32, heads 4/2, T=16", problem(4, 2, 32, packed([16]))],
    // Key tiles that whole query blocks see (the full-tile form skips their masks), a window that
    // cuts some of them, and packing whose sequence boundaries fall inside and between tiles.
    ["heads 8/2, T=320 (full tiles below the diagonal)", problem(8, 2, 64, packed([320]))],
    ["sliding window 150, heads 4/2, packed (256, 64)", problem(4, 2, 64, packed([256, 64]), { window: 150 })],
    // Scores spread over tens of nats (scale 1 on hd 64): peaked rows whose max moves from tile to tile.
    ["wide scores (scale 1), heads 4/2, T=320", problem(4, 2, 64, packed([320]), { scale: 1 })],
  ];
  // Every form (attention-tc.ts attentionTcForm): both forwards, two sweeps (the default)
  // and one sweep with an online softmax, each with the plain and the padded tile layout (which
  // the backward follows too).
  // With grouped-query heads, the dk/dv pass per query head (partials summed per kv head) too.
  const forms: { oneSweep: boolean; padded: boolean; dkvPerHead: boolean; staged?: boolean; fullTiles?: boolean; dkvDoutStaged?: boolean; dkvSharedPdS?: boolean; regScores?: boolean }[] = [
    ...[false, true].flatMap((oneSweep) => [false, true].map((padded) => ({ oneSweep, padded, dkvPerHead: false }))),
    { oneSweep: true, padded: true, dkvPerHead: true },
    // Tiles staged through workgroup memory (hd 128 falls back to global loads: too big for 48 KB).
    { oneSweep: true, padded: true, dkvPerHead: false, staged: true },
    { oneSweep: true, padded: true, dkvPerHead: true, staged: true },
    // Full key tiles without their mask lookups (session 9; on by default since session 11), in the
    // default forms and two sweeps.
    { oneSweep: true, padded: true, dkvPerHead: true, staged: true, fullTiles: true },
    { oneSweep: false, padded: true, dkvPerHead: false, fullTiles: true },
    // dout staged in the dk/dv pass too, P and dS sharing a tile (session 14; on by default since its call), in the
    // default forms, per query head and not.
    { oneSweep: true, padded: true, dkvPerHead: true, staged: true, fullTiles: true, dkvDoutStaged: true },
    { oneSweep: true, padded: true, dkvPerHead: false, staged: true, fullTiles: true, dkvDoutStaged: true },
    // The unstaged dk/dv pass with P and dS in one tile (session 17: the form that fits 32 KiB devices).
    { oneSweep: true, padded: true, dkvPerHead: true, fullTiles: true, dkvSharedPdS: true },
    { oneSweep: false, padded: false, dkvPerHead: false, dkvSharedPdS: true },
    // The forward keeping each lane's scores in registers between its max and softmax loops
    // (session 17), in the default form and unstaged.
    { oneSweep: true, padded: true, dkvPerHead: true, staged: true, fullTiles: true, dkvDoutStaged: true, regScores: true },
    { oneSweep: true, padded: true, dkvPerHead: true, fullTiles: true, regScores: true },
  ];
  // Emulated subgroup matrices (lavapipe, `bun run test:tc`): seconds per pipeline and 32 KiB of
  // workgroup memory, so no staged tiles (the passes fall back to global loads there) and the dk/dv
  // pass shares its P and dS tile; the default form's unstaged twin and the two-sweep forward, on
  // the hd 64 cases (hd 128's one-sweep forward needs 43,264 bytes).
  const emulated = rt.caps.subgroupMatrixEmulated;
  const emulatedForms: typeof forms = [{ oneSweep: true, padded: true, dkvPerHead: true, fullTiles: true }, { oneSweep: false, padded: true, dkvPerHead: false }, { oneSweep: true, padded: true, dkvPerHead: true, fullTiles: true, regScores: true }];
  const emulatedCases = cases.filter(([name]) => /^(SmolLM2|packed|sliding window 150|wide scores)/.test(name));
  for (const [name, P] of emulated ? emulatedCases : cases) for (const { oneSweep, padded, dkvPerHead, staged = false, fullTiles = false, dkvDoutStaged = false, dkvSharedPdS = false, regScores = false } of emulated ? emulatedForms : forms) {
    test(`${name}${oneSweep ? ", one-sweep forward" : ""}${padded ? ", padded tiles" : ""}${dkvPerHead ? ", dk/dv per query head" : ""}${staged ? ", staged tiles" : ""}${fullTiles ? ", full tiles unmasked" : ""}${dkvDoutStaged ? ", dout staged" : ""}${dkvSharedPdS ? ", P and dS in one tile" : ""}${regScores ? ", scores in registers" : ""}`, async () => {
      const x = randomInputs(P);
      const x16 = { q: round16(x.q), k: round16(x.k), v: round16(x.v), dout: round16(x.dout) };
      const ref = attentionRef(P, x16.q, x16.k, x16.v, x16.dout);
      const was = { ...attentionTcForm };
      Object.assign(attentionTcForm, { oneSweep, padded, dkvPerHead, staged, fullTiles, dkvDoutStaged, dkvSharedPdS, regScores });
      const gpu = await runGpu(P, x, true, true).finally(() => { Object.assign(attentionTcForm, was); });
      expect(relError(gpu.out, ref.out)).toBeLessThan(2e-3);
      expect(relError(gpu.lse, ref.lse)).toBeLessThan(1e-5);
      expect(relError(gpu.dq!, ref.dq)).toBeLessThan(2e-3);
      expect(relError(gpu.dk!, ref.dk)).toBeLessThan(2e-3);
      expect(relError(gpu.dv!, ref.dv)).toBeLessThan(2e-3);
      const row = P.nH * P.hd;
      for (let t = 0; t < P.T; t++) {
        if (P.seq[t]! >= 0) continue; // padding: exact zeros
        expect(gpu.out.subarray(t * row, (t + 1) * row).every((v) => v === 0)).toBe(true);
        expect(gpu.lse.subarray(t * P.nH, (t + 1) * P.nH).every((v) => v === 0)).toBe(true);
        expect(gpu.dq!.subarray(t * row, (t + 1) * row).every((v) => v === 0)).toBe(true);
        const kvRow = P.nKV * P.hd;
        expect(gpu.dk!.subarray(t * kvRow, (t + 1) * kvRow).every((v) => v === 0)).toBe(true);
      }
    });
  }
});

// The staged form is chosen only where its workgroup memory fits the device (NVIDIA: 48 KB), so
// stagedAttentionBytes must be exactly what the generated shaders declare.
describe("staged attention tiles: workgroup memory", () => {
  const declared = (code: string) => [...code.matchAll(/var<workgroup> \w+: array<(f32|i32|f16), (\d+)>/g)]
    .reduce((n, m) => n + (m[1] === "f16" ? 2 : 4) * Number(m[2]), 0);
  for (const hd of [64, 128]) for (const padded of [false, true]) for (const pass of ["forward", "dq", "dkv"] as const) {
    test(`${pass}, hd ${hd}${padded ? ", padded" : ""}: the rule's bytes are the shader's`, () => {
      const plain = declared(attentionTcSource(pass, hd, { padded }).code);
      const staged = declared(attentionTcSource(pass, hd, { padded, staged: true }).code);
      expect(staged).toBe(stagedAttentionBytes(pass, hd, padded));
      expect(plain).toBe(plainAttentionBytes(pass, hd, padded)); // tensorCoreAttentionSupported's rule
      if (pass === "forward") expect(declared(attentionTcSource(pass, hd, { padded, oneSweep: false }).code)).toBe(plainAttentionBytes(pass, hd, padded, false));
      if (pass === "dkv") expect(declared(attentionTcSource(pass, hd, { padded, sharePdS: true }).code)).toBe(plainAttentionBytes("dkv-shared", hd, padded));
      expect(staged).toBeGreaterThan(plain); // the staged tiles are added, nothing else changes
    });
  }
  for (const padded of [false, true]) {
    test(`dk/dv with dout staged${padded ? ", padded" : ""}: the rule's bytes are the shader's, q's and dout's tiles, one of P and dS`, () => {
      const both = declared(attentionTcSource("dkv", 64, { padded, staged: true, doutStaged: true }).code);
      const qOnly = declared(attentionTcSource("dkv", 64, { padded, staged: true }).code);
      expect(both).toBe(stagedAttentionBytes("dkv-dout", 64, padded));
      // the dout tile (64 rows of 64 + 8 halves) takes the dS tile's place (64 rows of pLd halves)
      expect(both - qOnly).toBe(64 * 72 * 2 - 64 * (padded ? 72 : 64) * 2);
      expect(stagedAttentionBytes("dkv-dout", 64, true)).toBeLessThanOrEqual(49152);
      const code = attentionTcSource("dkv", 64, { padded, staged: true, doutStaged: true }).code;
      expect(code).not.toContain("&do16"); // every read of dout goes through its staged tile
      expect(code).not.toContain("DSw");
    });
  }
  test("tensor cores on a 32 KiB device: hd 64 with the dk/dv pass sharing its P and dS tile; hd 128 not (its forward needs 43,264 bytes)", () => {
    const on = (limit: number, hd: number) => tensorCoreAttentionSupported({ rt: { caps: {
      ...rt.caps, shaderF16: true, subgroupMatrix: true, subgroupMatrixEmulated: true,
      subgroupMatrixConfigs: [{ componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }],
      limits: { ...rt.caps.limits, maxComputeWorkgroupStorageSize: limit },
    } } } as unknown as Recorder, 64, hd);
    expect(plainAttentionBytes("dkv", 64, true)).toBe(36608);
    expect(plainAttentionBytes("dkv-shared", 64, true)).toBe(27392);
    expect(on(32768, 64)).toBe(true);
    expect(on(32768, 128)).toBe(false);
    expect(on(27391, 64)).toBe(false);
    expect(on(49152, 128)).toBe(true);
  });
  test("hd 64 fits NVIDIA's 48 KB in every pass; hd 128 does not", () => {
    for (const pass of ["forward", "dq", "dkv"] as const) {
      expect(stagedAttentionBytes(pass, 64, true)).toBeLessThanOrEqual(49152);
      expect(stagedAttentionBytes(pass, 128, true)).toBeGreaterThan(49152);
    }
  });
});

// The one-sweep forward's stage diags (measurements only: results wrong by design) each leave out
// exactly their phase of the key-tile loop, and a bad TUNELOOM_ATTN_DIAG is refused.
describe("attention forward stage diags", () => {
  const src = (diag?: AttentionDiag) => attentionTcSource("forward", 64, { padded: true, staged: true, fullTiles: true, diag }).code;
  const count = (code: string, what: string) => code.split(what).length - 1;
  const plain = src();
  const phases: [AttentionDiag, string][] = [
    ["no-softmax", "Pw[r * "], ["no-pv", "pv0 = subgroupMatrixMultiplyAccumulate"], ["no-oupdate", "o[i] = o[i] * alpha"],
    ["no-scores", "acc = subgroupMatrixMultiplyAccumulate(ql0"], ["no-max", "tileMax = max(tileMax, x)"],
  ];
  for (const [diag, marker] of phases) {
    test(`${diag} removes its phase and nothing else`, () => {
      const code = src(diag);
      expect(count(plain, marker)).toBeGreaterThan(0);
      expect(count(code, marker)).toBe(0);
      expect(count(code, "workgroupBarrier();")).toBe(count(plain, "workgroupBarrier();"));
    });
  }
  test("no-stage stores the staged tiles in the first key tile only and loads no further tile", () => {
    const code = src("no-stage");
    expect(code).toContain("if (more && false)");
    expect(code).toMatch(/if \(kt == \(rEnd - 1u\) \/ 64u\) \{\n *\{ let e = lid \+ 0u;[^\n]*st_Ks\[0\]/);
    expect(plain).not.toContain("if (more && false)");
  });
  test("no-barriers keeps the phases and drops the loop body's barriers", () => {
    const code = src("no-barriers");
    for (const [, marker] of phases) expect(count(code, marker)).toBe(count(plain, marker));
    expect(count(code, "workgroupBarrier();")).toBeLessThan(count(plain, "workgroupBarrier();") - 2);
  });
  test("TUNELOOM_ATTN_DIAG names are checked", () => {
    expect(attentionDiagFrom(undefined)).toBeUndefined();
    expect(attentionDiagFrom("no-pv")).toBe("no-pv");
    expect(() => attentionDiagFrom("no-everything")).toThrow(/TUNELOOM_ATTN_DIAG/);
  });
});

describe("dk/dv per query head: the group sum", () => {
  test("(T, nKV·group, hd) partials → (T, nKV, hd) sums, against float64", async () => {
    const T = 37, nKV = 3, group = 4, hd = 16;
    const dkP = randn(T * nKV * group * hd, 1, 3), dvP = randn(T * nKV * group * hd, 1, 4);
    const tk = rt.upload("f32", [T, nKV * group, hd], dkP), tv = rt.upload("f32", [T, nKV * group, hd], dvP);
    const dk = rt.empty("f32", [T, nKV, hd]), dv = rt.empty("f32", [T, nKV, hd]);
    const rec = rt.recorder("group-sum");
    dkvGroupSum(rec, tk, tv, dk, dv, group);
    rec.submit();
    const [gk, gv] = [await rt.read(dk), await rt.read(dv)];
    for (const [got, src] of [[gk, dkP], [gv, dvP]] as const) {
      const want = new Float64Array(T * nKV * hd);
      for (let t = 0; t < T; t++) for (let g = 0; g < nKV; g++) for (let d = 0; d < hd; d++) {
        for (let j = 0; j < group; j++) want[(t * nKV + g) * hd + d]! += src[((t * nKV + g) * group + j) * hd + d]!;
      }
      expect(relError(got, want)).toBeLessThan(1e-6);
    }
    const rec2 = rt.recorder("group-sum-bad");
    expect(() => dkvGroupSum(rec2, tk, tv, dk, rt.empty("f32", [T, nKV, 8]), group)).toThrow(/dkvGroupSum: dv is \(37, 3, 8\), want \(37, 3, 16\)/);
    rec2.release();
    rt.release(tk, tv, dk, dv);
  });
});

describe("gradients match finite differences of the GPU forward", () => {
  test("T=5 (3 + 2 packed), heads 2/1, hd 64: L = Σ out·G", async () => {
    const P = problem(2, 1, 64, packed([3, 2]));
    const x = randomInputs(P); // dout = G
    const loss = async (y: Inputs) => {
      const { out } = await runGpu(P, y, false);
      let L = 0;
      for (let i = 0; i < out.length; i++) L += out[i]! * x.dout[i]!;
      return L;
    };
    const grads = await runGpu(P, x);
    const eps = 1e-2;
    const fd: number[] = [];
    const an: number[] = [];
    for (const [name, grad] of [["q", grads.dq!], ["k", grads.dk!], ["v", grads.dv!]] as const) {
      for (let n = 0; n < 6; n++) {
        const i = (n * 97 + 13) % grad.length;
        const plus = { ...x, [name]: x[name].slice() };
        const minus = { ...x, [name]: x[name].slice() };
        plus[name][i]! += eps;
        minus[name][i]! -= eps;
        fd.push(((await loss(plus)) - (await loss(minus))) / (2 * eps));
        an.push(grad[i]!);
      }
    }
    expect(relError(an, fd)).toBeLessThan(1e-2);
  });
});

describe("long context without T² memory", () => {
  test("T=2048, one head, hd 64: forward + backward allocate nothing O(T²)", async () => {
    const P = problem(1, 1, 64, packed([1500, 540], 8));
    const { T, hd } = P;
    const x = randomInputs(P);
    rt.trimPool();
    rt.memory.resetPeak();
    const t = {
      q: rt.upload("f32", [T, 1, hd], x.q), k: rt.upload("f32", [T, 1, hd], x.k), v: rt.upload("f32", [T, 1, hd], x.v),
      seqId: rt.upload("i32", [T], P.seq), dout: rt.upload("f32", [T, 1, hd], x.dout),
      out: rt.empty("f32", [T, 1, hd]), lse: rt.empty("f32", [T, 1]), dsum: rt.empty("f32", [T, 1]),
      dq: rt.empty("f32", [T, 1, hd]), dk: rt.empty("f32", [T, 1, hd]), dv: rt.empty("f32", [T, 1, hd]),
    };
    const tensorsBytes = rt.memory.liveBytes;
    const rec = rt.recorder("attention T=2048");
    attentionForward(rec, { ...t, tensorCores: false });
    attentionBackward(rec, { ...t, tensorCores: false });
    rec.submit();
    const out = await rt.read(t.out);
    const dv = await rt.read(t.dv);
    const T2 = T * T * 1 * 4;
    // Measured from the live bytes before recording (other test files of the same process may
    // still hold buffers): uniforms only, far below one T² score matrix.
    expect(rt.memory.peakBytes - tensorsBytes).toBeLessThan(256 * 1024);
    expect(256 * 1024).toBeLessThan(T2 / 32);
    // spot-check rows against the reference on a short problem with the same tail sequence
    const tail = problem(1, 1, 64, packed([540], 8));
    const off = 1500 * hd;
    const ref = attentionRef(tail, x.q.slice(off), x.k.slice(off), x.v.slice(off), x.dout.slice(off));
    expect(relError(out.subarray(off), ref.out)).toBeLessThan(1e-5);
    expect(relError(dv.subarray(off), ref.dv)).toBeLessThan(1e-5);
    expect(dv.every(Number.isFinite)).toBe(true);
    rec.release();
    rt.release(...Object.values(t));
  }, 120_000);
});

// ------------------------------------------------------------------ decode

describe("decode against the last row of full attention", () => {
  const nH = 14, nKV = 2, maxT = 96;
  // three sequences in their own cache slots (continuous batching), different lengths
  const slots = [{ offset: 0, len: 37 }, { offset: 40, len: 1 }, { offset: 50, len: 46 }];

  async function decodeCase(opts: { dtype: "f32" | "f16"; splits?: number; window?: number; maxLength?: number; auto?: boolean; hd?: number; dispatches?: number }) {
    const B = slots.length, hd = opts.hd ?? 64;
    const seqs = slots.map((s) => {
      const P = problem(nH, nKV, hd, packed([s.len]), { window: opts.window ?? 0 });
      const x = randomInputs(P);
      if (opts.dtype === "f16") { // the cache holds f16: the reference uses the stored values
        x.k = fromF16Bits(toF16Bits(x.k));
        x.v = fromF16Bits(toF16Bits(x.v));
      }
      const ref = attentionRef(P, x.q, x.k, x.v);
      return { P, x, ref };
    });
    const cacheBytes = [maxT, nKV, hd];
    const kCache = rt.zeros(opts.dtype, cacheBytes), vCache = rt.zeros(opts.dtype, cacheBytes);
    const rec = rt.recorder("decode test");
    const temps: Tensor[] = [];
    const up = (dtype: "f32" | "i32" | "u32", shape: number[], data: ArrayBufferView) => {
      const t = rt.upload(dtype, shape, data);
      temps.push(t);
      return t;
    };
    // prefill: every token but the last of each sequence, in one append (packed rows)
    const rows = nKV * hd;
    const prefill = seqs.flatMap((s, b) => Array.from({ length: s.P.T - 1 }, (_, t) => ({ b, t })));
    const kPre = new Float32Array(prefill.length * rows), vPre = new Float32Array(prefill.length * rows);
    prefill.forEach(({ b, t }, n) => {
      kPre.set(seqs[b]!.x.k.subarray(t * rows, (t + 1) * rows), n * rows);
      vPre.set(seqs[b]!.x.v.subarray(t * rows, (t + 1) * rows), n * rows);
    });
    if (prefill.length) {
      kvCacheAppend(rec, {
        kNew: up("f32", [prefill.length, nKV, hd], kPre), vNew: up("f32", [prefill.length, nKV, hd], vPre),
        positions: up("i32", [prefill.length], Int32Array.from(prefill, ({ b, t }) => slots[b]!.offset + t)),
        kCache, vCache,
      });
    }
    // decode step: append each sequence's newest token (plus one skipped row), then attend
    const kNew = new Float32Array((B + 1) * rows), vNew = new Float32Array((B + 1) * rows), qNew = new Float32Array(B * nH * hd);
    seqs.forEach((s, b) => {
      const t = s.P.T - 1;
      kNew.set(s.x.k.subarray(t * rows, (t + 1) * rows), b * rows);
      vNew.set(s.x.v.subarray(t * rows, (t + 1) * rows), b * rows);
      qNew.set(s.x.q.subarray(t * nH * hd, (t + 1) * nH * hd), b * nH * hd);
    });
    kNew.fill(1e9, B * rows); // must never land in the cache
    kvCacheAppend(rec, {
      kNew: up("f32", [B + 1, nKV, hd], kNew), vNew: up("f32", [B + 1, nKV, hd], vNew),
      positions: up("i32", [B + 1], Int32Array.from([...slots.map((s) => s.offset + s.len - 1), -1])),
      kCache, vCache,
    });
    const out = rt.empty("f32", [B, nH, hd]), lse = rt.empty("f32", [B, nH]);
    const splits = opts.splits ?? 1;
    const scratch = splits > 1 || opts.auto ? rt.empty("f32", [attentionDecodeScratchSize(B, nH, hd, opts.auto ? 8 : splits)]) : undefined;
    const before = rec.length;
    attentionDecode(rec, {
      q: up("f32", [B, nH, hd], qNew), kCache, vCache,
      offsets: up("u32", [B], Uint32Array.from(slots, (s) => s.offset)),
      lengths: up("u32", [B], Uint32Array.from(slots, (s) => s.len)),
      out, lse, window: opts.window, splits: opts.auto ? undefined : splits, scratch, maxLength: opts.maxLength,
    });
    if (opts.dispatches !== undefined) expect(rec.length - before).toBe(opts.dispatches);
    rec.submit();
    const got = await rt.read(out), gotLse = await rt.read(lse);
    const refOut = new Float64Array(B * nH * hd), refLse = new Float64Array(B * nH);
    seqs.forEach((s, b) => {
      const t = s.P.T - 1;
      refOut.set(s.ref.out.subarray(t * nH * hd, (t + 1) * nH * hd), b * nH * hd);
      refLse.set(s.ref.lse.subarray(t * nH, (t + 1) * nH), b * nH);
    });
    expect(relError(got, refOut)).toBeLessThan(1e-5);
    expect(relError(gotLse, refLse)).toBeLessThan(1e-5);
    rec.release();
    rt.release(kCache, vCache, out, lse, scratch, ...temps);
  }

  test("f32 cache, one pass", () => decodeCase({ dtype: "f32" }));
  test("f32 cache, split-K 4 (flash-decoding) with a low length hint", () => decodeCase({ dtype: "f32", splits: 4, maxLength: 20 }));
  test("f32 cache, sliding window 9, split-K 3", () => decodeCase({ dtype: "f32", splits: 3, window: 9 }));
  test("f16 cache", () => decodeCase({ dtype: "f16", splits: 2 }));
  // head dim 128 (Llama-3.1-8B's): 16 chunks of 4 f32 per thread and tile, 8 of 8 f16 (stageTile)
  test("head dim 128, f32 cache, one pass", () => decodeCase({ dtype: "f32", hd: 128 }));
  test("head dim 128, f16 cache, split-K 3", () => decodeCase({ dtype: "f16", hd: 128, splits: 3 }));
  test("f32 cache, splits chosen automatically (3 of 32 keys: maxT 96)", () => decodeCase({ dtype: "f32", auto: true, dispatches: 2 }));
  // decodeSplitKeys (TUNELOOM_DECODE_SPLIT_KEYS): at least 96 keys a split leaves maxT 96 in one pass, no combine
  test("f32 cache, splits chosen automatically with at least 96 keys each: one pass", async () => {
    const was = decodeSplitKeys.min;
    decodeSplitKeys.min = 96;
    try {
      await decodeCase({ dtype: "f32", auto: true, dispatches: 1 });
    } finally {
      decodeSplitKeys.min = was;
    }
  });
});

describe("argument checks name the kernel", () => {
  test("shape and head mismatches", () => {
    const rec = rt.recorder();
    const q = rt.empty("f32", [4, 6, 64]), k = rt.empty("f32", [4, 4, 64]), seqId = rt.empty("i32", [4]);
    const out = rt.empty("f32", [4, 6, 64]), lse = rt.empty("f32", [4, 6]);
    expect(() => attentionForward(rec, { q, k, v: k, seqId, out, lse })).toThrow(/attentionForward: 6 query heads are not a multiple of 4/);
    const k2 = rt.empty("f32", [4, 3, 64]);
    expect(() => attentionForward(rec, { q, k: k2, v: k2, seqId, out, lse: out })).toThrow(/attentionForward: lse must have shape \[4, 6\]/);
    rt.release(q, k, seqId, out, lse, k2);
  });
});
