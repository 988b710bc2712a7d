import { afterAll, describe, expect, test } from "bun:test";
import { getRuntime, rmsnormBackward, rmsnormForward, rmsnormWeightBackward, type Tensor, toF16 } from "../src/index.ts";
import { fromBf16Bits, fromF16Bits, randn, relError, rmsnormRef, toBf16Bits, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

const EPS = 1e-5;


/** float64 backward: dx (T, C) (+ beta·dxIn). */
function rmsnormBackwardRef(x: ArrayLike<number>, w: ArrayLike<number>, dy: ArrayLike<number>, T: number, C: number) {
  const dx = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    let ss = 0, dot = 0;
    for (let c = 0; c < C; c++) {
      ss += x[t * C + c]! ** 2;
      dot += dy[t * C + c]! * w[c]! * x[t * C + c]!;
    }
    const r = 1 / Math.sqrt(ss / C + EPS);
    for (let c = 0; c < C; c++) dx[t * C + c] = r * dy[t * C + c]! * w[c]! - (x[t * C + c]! * r ** 3 * dot) / C;
  }
  return dx;
}

/** Weight of C elements in `dtype`: the tensor and the exact values it holds. */
function weight(dtype: "f32" | "f16" | "bf16", C: number): { t: Tensor; w: Float32Array } {
  const w = randn(C, 0.5);
  for (let c = 0; c < C; c++) w[c]! += 1; // norm weights sit around 1
  if (dtype === "f32") return { t: rt.upload("f32", [C], w), w };
  const bits = dtype === "f16" ? toF16Bits(w) : toBf16Bits(w);
  return { t: rt.upload(dtype, [C], bits), w: dtype === "f16" ? fromF16Bits(bits) : fromBf16Bits(bits) };
}

// (T, C): SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B hidden sizes, the largest row (Llama-3.2-1B's
// intermediate size), and odd sizes (C not a multiple of 16, rows shorter than the workgroup).
const cases: [number, number, "f32" | "f16" | "bf16"][] = [
  [1, 576, "f32"], [7, 576, "bf16"], [129, 576, "f32"],
  [7, 896, "f16"], [129, 896, "bf16"],
  [1, 2048, "bf16"], [7, 2048, "f32"],
  [7, 8192, "f32"],
  [5, 1001, "f32"], [3, 13, "f16"], [129, 67, "f32"],
  [9, 64, "f32"], [4, 200, "bf16"], [6, 500, "f32"], // 32, 64 and 128 threads per row
  [1, 4096, "f16"], [16, 3072, "bf16"], [2, 5000, "f32"], // few rows: up to 1024 threads per row (decode)
];

describe("rmsnorm against float64", () => {
  for (const [T, C, wDtype] of cases) {
    test(`T=${T} C=${C} w=${wDtype}: forward, rstd, backward, beta=1`, async () => {
      const x = randn(T * C), dy = randn(T * C), dxPrev = randn(T * C);
      const { t: tw, w } = weight(wDtype, C);
      const tx = rt.upload("f32", [T, C], x), tdy = rt.upload("f32", [T, C], dy);
      const ty = rt.empty("f32", [T, C]), trstd = rt.empty("f32", [T]);
      const tdx = rt.empty("f32", [T, C]), tdxAcc = rt.upload("f32", [T, C], dxPrev);
      const rec = rt.recorder();
      rmsnormForward(rec, tx, tw, ty, trstd, EPS);
      rmsnormBackward(rec, tx, tw, trstd, tdy, tdx);
      rmsnormBackward(rec, tx, tw, trstd, tdy, tdxAcc, 1);
      rec.submit();
      const ref = rmsnormRef(x, w, T, C, EPS);
      const dxRef = rmsnormBackwardRef(x, w, dy, T, C);
      // 16-bit weights are held exactly (w is what the buffer holds), so f32 math tolerance applies.
      expect(relError(await rt.read(ty), ref.y)).toBeLessThan(1e-5);
      expect(relError(await rt.read(trstd), ref.rstd)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdx), dxRef)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdxAcc), dxRef.map((v, i) => v + dxPrev[i]!))).toBeLessThan(1e-5);
      rec.release();
      rt.release(tx, tdy, ty, trstd, tdx, tdxAcc, tw);
    });
  }
});

describe("rmsnorm gradient against finite differences of the GPU forward", () => {
  // L(x) = Σ y(x)·r. Central differences along a random direction v: the backward with dy = r
  // must give dL/dx·v. The step is applied in f32, so the exact step is xp − xm, not 2εv.
  for (const [T, C] of [[7, 576], [3, 67]] as const) {
    test(`T=${T} C=${C}`, async () => {
      const x = randn(T * C), r = randn(T * C), v = randn(T * C);
      const { t: tw } = weight("f32", C);
      const eps = 1e-2;
      const xp = x.map((xi, i) => xi + eps * v[i]!), xm = x.map((xi, i) => xi - eps * v[i]!);
      const loss = async (xs: Float32Array) => {
        const tx = rt.upload("f32", [T, C], xs), ty = rt.empty("f32", [T, C]), trstd = rt.empty("f32", [T]);
        const rec = rt.recorder();
        rmsnormForward(rec, tx, tw, ty, trstd, EPS);
        rec.submit();
        const y = await rt.read(ty);
        rec.release();
        rt.release(tx, ty, trstd);
        let s = 0;
        for (let i = 0; i < y.length; i++) s += y[i]! * r[i]!;
        return s;
      };
      const fd = (await loss(xp)) - (await loss(xm));

      const tx = rt.upload("f32", [T, C], x), tr = rt.upload("f32", [T, C], r);
      const ty = rt.empty("f32", [T, C]), trstd = rt.empty("f32", [T]), tdx = rt.empty("f32", [T, C]);
      const rec = rt.recorder();
      rmsnormForward(rec, tx, tw, ty, trstd, EPS);
      rmsnormBackward(rec, tx, tw, trstd, tr, tdx);
      rec.submit();
      const dx = await rt.read(tdx);
      rec.release();
      let analytic = 0, scale = 0;
      for (let i = 0; i < dx.length; i++) {
        analytic += dx[i]! * (xp[i]! - xm[i]!);
        scale += Math.abs(dx[i]! * (xp[i]! - xm[i]!));
      }
      // Relative to the terms' magnitudes: the signed sum can nearly cancel by chance (it did at C=67).
      if (process.env.FD_DEBUG) console.log("fd rel err", Math.abs(fd - analytic) / scale);
      expect(Number.isFinite(fd)).toBe(true);
      expect(Math.abs(fd - analytic) / scale).toBeLessThan(1e-3);
      rt.release(tx, tr, ty, trstd, tdx, tw);
    });
  }
});

describe("rmsnorm's fused 16-bit copy", () => {
  // Even C (two elements per thread and step, fused) and odd C (the f32 kernel then a conversion):
  // y16 must hold the bits of a separate f32 → f16 conversion of y, and y must be unchanged.
  for (const [T, C, wDtype] of [[7, 576, "bf16"], [1, 4096, "f16"], [129, 896, "f32"], [5, 1001, "f32"]] as const) {
    test(`T=${T} C=${C} w=${wDtype}: y16 is toF16(y)`, async () => {
      const x = randn(T * C);
      const { t: tw, w } = weight(wDtype, C);
      const tx = rt.upload("f32", [T, C], x), ty = rt.empty("f32", [T, C]), trstd = rt.empty("f32", [T]), ty16 = rt.empty("f16", [T, C]);
      const rec = rt.recorder();
      rmsnormForward(rec, tx, tw, ty, trstd, EPS, ty16);
      const separate = toF16(rec, ty);
      rec.submit();
      const ref = rmsnormRef(x, w, T, C, EPS);
      expect(relError(await rt.read(ty), ref.y)).toBeLessThan(1e-5);
      expect(relError(await rt.read(trstd), ref.rstd)).toBeLessThan(1e-5);
      const a = new Uint16Array(await rt.readBytes(ty16)), b = new Uint16Array(await rt.readBytes(separate));
      expect(a.some((v) => v !== 0)).toBe(true);
      expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
      rec.release();
      rt.release(tx, tw, ty, trstd, ty16);
    });
  }
});

test("rmsnorm shape errors name the kernel", () => {
  const tx = rt.empty("f32", [4, 8]), tw = rt.empty("f32", [9]), ty = rt.empty("f32", [4, 8]), trstd = rt.empty("f32", [4]);
  const rec = rt.recorder();
  expect(() => rmsnormForward(rec, tx, tw, ty, trstd, EPS)).toThrow(/rmsnormForward: w must have shape \[8\]/);
  rt.release(tx, tw, ty, trstd);
});

describe("rmsnorm weight gradient (full fine-tuning) against float64", () => {
  // T > 64 takes the two-pass form (64-row partials, summed in order): 129 (a 1-row last chunk), 4096.
  for (const [T, C] of [[1, 576], [129, 67], [7, 2048], [3, 13], [4096, 96]] as const) {
    test(`T=${T} C=${C}: dw = Σ_t dy·x·rstd, beta=1 accumulates`, async () => {
      const x = randn(T * C), dy = randn(T * C), dwPrev = randn(C);
      const { t: tw, w } = weight("f32", C);
      const tx = rt.upload("f32", [T, C], x), tdy = rt.upload("f32", [T, C], dy);
      const ty = rt.empty("f32", [T, C]), trstd = rt.empty("f32", [T]);
      const tdw = rt.empty("f32", [C]), tdwAcc = rt.upload("f32", [C], dwPrev);
      const rec = rt.recorder();
      rmsnormForward(rec, tx, tw, ty, trstd, EPS);
      rmsnormWeightBackward(rec, tx, trstd, tdy, tdw);
      rmsnormWeightBackward(rec, tx, trstd, tdy, tdwAcc, 1);
      rec.submit();
      const { rstd } = rmsnormRef(x, w, T, C, EPS);
      const ref = new Float64Array(C);
      for (let t = 0; t < T; t++) for (let c = 0; c < C; c++) ref[c]! += dy[t * C + c]! * x[t * C + c]! * rstd[t]!;
      expect(relError(await rt.read(tdw), ref)).toBeLessThan(1e-5);
      expect(relError(await rt.read(tdwAcc), ref.map((v, c) => v + dwPrev[c]!))).toBeLessThan(1e-5);
      rec.release();
      rt.release(tx, tdy, ty, trstd, tdw, tdwAcc, tw);
    });
  }
});
