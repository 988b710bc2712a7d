import { afterAll, describe, expect, test } from "bun:test";
import { getRuntime, swigluBackward, swigluBackwardInPlace, swigluForward, toF16 } from "../src/index.ts";
import { randn, relError } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

const sigmoid = (g: number) => 1 / (1 + Math.exp(-g));

function swigluRef(gate: ArrayLike<number>, up: ArrayLike<number>) {
  return Float64Array.from({ length: gate.length }, (_, i) => gate[i]! * sigmoid(gate[i]!) * up[i]!);
}

function swigluBackwardRef(gate: ArrayLike<number>, up: ArrayLike<number>, dh: ArrayLike<number>) {
  const n = gate.length;
  const dgate = new Float64Array(n), dup = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const g = gate[i]!, s = sigmoid(g);
    dup[i] = dh[i]! * g * s;
    dgate[i] = dh[i]! * up[i]! * s * (1 + g * (1 - s));
  }
  return { dgate, dup };
}

/** Gate pre-activations: mostly N(0, 2), with a few saturating ones (σ → 0 or 1, exp must not overflow). */
function gateValues(n: number) {
  const g = randn(n, 2);
  for (let i = 0; i < n; i += 97) g[i] = (i % 2 ? 1 : -1) * (30 + (i % 200));
  return g;
}

// (T, I): SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B intermediate sizes, T scaled down, and odd sizes.
const cases: [number, number][] = [[1, 1536], [7, 1536], [129, 1536], [7, 4864], [1, 8192], [7, 8192], [3, 1001], [1, 13]];

describe("swiglu against float64", () => {
  for (const [T, I] of cases) {
    test(`T=${T} I=${I}: forward, backward, beta=1`, async () => {
      const n = T * I;
      const gate = gateValues(n), up = randn(n), dh = randn(n), prevG = randn(n), prevU = randn(n);
      const tg = rt.upload("f32", [T, I], gate), tu = rt.upload("f32", [T, I], up), tdh = rt.upload("f32", [T, I], dh);
      const th = rt.empty("f32", [T, I]), tdg = rt.empty("f32", [T, I]), tdu = rt.empty("f32", [T, I]);
      const tdgAcc = rt.upload("f32", [T, I], prevG), tduAcc = rt.upload("f32", [T, I], prevU);
      const rec = rt.recorder();
      swigluForward(rec, tg, tu, th);
      swigluBackward(rec, tg, tu, tdh, tdg, tdu);
      swigluBackward(rec, tg, tu, tdh, tdgAcc, tduAcc, 1);
      // In place: copies of gate and up become dgate and dup.
      const tgIn = rt.upload("f32", [T, I], gate), tuIn = rt.upload("f32", [T, I], up);
      swigluBackwardInPlace(rec, tgIn, tuIn, tdh);
      rec.submit();
      const ref = swigluBackwardRef(gate, up, dh);
      expect(relError(await rt.read(th), swigluRef(gate, up))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdg), ref.dgate)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdu), ref.dup)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdgAcc), ref.dgate.map((v, i) => v + prevG[i]!))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tduAcc), ref.dup.map((v, i) => v + prevU[i]!))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tgIn), ref.dgate)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tuIn), ref.dup)).toBeLessThan(1e-5);
      rec.release();
      rt.release(tg, tu, tdh, th, tdg, tdu, tdgAcc, tduAcc, tgIn, tuIn);
    });
  }
});

describe("swiglu's fused 16-bit copies", () => {
  // Four-wide (fused) and odd sizes (the f32 kernel then a conversion): the copies must be the bits
  // of a separate f32 → f16 conversion of the f32 outputs, which must be unchanged.
  for (const [T, I] of [[7, 1536], [129, 8192], [3, 1001], [1, 13]] as [number, number][]) {
    test(`T=${T} I=${I}: h16, dgate16, dup16 are toF16 of h, dgate, dup`, async () => {
      const n = T * I;
      const gate = gateValues(n), up = randn(n), dh = randn(n);
      const tg = rt.upload("f32", [T, I], gate), tu = rt.upload("f32", [T, I], up), tdh = rt.upload("f32", [T, I], dh);
      const th = rt.empty("f32", [T, I]), th16 = rt.empty("f16", [T, I]);
      const dg16 = rt.empty("f16", [T, I]), du16 = rt.empty("f16", [T, I]);
      const rec = rt.recorder();
      swigluForward(rec, tg, tu, th, th16);
      const hRef16 = toF16(rec, th);
      swigluBackwardInPlace(rec, tg, tu, tdh, { dgate: dg16, dup: du16 });
      const dgRef16 = toF16(rec, tg), duRef16 = toF16(rec, tu);
      rec.submit();
      const ref = swigluBackwardRef(gate, up, dh);
      expect(relError(await rt.read(th), swigluRef(gate, up))).toBeLessThan(1e-5);
      expect(relError(await rt.read(tg), ref.dgate)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tu), ref.dup)).toBeLessThan(1e-5);
      const bits = async (t: typeof th16) => new Uint16Array(await rt.readBytes(t));
      for (const [fused, separate] of [[th16, hRef16], [dg16, dgRef16], [du16, duRef16]] as const) {
        const a = await bits(fused), b = await bits(separate);
        expect(a.some((x) => x !== 0)).toBe(true);
        expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
      }
      // f16 rounding of the forward: within half an f16 ulp of h (relative 2⁻¹¹)
      expect(relError(await rt.read(th16), swigluRef(gate, up))).toBeLessThan(2e-3);
      rec.release();
      rt.release(tg, tu, tdh, th, th16, dg16, du16);
    });
  }
});

test("swiglu gradient against finite differences of the GPU forward", async () => {
  // L = Σ h(gate, up)·r; backward with dh = r must give dL/d(gate, up)·v.
  const [T, I] = [7, 1536];
  const n = T * I;
  const gate = randn(n, 2), up = randn(n), r = randn(n), vg = randn(n), vu = randn(n);
  const eps = 1e-3; // truncation error ~eps² stays far below f32 round-off of the loss difference
  const step = (x: Float32Array, v: Float32Array, s: number) => x.map((xi, i) => xi + s * eps * v[i]!);
  const gp = step(gate, vg, 1), gm = step(gate, vg, -1), up_p = step(up, vu, 1), up_m = step(up, vu, -1);
  const loss = async (g: Float32Array, u: Float32Array) => {
    const tg = rt.upload("f32", [T, I], g), tu = rt.upload("f32", [T, I], u), th = rt.empty("f32", [T, I]);
    const rec = rt.recorder();
    swigluForward(rec, tg, tu, th);
    rec.submit();
    const h = await rt.read(th);
    rec.release();
    rt.release(tg, tu, th);
    let s = 0;
    for (let i = 0; i < n; i++) s += h[i]! * r[i]!;
    return s;
  };
  const fd = (await loss(gp, up_p)) - (await loss(gm, up_m));
  const tg = rt.upload("f32", [T, I], gate), tu = rt.upload("f32", [T, I], up), tr = rt.upload("f32", [T, I], r);
  const tdg = rt.empty("f32", [T, I]), tdu = rt.empty("f32", [T, I]);
  const rec = rt.recorder();
  swigluBackward(rec, tg, tu, tr, tdg, tdu);
  rec.submit();
  const [dg, du] = [await rt.read(tdg), await rt.read(tdu)];
  let analytic = 0, scale = 0;
  for (let i = 0; i < n; i++) {
    const t = dg[i]! * (gp[i]! - gm[i]!) + du[i]! * (up_p[i]! - up_m[i]!);
    analytic += t;
    scale += Math.abs(dg[i]! * (gp[i]! - gm[i]!)) + Math.abs(du[i]! * (up_p[i]! - up_m[i]!));
  }
  // Relative to the terms' magnitudes: the signed sum can nearly cancel by chance.
  expect(Math.abs(fd - analytic) / scale).toBeLessThan(1e-3);
  rec.release();
  rt.release(tg, tu, tr, tdg, tdu);
});

test("swiglu size mismatch names the kernel", () => {
  const a = rt.empty("f32", [2, 8]), b = rt.empty("f32", [2, 7]), c = rt.empty("f32", [2, 8]);
  expect(() => swigluForward(rt.recorder(), a, b, c)).toThrow(/swigluForward: up has 14 elements, gate has 16/);
  rt.release(a, b, c);
});
