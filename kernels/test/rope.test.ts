import { afterAll, describe, expect, test } from "bun:test";
import { convertTensor, getRuntime, kvCacheAppend, ropeAppendFits, ropeBackward, ropeForward, ropeForwardAppend, ropeForwardF16, ropeInvFreq, type RopeConfig } from "../src/index.ts";
import { randn, relError, rng } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

/**
 * float64 rotation of x (T, nH, hd) by sign·θ, θ = fround(pos·invFreq[i]): transformers
 * computes θ in f32 (one rounding), and the kernel must match that θ, then rotate exactly.
 */
function ropeRef(x: ArrayLike<number>, T: number, nH: number, hd: number, pos: Int32Array, invFreq: Float32Array, sign = 1) {
  const half = hd / 2;
  const out = new Float64Array(T * nH * hd);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nH; h++) {
      const base = (t * nH + h) * hd;
      for (let i = 0; i < half; i++) {
        const theta = Math.fround(pos[t]! * invFreq[i]!);
        const c = Math.cos(theta), s = sign * Math.sin(theta);
        const x0 = x[base + i]!, x1 = x[base + i + half]!;
        out[base + i] = x0 * c - x1 * s;
        out[base + i + half] = x1 * c + x0 * s;
      }
    }
  }
  return out;
}

/** Positions of packed sequences: each restarts at 0. */
function packedPositions(T: number, seed: number): Int32Array {
  const r = rng(seed);
  const pos = new Int32Array(T);
  let p = 0;
  for (let t = 0; t < T; t++) {
    pos[t] = p++;
    if (r.uniform() < 0.05) p = 0;
  }
  return pos;
}

const llama32_1b: RopeConfig = {
  headDim: 64, ropeTheta: 500000,
  ropeScaling: { type: "llama3", factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
};

describe("ropeInvFreq", () => {
  test("default: 1/theta^(2i/hd)", () => {
    const inv = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: null });
    expect(inv.length).toBe(32);
    for (let i = 0; i < 32; i++) expect(inv[i]).toBe(Math.fround(10000 ** (-(2 * i) / 64)));
  });

  test("linear: inv_freq / factor", () => {
    const plain = ropeInvFreq({ headDim: 64, ropeTheta: 1e6, ropeScaling: null });
    const lin = ropeInvFreq({ headDim: 64, ropeTheta: 1e6, ropeScaling: { type: "linear", factor: 4 } });
    for (let i = 0; i < 32; i++) expect(Math.abs(lin[i]! - plain[i]! / 4)).toBeLessThanOrEqual(plain[i]! * 2 ** -23);
  });

  test("llama3 (Llama-3.2-1B) matches transformers' _compute_llama3_parameters", () => {
    // transformers' formulas evaluated in float32 (numpy), as transformers does in torch.
    const hf = [1.0, 0.6636012196540833, 0.44036662578582764, 0.2922278046607971, 0.193922758102417, 0.12868738174438477,
      0.08539710193872452, 0.05666961893439293, 0.03760603070259094, 0.02495540864765644, 0.016560440883040428,
      0.010989529080688953, 0.00729266507551074, 0.00483942124992609, 0.0032114461064338684, 0.0012905480107292533,
      0.000429556705057621, 9.708286233944818e-05, 1.9461638657958247e-05, 1.2914768376504071e-05, 8.570255886297673e-06,
      5.687231805495685e-06, 3.7740544485131977e-06, 2.5044669200724456e-06, 1.6619676443951903e-06, 1.1028836297555245e-06,
      7.318749339901842e-07, 4.856731266045244e-07, 3.2229328894572973e-07, 2.1387423032592778e-07, 1.4192720243499934e-07,
      9.41830720080361e-08];
    const inv = ropeInvFreq(llama32_1b);
    // float64 vs transformers' float32 evaluation: a few ulps apart at most.
    for (let i = 0; i < 32; i++) expect(Math.abs(inv[i]! - hf[i]!) / hf[i]!).toBeLessThan(1e-6);
  });

  test("unsupported scaling and odd head_dim fail fast", () => {
    expect(() => ropeInvFreq({ headDim: 63, ropeTheta: 1e4, ropeScaling: null })).toThrow(/even/);
    expect(() => ropeInvFreq({ headDim: 64, ropeTheta: 1e4, ropeScaling: { type: "yarn" } as never })).toThrow(/unsupported rope scaling type 'yarn'/);
  });
});

// (T, nQ, nK, hd): SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B heads with T scaled down, and an
// odd head dim (hd/2 = 5).
const shapes: [number, number, number, number][] = [[7, 9, 3, 64], [129, 14, 2, 64], [1, 32, 8, 64], [129, 3, 1, 10]];

describe("rope against float64", () => {
  for (const [T, nQ, nK, hd] of shapes) {
    test(`T=${T} heads=${nQ}/${nK} hd=${hd}: forward and backward in place`, async () => {
      const q = randn(T * nQ * hd), k = randn(T * nK * hd);
      const pos = packedPositions(T, T * 31 + nQ);
      const inv = ropeInvFreq(hd === 64 ? llama32_1b : { headDim: hd, ropeTheta: 10000, ropeScaling: null });
      const tq = rt.upload("f32", [T, nQ, hd], q), tk = rt.upload("f32", [T, nK, hd], k);
      const tdq = rt.upload("f32", [T, nQ, hd], q), tdk = rt.upload("f32", [T, nK, hd], k);
      const tpos = rt.upload("i32", [T], pos), tinv = rt.upload("f32", [hd / 2], inv);
      const rec = rt.recorder();
      ropeForward(rec, { q: tq, k: tk, positions: tpos, invFreq: tinv });
      ropeBackward(rec, { q: tdq, k: tdk, positions: tpos, invFreq: tinv });
      rec.submit();
      expect(relError(await rt.read(tq), ropeRef(q, T, nQ, hd, pos, inv))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tk), ropeRef(k, T, nK, hd, pos, inv))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdq), ropeRef(q, T, nQ, hd, pos, inv, -1))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdk), ropeRef(k, T, nK, hd, pos, inv, -1))).toBeLessThan(1e-5);
      rec.release();
      rt.release(tq, tk, tdq, tdk, tpos, tinv);
    });
  }

  test("out of place leaves q, k unchanged; q alone; backward undoes forward", async () => {
    const [T, nQ, nK, hd] = [7, 9, 3, 64];
    const q = randn(T * nQ * hd), k = randn(T * nK * hd);
    const pos = Int32Array.from({ length: T }, (_, t) => 100 * t + 3);
    const inv = ropeInvFreq({ headDim: hd, ropeTheta: 1e6, ropeScaling: null });
    const tq = rt.upload("f32", [T, nQ, hd], q), tk = rt.upload("f32", [T, nK, hd], k);
    const tqOut = rt.empty("f32", [T, nQ, hd]), tkOut = rt.empty("f32", [T, nK, hd]);
    const tqOnly = rt.upload("f32", [T, nQ, hd], q), tback = rt.empty("f32", [T, nQ, hd]);
    const tpos = rt.upload("i32", [T], pos), tinv = rt.upload("f32", [hd / 2], inv);
    const rec = rt.recorder();
    ropeForward(rec, { q: tq, k: tk, positions: tpos, invFreq: tinv, qOut: tqOut, kOut: tkOut });
    ropeForward(rec, { q: tqOnly, positions: tpos, invFreq: tinv });
    ropeBackward(rec, { q: tqOut, positions: tpos, invFreq: tinv, qOut: tback });
    rec.submit();
    expect(relError(await rt.read(tq), q)).toBe(0);
    expect(relError(await rt.read(tk), k)).toBe(0);
    const qRef = ropeRef(q, T, nQ, hd, pos, inv);
    expect(relError(await rt.read(tqOut), qRef)).toBeLessThan(1e-5);
    expect(relError(await rt.read(tkOut), ropeRef(k, T, nK, hd, pos, inv))).toBeLessThan(1e-5);
    expect(relError(await rt.read(tqOnly), qRef)).toBeLessThan(1e-5);
    expect(relError(await rt.read(tback), q)).toBeLessThan(1e-5);
    rec.release();
    rt.release(tq, tk, tqOut, tkOut, tqOnly, tback, tpos, tinv);
  });

  test("large positions: cos/sin of the f32 angle stay accurate up to 2^23", async () => {
    // The angle pos·inv_freq[0] = pos reaches ~8e6 rad: GPU sin/cos builtins are unspecified
    // there; the kernel's own range reduction must hold the error at f32 level.
    const T = 129, nQ = 2, hd = 64;
    const r = rng(12345);
    const pos = Int32Array.from({ length: T }, (_, t) => (t === 0 ? 2 ** 23 : r.int(0, t % 2 ? 2 ** 20 : 2 ** 23)));
    const inv = ropeInvFreq({ headDim: hd, ropeTheta: 10000, ropeScaling: null });
    const q = randn(T * nQ * hd);
    const tq = rt.upload("f32", [T, nQ, hd], q);
    const tpos = rt.upload("i32", [T], pos), tinv = rt.upload("f32", [hd / 2], inv);
    const rec = rt.recorder();
    ropeForward(rec, { q: tq, positions: tpos, invFreq: tinv });
    rec.submit();
    const out = await rt.read(tq);
    const ref = ropeRef(q, T, nQ, hd, pos, inv);
    expect(relError(out, ref)).toBeLessThan(1e-6);
    let maxAbs = 0;
    for (let i = 0; i < out.length; i++) maxAbs = Math.max(maxAbs, Math.abs(out[i]! - ref[i]!));
    expect(maxAbs).toBeLessThan(5e-6);
    rec.release();
    rt.release(tq, tpos, tinv);
  });
});

test("rope gradient against finite differences of the GPU forward", async () => {
  // L(q, k) = Σ rope(q)·rq + Σ rope(k)·rk; backward with (rq, rk) must give dL/d(q, k)·v.
  const [T, nQ, nK, hd] = [7, 9, 3, 64];
  const q = randn(T * nQ * hd), k = randn(T * nK * hd), rq = randn(T * nQ * hd), rk = randn(T * nK * hd);
  const vq = randn(T * nQ * hd), vk = randn(T * nK * hd);
  const pos = packedPositions(T, 77);
  const tpos = rt.upload("i32", [T], pos), tinv = rt.upload("f32", [hd / 2], ropeInvFreq(llama32_1b));
  const eps = 1e-2;
  const step = (x: Float32Array, v: Float32Array, s: number) => x.map((xi, i) => xi + s * eps * v[i]!);
  const loss = async (qs: Float32Array, ks: Float32Array) => {
    const tq = rt.upload("f32", [T, nQ, hd], qs), tk = rt.upload("f32", [T, nK, hd], ks);
    const rec = rt.recorder();
    ropeForward(rec, { q: tq, k: tk, positions: tpos, invFreq: tinv });
    rec.submit();
    const [oq, ok] = [await rt.read(tq), await rt.read(tk)];
    rec.release();
    rt.release(tq, tk);
    let s = 0;
    for (let i = 0; i < oq.length; i++) s += oq[i]! * rq[i]!;
    for (let i = 0; i < ok.length; i++) s += ok[i]! * rk[i]!;
    return s;
  };
  const qp = step(q, vq, 1), qm = step(q, vq, -1), kp = step(k, vk, 1), km = step(k, vk, -1);
  const fd = (await loss(qp, kp)) - (await loss(qm, km));
  const tdq = rt.upload("f32", [T, nQ, hd], rq), tdk = rt.upload("f32", [T, nK, hd], rk);
  const rec = rt.recorder();
  ropeBackward(rec, { q: tdq, k: tdk, positions: tpos, invFreq: tinv });
  rec.submit();
  const [dq, dk] = [await rt.read(tdq), await rt.read(tdk)];
  let analytic = 0, scale = 0;
  for (let i = 0; i < dq.length; i++) { analytic += dq[i]! * (qp[i]! - qm[i]!); scale += Math.abs(dq[i]! * (qp[i]! - qm[i]!)); }
  for (let i = 0; i < dk.length; i++) { analytic += dk[i]! * (kp[i]! - km[i]!); scale += Math.abs(dk[i]! * (kp[i]! - km[i]!)); }
  // Relative to the terms' magnitudes: the signed sum can nearly cancel by chance.
  expect(Math.abs(fd - analytic) / scale).toBeLessThan(1e-3);
  rec.release();
  rt.release(tdq, tdk, tpos, tinv);
});

test("rope shape errors name the kernel", () => {
  const tq = rt.empty("f32", [4, 2, 8]), tk = rt.empty("f32", [4, 1, 6]);
  const tpos = rt.empty("i32", [4]), tinv = rt.empty("f32", [4]);
  const rec = rt.recorder();
  expect(() => ropeForward(rec, { q: tq, k: tk, positions: tpos, invFreq: tinv })).toThrow(/ropeForward: k must be \(4, nK, 8\)/);
  rt.release(tq, tk, tpos, tinv);
});

// The fused forward + cache append (a KV-cache layer's rope): the same bits as ropeForward then
// kvCacheAppend, for f32 and f16 caches, rows skipped (−1) or past the cache, and the head dims of
// the model families (64, 128) and a small one.
describe("ropeForwardAppend equals ropeForward then kvCacheAppend, bit for bit", () => {
  for (const hd of [16, 64, 128]) {
    for (const dtype of ["f32", "f16"] as const) {
      test(`hd ${hd}, ${dtype} cache`, async () => {
        const T = 5, nQ = 4, nK = 2, maxT = 12;
        const inv = ropeInvFreq({ headDim: hd, ropeTheta: 10000, ropeScaling: null });
        const q = randn(T * nQ * hd), k = randn(T * nK * hd), v = randn(T * nK * hd);
        const pos = Int32Array.from([0, 1, 7, 300, 2]), rowIdx = Int32Array.from([3, -1, 11, 0, 12]); // 12 ≥ maxT: skipped
        const cache0 = randn(maxT * nK * hd);
        const run = async (fused: boolean) => {
          const tq = rt.upload("f32", [T, nQ, hd], q), tk = rt.upload("f32", [T, nK, hd], k), tv = rt.upload("f32", [T, nK, hd], v);
          const tp = rt.upload("i32", [T], pos), ti = rt.upload("f32", [hd / 2], inv), tr = rt.upload("i32", [T], rowIdx);
          const kc = rt.upload("f32", [maxT, nK, hd], cache0), vc = rt.upload("f32", [maxT, nK, hd], cache0);
          const kCache = dtype === "f32" ? kc : rt.zeros("f16", [maxT, nK, hd]), vCache = dtype === "f32" ? vc : rt.zeros("f16", [maxT, nK, hd]);
          const rec = rt.recorder("rope append test");
          if (fused) ropeForwardAppend(rec, { q: tq, k: tk, v: tv, positions: tp, invFreq: ti, rows: tr, kCache, vCache });
          else {
            ropeForward(rec, { q: tq, k: tk, positions: tp, invFreq: ti });
            kvCacheAppend(rec, { kNew: tk, vNew: tv, positions: tr, kCache, vCache });
          }
          rec.submit();
          const out = { q: await rt.read(tq), k: await rt.read(tk), kc: await rt.read(kCache), vc: await rt.read(vCache) };
          rec.release();
          rt.release(tq, tk, tv, tp, ti, tr, kc, vc);
          if (dtype === "f16") rt.release(kCache, vCache);
          return out;
        };
        const [a, b] = [await run(true), await run(false)];
        for (const key of ["q", "k", "kc", "vc"] as const) expect(Array.from(a[key])).toEqual(Array.from(b[key]));
        // the rotation itself (not only agreement): q against float64
        expect(relError(a.q, ropeRef(q, T, nQ, hd, pos, inv))).toBeLessThan(1e-6);
      });
    }
  }
  test("head dims that are not a multiple of 4 are refused (callers fall back to the two dispatches)", () => {
    expect(ropeAppendFits(6)).toBe(false);
    expect(ropeAppendFits(64)).toBe(true);
    const rec = rt.recorder("rope append refusal");
    const held: ReturnType<typeof rt.zeros>[] = [];
    const z = (dtype: "f32" | "i32", shape: number[]) => { const t = rt.zeros(dtype, shape); held.push(t); return t; };
    expect(() => ropeForwardAppend(rec, { q: z("f32", [1, 1, 6]), k: z("f32", [1, 1, 6]), v: z("f32", [1, 1, 6]), positions: z("i32", [1]), invFreq: z("f32", [3]), rows: z("i32", [1]), kCache: z("f32", [2, 1, 6]), vCache: z("f32", [2, 1, 6]) })).toThrow("multiple of 4");
    rec.release();
    rt.release(...held);
  });
});

// The rotation with the tensor-core attention's f16 inputs written in the same dispatch: the bits of
// ropeForward then toF16 of q, k and v (f16 storage needs shader-f16 for toF16's read-back only).
describe("ropeForwardF16 equals ropeForward then toF16 of q, k and v, bit for bit", () => {
  for (const hd of [16, 64, 128]) {
    test(`hd ${hd}`, async () => {
      const T = 5, nQ = 6, nK = 2;
      const inv = ropeInvFreq({ headDim: hd, ropeTheta: 500000, ropeScaling: null });
      // values that round differently in f16 (ties, tiny and huge magnitudes) among normal ones
      const q = randn(T * nQ * hd).map((x, i) => (i % 17 === 3 ? x * 1e-6 : i % 23 === 5 ? x * 7e4 : x));
      const k = randn(T * nK * hd), v = randn(T * nK * hd).map((x, i) => (i % 13 === 1 ? x * 1e5 : x));
      const pos = Int32Array.from([0, 1, 7, 3000, 2]);
      const run = async (fused: boolean) => {
        const tq = rt.upload("f32", [T, nQ, hd], q), tk = rt.upload("f32", [T, nK, hd], k), tv = rt.upload("f32", [T, nK, hd], v);
        const tp = rt.upload("i32", [T], pos), ti = rt.upload("f32", [hd / 2], inv);
        const q16 = rt.zeros("f16", [T, nQ, hd]), k16 = rt.zeros("f16", [T, nK, hd]), v16 = rt.zeros("f16", [T, nK, hd]);
        const rec = rt.recorder("rope f16 test");
        if (fused) ropeForwardF16(rec, { q: tq, k: tk, v: tv, positions: tp, invFreq: ti, q16, k16, v16 });
        else {
          ropeForward(rec, { q: tq, k: tk, positions: tp, invFreq: ti });
          for (const [src, dst] of [[tq, q16], [tk, k16], [tv, v16]] as const) convertTensor(rec, src, dst);
        }
        rec.submit();
        const bits = async (t: typeof q16) => Array.from(new Uint32Array((await rt.readU32(t)).buffer));
        const out = { q: Array.from(await rt.read(tq)), k: Array.from(await rt.read(tk)), q16: await bits(q16), k16: await bits(k16), v16: await bits(v16) };
        rec.release();
        rt.release(tq, tk, tv, tp, ti, q16, k16, v16);
        return out;
      };
      const [a, b] = [await run(true), await run(false)];
      for (const key of ["q", "k", "q16", "k16", "v16"] as const) expect(a[key]).toEqual(b[key]);
      expect(a.v16.some((w) => w !== 0)).toBe(true);
    });
  }
  test("head dims that are not a multiple of 4 are refused", () => {
    const held: ReturnType<typeof rt.zeros>[] = [];
    const z = (dtype: "f32" | "i32" | "f16", shape: number[]) => { const t = rt.zeros(dtype, shape); held.push(t); return t; };
    const rec = rt.recorder("rope f16 refusal");
    expect(() => ropeForwardF16(rec, { q: z("f32", [1, 1, 6]), k: z("f32", [1, 1, 6]), v: z("f32", [1, 1, 6]), positions: z("i32", [1]), invFreq: z("f32", [3]), q16: z("f16", [1, 1, 6]), k16: z("f16", [1, 1, 6]), v16: z("f16", [1, 1, 6]) })).toThrow("multiple of 4");
    rec.release();
    rt.release(...held);
  });
});
