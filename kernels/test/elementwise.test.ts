import { afterAll, describe, expect, test } from "bun:test";
import { add, addInPlace, axpby, axpy, flatGrid, getRuntime, Params, scale, scaleInPlace } from "../src/index.ts";
import { randn, relError } from "../src/testing.ts";
import elementwiseWgsl from "../src/elementwise.wgsl" with { type: "text" };

const rt = await getRuntime();
afterAll(() => rt.trimPool());

// Element counts: a residual stream (T·C) of SmolLM2 and Qwen2.5 with T scaled down, a
// Llama-3.2-1B MLP activation, odd and tiny sizes.
const sizes = [1, 13, 7 * 576, 129 * 896, 7 * 8192 + 5];

describe("elementwise against float64", () => {
  for (const n of sizes) {
    test(`n=${n}: add, addInPlace, axpy, scale, scaleInPlace, axpby`, async () => {
      let a = randn(n), b = randn(n), c = randn(n);
      // With a handful of elements the norm-wise error no longer averages out, and one sum that
      // cancels (c ≈ 0.37a, say) has an f32 error far above 1e-6 of its tiny result whatever the
      // kernel does: redraw until every result keeps ≥ 10% of its terms' magnitude.
      const cancels = (x: number, y: number) => Math.abs(x + y) < 0.1 * (Math.abs(x) + Math.abs(y));
      while (n < 16 && Array.from({ length: n }, (_, i) => cancels(a[i]!, b[i]!) || cancels(c[i]!, -0.37 * a[i]!) || cancels(0.5 * a[i]!, -3 * c[i]!)).some(Boolean)) {
        [a, b, c] = [randn(n), randn(n), randn(n)];
      }
      const ta = rt.upload("f32", [n], a), tb = rt.upload("f32", [n], b), tout = rt.empty("f32", [n]);
      const tacc = rt.upload("f32", [n], a), taxpy = rt.upload("f32", [n], c), tscaled = rt.empty("f32", [n]);
      const tinplace = rt.upload("f32", [n], c), tby = rt.upload("f32", [n], c);
      const rec = rt.recorder();
      add(rec, ta, tb, tout);
      addInPlace(rec, tacc, tb);
      axpy(rec, -0.37, ta, taxpy);
      scale(rec, 1.75, ta, tscaled);
      scaleInPlace(rec, -2.5, tinplace);
      axpby(rec, ta, tby, 0.5, -3);
      rec.submit();
      const ref = (f: (i: number) => number) => Float64Array.from({ length: n }, (_, i) => f(i));
      expect(relError(await rt.read(tout), ref((i) => a[i]! + b[i]!))).toBeLessThan(1e-6);
      expect(relError(await rt.read(tacc), ref((i) => a[i]! + b[i]!))).toBeLessThan(1e-6);
      expect(relError(await rt.read(taxpy), ref((i) => c[i]! - 0.37 * a[i]!))).toBeLessThan(1e-6);
      expect(relError(await rt.read(tscaled), ref((i) => 1.75 * a[i]!))).toBeLessThan(1e-6);
      expect(relError(await rt.read(tinplace), ref((i) => -2.5 * c[i]!))).toBeLessThan(1e-6);
      expect(relError(await rt.read(tby), ref((i) => 0.5 * a[i]! - 3 * c[i]!))).toBeLessThan(1e-6);
      rec.release();
      rt.release(ta, tb, tout, tacc, taxpy, tscaled, tinplace, tby);
    });
  }

  test("scale (beta = 0) never reads the output: NaN garbage there does not leak", async () => {
    const n = 1000;
    const x = randn(n);
    const tx = rt.upload("f32", [n], x), ty = rt.upload("f32", [n], new Float32Array(n).fill(NaN));
    const rec = rt.recorder();
    scale(rec, 2, tx, ty);
    rec.submit();
    expect(relError(await rt.read(ty), Float64Array.from(x, (v) => 2 * v))).toBeLessThan(1e-6);
    rec.release();
    rt.release(tx, ty);
  });

  test("grids wrapped into y (past 65535 workgroups) cover every element once", async () => {
    // Forcing a narrow x (7 workgroups) exercises the same index arithmetic as > 65535.
    const n = 7 * 256 * 5 + 100;
    const grid = flatGrid(n, 256, 7);
    expect(grid).toEqual([7, 6]);
    const x = randn(n), y = randn(n);
    const tx = rt.upload("f32", [n], x), ty = rt.upload("f32", [n], y);
    const rec = rt.recorder();
    rec.dispatch("axpby wrapped", rt.pipeline({ name: "elementwise", code: elementwiseWgsl }, {}, "axpby"),
      new Params(4).u32(n).f32(1).f32(1).u32(0).buffer, [tx, ty], grid);
    rec.submit();
    expect(relError(await rt.read(ty), Float64Array.from(x, (v, i) => v + y[i]!))).toBeLessThan(1e-6);
    expect(flatGrid(65535 * 256 + 1)).toEqual([65535, 2]);
    rec.release();
    rt.release(tx, ty);
  });

  test("mismatched sizes name the kernel", () => {
    const a = rt.empty("f32", [8]), b = rt.empty("f32", [9]);
    expect(() => addInPlace(rt.recorder(), a, b)).toThrow(/axpby: y has 8 elements, x has 9/);
    rt.release(a, b);
  });
});
