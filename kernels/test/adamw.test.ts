import { afterAll, describe, expect, test } from "bun:test";
import {
  adamwStep, adamwStepTensors, createAdamWState, createGradClipState, FlatParamLayout, getRuntime, gradNormClip, readGradNorm,
} from "../src/index.ts";
import { randn, relError } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

const B1 = 0.9, B2 = 0.95, EPS = 1e-8;

/** float64 torch.optim.AdamW (+ clip_grad_norm_) on one flat vector with per-element lr/wd. */
class AdamWRef {
  m: Float64Array;
  v: Float64Array;
  p: Float64Array;
  constructor(p0: Float32Array, readonly lrScale: Float64Array, readonly wd: Float64Array, readonly active: Uint8Array) {
    this.p = Float64Array.from(p0);
    this.m = new Float64Array(p0.length);
    this.v = new Float64Array(p0.length);
  }
  step(grad: Float32Array, lr: number, t: number, maxNorm: number) {
    let ss = 0;
    for (const g of grad) ss += g * g;
    const norm = Math.sqrt(ss);
    const coef = maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
    const bc1 = 1 - B1 ** t, bc2 = 1 - B2 ** t;
    for (let i = 0; i < grad.length; i++) {
      if (!this.active[i]) continue;
      const g = grad[i]! * coef;
      const l = lr * this.lrScale[i]!;
      this.p[i]! *= 1 - l * this.wd[i]!;
      this.m[i] = B1 * this.m[i]! + (1 - B1) * g;
      this.v[i] = B2 * this.v[i]! + (1 - B2) * g * g;
      this.p[i]! -= (l / bc1) * this.m[i]! / (Math.sqrt(this.v[i]!) / Math.sqrt(bc2) + EPS);
    }
    return { norm, coef };
  }
}

describe("adamwStep over a flat multi-tensor buffer", () => {
  const layout = new FlatParamLayout(
    [
      { name: "layers.0.q.lora_A", shape: [7, 5] },
      { name: "layers.0.q.lora_B", shape: [64], weightDecay: 0, lrScale: 4 },
      { name: "norm", shape: [3, 33], weightDecay: 0.3 },
    ],
    { weightDecay: 0.1 },
  );

  test("layout: segments start on 256-byte boundaries, views bind", () => {
    expect(layout.segments.map((s) => s.offset)).toEqual([0, 64, 128]);
    expect(layout.numel).toBe(128 + 128);
  });

  test("6 steps with weight decay, per-tensor lr scale, clipping engaged on some steps, vs float64", async () => {
    const n = layout.numel;
    const lrScale = new Float64Array(n), wd = new Float64Array(n), active = new Uint8Array(n);
    for (const s of layout.segments) for (let i = s.offset; i < s.offset + s.numel; i++) {
      lrScale[i] = s.lrScale; wd[i] = s.weightDecay; active[i] = 1;
    }
    const p0 = randn(n); // gaps too: they must stay as they are
    const ref = new AdamWRef(p0, lrScale, wd, active);
    const params = rt.upload("f32", [n], p0), grads = rt.empty("f32", [n]);
    const st = createAdamWState(rt, layout), clip = createGradClipState(rt);
    let clipped = 0;
    for (let t = 1; t <= 6; t++) {
      const g = randn(n, 0.5);
      for (let i = 0; i < n; i++) if (!active[i]) g[i] = 0; // gradients of gaps stay zero
      const lr = 0.02 * (1 - t / 10); // a schedule: lr changes every call
      const maxNorm = t % 2 === 0 ? 2 : 1000; // even steps clip (‖g‖ ≈ 0.5·√227 ≈ 7.5)
      rt.write(grads, g);
      const rec = rt.recorder("adamw");
      gradNormClip(rec, grads, clip, maxNorm);
      adamwStep(rec, st, params, grads, { lr, step: t, beta1: B1, beta2: B2, eps: EPS, clip });
      rec.submit();
      const r = ref.step(g, lr, t, maxNorm);
      const got = await readGradNorm(rt, clip);
      expect(Math.abs(got.norm - r.norm) / r.norm).toBeLessThan(1e-5);
      if (r.coef < 1) clipped++;
      rec.release();
    }
    expect(clipped).toBe(3);
    const p = await rt.read(params);
    expect(relError(p, ref.p)).toBeLessThan(1e-5);
    expect(relError(await rt.read(st.m), ref.m)).toBeLessThan(1e-5);
    expect(relError(await rt.read(st.v), ref.v)).toBeLessThan(1e-5);
    // the update itself (p − p0), not just p: a wrong formula cannot hide behind |p0|
    const dp = Array.from(p, (x, i) => x - p0[i]!), dref = Array.from(ref.p, (x, i) => x - p0[i]!);
    expect(relError(dp, dref)).toBeLessThan(1e-4);
    for (let i = 0; i < n; i++) if (!active[i]) expect(p[i]).toBe(p0[i]!);
    // a view of one tensor reads the right slice
    const b = await rt.read(layout.view(params, "layers.0.q.lora_B"));
    expect(relError(b, ref.p.slice(64, 128))).toBeLessThan(1e-5);
  });

  test("a set non-finite flag skips the update (params and moments untouched)", async () => {
    const n = layout.numel;
    const p0 = randn(n);
    const params = rt.upload("f32", [n], p0), grads = rt.upload("f32", [n], randn(n));
    rt.write(grads, new Float32Array([NaN]), 3);
    const st = createAdamWState(rt, layout), clip = createGradClipState(rt);
    const rec = rt.recorder("adamw nan");
    gradNormClip(rec, grads, clip, 1);
    adamwStep(rec, st, params, grads, { lr: 0.1, step: 1, clip });
    rec.submit();
    expect((await readGradNorm(rt, clip)).nonFinite).toBe(true);
    expect(await rt.read(params)).toEqual(p0);
    expect((await rt.read(st.m)).every((x) => x === 0)).toBe(true);
    rec.release();
  });
});

describe("adamwStepTensors over separate tensors", () => {
  test("3 steps without clipping vs float64", async () => {
    const shapes = [[10, 3], [129]];
    const wds = [0.05, 0];
    const refs = shapes.map((s, k) => {
      const n = s.reduce((a, b) => a * b);
      return new AdamWRef(randn(n), new Float64Array(n).fill(1), new Float64Array(n).fill(wds[k]!), new Uint8Array(n).fill(1));
    });
    const ts = shapes.map((s, k) => ({
      param: rt.upload("f32", s, Float32Array.from(refs[k]!.p)),
      grad: rt.empty("f32", s),
      m: rt.zeros("f32", s),
      v: rt.zeros("f32", s),
      weightDecay: wds[k]!,
    }));
    for (let t = 1; t <= 3; t++) {
      const rec = rt.recorder("adamw tensors");
      ts.forEach((x, k) => {
        const g = randn(x.param.numel);
        rt.write(x.grad, g);
        refs[k]!.step(g, 0.01, t, 0);
      });
      adamwStepTensors(rec, ts, { lr: 0.01, step: t, beta1: B1, beta2: B2, eps: EPS });
      rec.submit();
      await rt.sync();
      rec.release();
    }
    for (let k = 0; k < ts.length; k++) {
      expect(relError(await rt.read(ts[k]!.param), refs[k]!.p)).toBeLessThan(1e-5);
      expect(relError(await rt.read(ts[k]!.v), refs[k]!.v)).toBeLessThan(1e-5);
    }
  });
});
