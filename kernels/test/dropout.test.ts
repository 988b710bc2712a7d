import { afterAll, describe, expect, test } from "bun:test";
import { dropoutBackward, dropoutForward, dropoutSeed, dropoutThreshold, getRuntime } from "../src/index.ts";
import { randn, relError } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

/**
 * The keep mask on the CPU, from the published PCG hash (Jarzynski & Olano 2020) written out
 * here independently of the kernel: keep(i) = pcg(pcg(i) + pcg(seed)) ≥ round(p·2³²).
 */
function pcg(v: number): number {
  const state = Number((BigInt(v >>> 0) * 747796405n + 2891336453n) & 0xffffffffn);
  const word = Number((BigInt(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0) * 277803737n) & 0xffffffffn);
  return ((word >>> 22) ^ word) >>> 0;
}
function keepMask(n: number, p: number, seed: number): Uint8Array {
  const threshold = Math.round(p * 2 ** 32);
  const s = pcg(seed);
  return Uint8Array.from({ length: n }, (_, i) => (pcg((pcg(i) + s) >>> 0) >= threshold ? 1 : 0));
}

// (T, C): LoRA inputs of SmolLM2-135M, Qwen2.5-0.5B (hidden), Llama-3.2-1B (intermediate, down_proj), odd.
const cases: [number, number, number][] = [[1, 576, 0.1], [7, 576, 0.05], [129, 896, 0.1], [7, 8192, 0.5], [3, 1001, 0.3]];

describe("dropout against float64", () => {
  for (const [T, C, p] of cases) {
    test(`T=${T} C=${C} p=${p}: forward, backward regenerates the mask, beta=1`, async () => {
      const n = T * C;
      const seed = dropoutSeed(1234, T, C);
      const x = randn(n), dxd = randn(n), prev = randn(n);
      const tx = rt.upload("f32", [T, C], x), txd = rt.empty("f32", [T, C]);
      const tdxd = rt.upload("f32", [T, C], dxd), tdx = rt.empty("f32", [T, C]), tacc = rt.upload("f32", [T, C], prev);
      const rec = rt.recorder();
      dropoutForward(rec, tx, txd, p, seed);
      dropoutBackward(rec, tdxd, tdx, p, seed);
      dropoutBackward(rec, tdxd, tacc, p, seed, 1);
      rec.submit();
      const keep = keepMask(n, p, seed);
      const scale = 1 / (1 - p);
      const out = await rt.read(txd);
      expect(relError(out, Float64Array.from(x, (v, i) => v * keep[i]! * scale))).toBeLessThan(1e-6);
      const dxRef = Float64Array.from(dxd, (v, i) => v * keep[i]! * scale);
      expect(relError(await rt.read(tdx), dxRef)).toBeLessThan(1e-6);
      expect(relError(await rt.read(tacc), dxRef.map((v, i) => v + prev[i]!))).toBeLessThan(1e-6);
      // The dropped fraction is p within 5 standard deviations.
      let dropped = 0;
      for (let i = 0; i < n; i++) dropped += out[i] === 0 ? 1 : 0;
      expect(Math.abs(dropped / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n) + 1 / n);
      rec.release();
      rt.release(tx, txd, tdxd, tdx, tacc);
    });
  }

  test("masks differ between seeds and are uncorrelated; p = 0 is the identity", async () => {
    const n = 129 * 896, p = 0.5;
    const x = randn(n);
    const tx = rt.upload("f32", [n], x), ta = rt.empty("f32", [n]), tb = rt.empty("f32", [n]), tid = rt.empty("f32", [n]);
    const rec = rt.recorder();
    dropoutForward(rec, tx, ta, p, dropoutSeed(7, 0, 3));
    dropoutForward(rec, tx, tb, p, dropoutSeed(7, 1, 3)); // next step, same call site
    dropoutForward(rec, tx, tid, 0, dropoutSeed(7, 0, 3));
    rec.submit();
    const [a, b] = [await rt.read(ta), await rt.read(tb)];
    let both = 0, ka = 0, kb = 0;
    for (let i = 0; i < n; i++) {
      const ia = a[i] !== 0 ? 1 : 0, ib = b[i] !== 0 ? 1 : 0;
      ka += ia; kb += ib; both += ia * ib;
    }
    // Independent masks keep ~n/4 elements in both; 5σ of a Binomial(n, 1/4).
    expect(Math.abs(both - n / 4)).toBeLessThan(5 * Math.sqrt(n * 0.25 * 0.75));
    expect(relError(await rt.read(tid), x)).toBe(0);
    rec.release();
    rt.release(tx, ta, tb, tid);
  });

  test("gradient against finite differences of the GPU forward", async () => {
    // L = Σ dropout(x)·r; backward with r must give dL/dx·v for the same seed.
    const n = 7 * 576, p = 0.1, seed = dropoutSeed(42);
    const x = randn(n), r = randn(n), v = randn(n);
    const eps = 1e-2;
    const xp = x.map((xi, i) => xi + eps * v[i]!), xm = x.map((xi, i) => xi - eps * v[i]!);
    const loss = async (xs: Float32Array) => {
      const tx = rt.upload("f32", [n], xs), ty = rt.empty("f32", [n]);
      const rec = rt.recorder();
      dropoutForward(rec, tx, ty, p, seed);
      rec.submit();
      const y = await rt.read(ty);
      rec.release();
      rt.release(tx, ty);
      return y.reduce((s, yi, i) => s + yi * r[i]!, 0);
    };
    const fd = (await loss(xp)) - (await loss(xm));
    const tr = rt.upload("f32", [n], r), tdx = rt.empty("f32", [n]);
    const rec = rt.recorder();
    dropoutBackward(rec, tr, tdx, p, seed);
    rec.submit();
    const dx = await rt.read(tdx);
    const analytic = dx.reduce((s, d, i) => s + d * (xp[i]! - xm[i]!), 0);
    // Relative to the sum of the terms' magnitudes: the signed sum can nearly cancel by chance,
    // which made a plain relative error flaky; f32 round-off stays far below 1e-5 of this scale.
    const scale = dx.reduce((s, d, i) => s + Math.abs(d * (xp[i]! - xm[i]!)), 0);
    expect(Math.abs(fd - analytic) / scale).toBeLessThan(1e-5);
    rec.release();
    rt.release(tr, tdx);
  });

  test("p outside [0, 1) and bad seeds fail fast", () => {
    const a = rt.empty("f32", [8]), b = rt.empty("f32", [8]);
    expect(() => dropoutForward(rt.recorder(), a, b, 1, 0)).toThrow(/p must be in \[0, 1\)/);
    expect(() => dropoutForward(rt.recorder(), a, b, 0.1, -1)).toThrow(/dropoutForward: seed must be a u32/);
    expect(dropoutThreshold(0)).toBe(0);
    rt.release(a, b);
  });
});
