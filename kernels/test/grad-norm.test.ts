import { afterAll, describe, expect, test } from "bun:test";
import { checkFinite, clearNonFinite, createGradClipState, getRuntime, gradNormClip, gradNormPartialCount, readGradNorm, releaseGradClipState, zeroGrad } from "../src/index.ts";
import { randn } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

const norm64 = (g: Float32Array) => Math.sqrt(g.reduce((s, x) => s + x * x, 0));

describe("gradNormClip", () => {
  for (const n of [1, 1000, 100_003, 1_500_000]) {
    test(`n = ${n}: norm and clip coefficient vs float64, deterministic`, async () => {
      const g = randn(n, 0.01);
      const ref = norm64(g);
      const tg = rt.upload("f32", [n], g);
      const st = createGradClipState(rt);
      for (const maxNorm of [ref / 3, ref * 2, 0]) {
        const rec = rt.recorder("gradnorm");
        gradNormClip(rec, tg, st, maxNorm);
        rec.submit();
        const r = await readGradNorm(rt, st);
        expect(Math.abs(r.norm - ref) / ref).toBeLessThan(1e-5);
        const coefRef = maxNorm > 0 ? Math.min(1, maxNorm / (ref + 1e-6)) : 1;
        expect(Math.abs(r.coef - coefRef) / coefRef).toBeLessThan(1e-5);
        expect(r.nonFinite).toBe(false);
        const bits1 = await rt.readU32(st.stats);
        rec.submit(); // same inputs again: the same bits
        expect(await rt.readU32(st.stats)).toEqual(bits1);
        rec.release();
      }
      releaseGradClipState(rt, st);
      rt.release(tg);
    });
  }

  test("gradients split over several buffers: the norm of their concatenation; a NaN in any one sets the flag; too small a state is refused", async () => {
    // Sizes whose stage-1 group counts are not multiples of 64, one past 1024 groups (1.5M elements).
    const sizes = [1000, 100_003, 1_500_000, 7];
    const parts = sizes.map((n) => randn(n, 0.01));
    const all = new Float32Array(sizes.reduce((a, n) => a + n, 0));
    parts.reduce((at, g) => (all.set(g, at), at + g.length), 0);
    const ref = norm64(all);
    const tgs = parts.map((g) => rt.upload("f32", [g.length], g));
    const small = createGradClipState(rt), tooSmall = rt.recorder("too small");
    expect(() => gradNormClip(tooSmall, tgs, small, 1)).toThrow(/need \d+ partial sums, the state holds 1024/);
    tooSmall.release();
    releaseGradClipState(rt, small);
    const st = createGradClipState(rt, gradNormPartialCount(sizes));
    const rec = rt.recorder("gradnorm split");
    gradNormClip(rec, tgs, st, ref / 4);
    rec.submit();
    const r = await readGradNorm(rt, st);
    expect(Math.abs(r.norm - ref) / ref).toBeLessThan(1e-5);
    expect(Math.abs(r.coef - ref / 4 / (ref + 1e-6))).toBeLessThan(1e-6);
    expect(r.nonFinite).toBe(false);
    rec.release();
    parts[3]![2] = NaN;
    rt.write(tgs[3]!, parts[3]!);
    const bad = rt.recorder("gradnorm split nan");
    gradNormClip(bad, tgs, st, 1);
    bad.submit();
    expect((await readGradNorm(rt, st)).nonFinite).toBe(true);
    bad.release();
    releaseGradClipState(rt, st);
    rt.release(...tgs);
  });

  test("a NaN or an inf gradient sets the flag and zeroes the coefficient; clearNonFinite resets", async () => {
    const n = 5000;
    const st = createGradClipState(rt);
    for (const bad of [NaN, Infinity, -Infinity]) {
      const g = randn(n);
      g[4321] = bad;
      const tg = rt.upload("f32", [n], g);
      const rec = rt.recorder("gradnorm bad");
      clearNonFinite(rec, st);
      gradNormClip(rec, tg, st, 1);
      rec.submit();
      const r = await readGradNorm(rt, st);
      expect(r.nonFinite).toBe(true);
      expect(r.coef).toBe(0);
      rec.release();
      rt.release(tg);
    }
    const rec = rt.recorder("clear");
    clearNonFinite(rec, st);
    rec.submit();
    expect((await readGradNorm(rt, st)).nonFinite).toBe(false);
    rec.release();
    releaseGradClipState(rt, st);
  });
});

describe("checkFinite and zeroGrad", () => {
  test("checkFinite flags a single NaN anywhere, not finite values", async () => {
    const n = 70_001;
    const x = randn(n, 1e30); // huge but finite
    const tx = rt.upload("f32", [n], x);
    const flag = rt.zeros("u32", [1]);
    let rec = rt.recorder("finite");
    checkFinite(rec, tx, flag);
    rec.submit();
    expect((await rt.readU32(flag))[0]).toBe(0);
    rec.release();
    rt.write(tx, new Float32Array([NaN]), n - 1);
    rec = rt.recorder("nan");
    checkFinite(rec, tx, flag);
    rec.submit();
    expect((await rt.readU32(flag))[0]).toBe(1);
    rec.release();
    rt.release(tx, flag);
  });

  test("zeroGrad clears", async () => {
    const ta = rt.upload("f32", [300], randn(300)), tb = rt.upload("f32", [7], randn(7));
    const rec = rt.recorder("zero");
    zeroGrad(rec, ta, tb);
    rec.submit();
    expect((await rt.read(ta)).every((v) => v === 0)).toBe(true);
    expect((await rt.read(tb)).every((v) => v === 0)).toBe(true);
    rec.release();
    rt.release(ta, tb);
  });
});
