// Gathered per-row LoRA (bgmv.ts) against a float64 reference: rows of one batch pick different
// adapter slots (and −1, the base), slots have different ranks (and modules with rank 0), the
// stacks are f32/f16/bf16, both shrink forms run on every device.
import { afterAll, describe, expect, test } from "bun:test";
import { type DType, bgmvExpand, bgmvShrink, checkRowSlots, getRuntime, type Tensor } from "../src/index.ts";
import { fromBf16Bits, fromF16Bits, randn, relError, rng, toBf16Bits, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());
const COMPILE_TIMEOUT = 60_000;

/** A stack in `dtype`: the tensor and the exact values it holds. */
function stackOf(dtype: DType, shape: [number, number, number], v: Float32Array): { t: Tensor; values: Float32Array } {
  if (dtype === "f32") return { t: rt.upload("f32", shape, v), values: v };
  const bits = dtype === "f16" ? toF16Bits(v) : toBf16Bits(v);
  return { t: rt.upload(dtype, shape, bits), values: dtype === "f16" ? fromF16Bits(bits) : fromBf16Bits(bits) };
}

/** float64 h (T, ldh) with columns hOff … hOff + nb·R − 1 = x·A[slot]ᵀ where r < rank, else 0 (other columns: `h0`). */
function shrinkRef(x: Float32Array, A: Float32Array, slots: Int32Array, ranks: Uint32Array, ldr: number, rcol: number,
  T: number, K: number, nb: number, R: number, h0: Float32Array, ldh: number, hOff: number): Float64Array {
  const out = Float64Array.from(h0), N = nb * R;
  for (let t = 0; t < T; t++) {
    const s = slots[t]!;
    for (let n = 0; n < N; n++) {
      let acc = 0;
      if (s >= 0 && n % R < ranks[s * ldr + rcol + Math.floor(n / R)]!) {
        for (let k = 0; k < K; k++) acc += x[t * K + k]! * A[(s * N + n) * K + k]!;
      }
      out[t * ldh + hOff + n] = acc;
    }
  }
  return out;
}

/** float64 y + scale[slot]·h[:, hOff … + rank]·B[slot, :, :rank]ᵀ. */
function expandRef(h: Float32Array, ldh: number, hOff: number, B: Float32Array, scales: Float32Array, slots: Int32Array,
  ranks: Uint32Array, ldr: number, rcol: number, y0: Float32Array, T: number, N: number, R: number): Float64Array {
  const out = Float64Array.from(y0);
  for (let t = 0; t < T; t++) {
    const s = slots[t]!;
    if (s < 0) continue;
    const rank = ranks[s * ldr + rcol]!;
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let r = 0; r < rank; r++) acc += h[t * ldh + hOff + r]! * B[(s * N + n) * R + r]!;
      out[t * N + n] += scales[s]! * acc;
    }
  }
  return out;
}

/** T rows over S slots: every slot and −1 appear (T ≥ S + 1), in shuffled order. */
function mixedSlots(T: number, S: number, seed: number): Int32Array {
  const r = rng(seed);
  const s = Int32Array.from({ length: T }, (_, t) => (t <= S ? t - 1 : r.int(-1, S)));
  for (let i = T - 1; i > 0; i--) {
    const j = r.int(0, i + 1);
    [s[i], s[j]] = [s[j]!, s[i]!];
  }
  return s;
}

// (T, K, nb modules, R padded rank, out features N of the expanded module); ranks per slot mix
// R, less than R and 0 (a module the slot's adapter leaves alone).
const cases: [number, number, number, number, number][] = [
  [16, 256, 3, 16, 96], // decode: q/k/v group at r = 16
  [5, 67, 2, 8, 33], // odd K and N, gate/up group
  [70, 128, 1, 4, 64], // prefill-like: many rows
];
const FORMS = ["lanes", "row"] as const;

describe.each(FORMS)("bgmv against float64 (shrink %s)", (form) => {
  for (const [T, K, nb, R, N] of cases) {
    for (const dtype of ["f32", "f16", "bf16"] as const) {
      test(`T=${T} K=${K} nb=${nb} R=${R} N=${N}, stacks ${dtype}: rows with slot −1, mixed ranks`, async () => {
        const S = 4, ldr = 7, rcol = 2; // a rank table as wide as the 7 targets, the group's columns from 2
        const slots = mixedSlots(T, S, T * 31 + K);
        const r = rng(K + nb);
        const ranks = Uint32Array.from({ length: S * ldr }, (_, i) => (i % ldr === rcol ? [R, R >> 1, 1, R][i / ldr | 0]! : r.int(0, R + 1)));
        ranks[3 * ldr + rcol + nb - 1] = 0; // slot 3's last module is not adapted
        const x = randn(T * K), A = stackOf(dtype, [S, nb * R, K], randn(S * nb * R * K));
        const ldh = nb * R + 3, hOff = 2; // h lives in columns of a wider buffer
        const h0 = randn(T * ldh);
        const scales = Float32Array.from({ length: S }, (_, s) => 0.5 + s);
        const B = stackOf(dtype, [S, N, R], randn(S * N * R)), y0 = randn(T * N);
        const tx = rt.upload("f32", [T, K], x), th = rt.upload("f32", [T, ldh], h0), ty = rt.upload("f32", [T, N], y0);
        const tslots = rt.upload("i32", [T], slots), tranks = rt.upload("u32", [S, ldr], ranks), tscales = rt.upload("f32", [S], scales);
        const rec = rt.recorder();
        bgmvShrink(rec, { x: tx, A: A.t, R, slots: tslots, ranks: tranks, rankCol: rcol, h: th, hOffset: hOff }, form);
        // The expand of the group's first module (its h in the first R columns of the block).
        bgmvExpand(rec, { h: th, hOffset: hOff, B: B.t, scales: tscales, slots: tslots, ranks: tranks, rankCol: rcol, y: ty });
        rec.submit();
        const h = await rt.read(th), y = await rt.read(ty);
        const tol = dtype === "f32" ? 1e-5 : 2e-3;
        const hRef = shrinkRef(x, A.values, slots, ranks, ldr, rcol, T, K, nb, R, h0, ldh, hOff);
        expect(relError(h, hRef)).toBeLessThan(tol);
        // The expand is judged on the GPU's h (its own error, not the shrink's).
        const yRef = expandRef(h, ldh, hOff, B.values, scales, slots, ranks, ldr, rcol, y0, T, N, R);
        expect(relError(y, yRef)).toBeLessThan(tol);
        // The LoRA part alone (y − y0), so the base rows' unchanged values do not hide an error.
        const delta = Float64Array.from(y, (v, i) => v - y0[i]!), deltaRef = yRef.map((v, i) => v - y0[i]!);
        expect(relError(delta, deltaRef)).toBeLessThan(dtype === "f32" ? 1e-4 : 2e-3);
        for (let t = 0; t < T; t++) {
          if (slots[t]! >= 0) continue;
          for (let n = 0; n < N; n++) expect(y[t * N + n]).toBe(y0[t * N + n]!); // base rows untouched
          for (let n = 0; n < nb * R; n++) expect(h[t * ldh + hOff + n]).toBe(0);
        }
        expect(h[0]).toBe(h0[0]!); // columns outside the block untouched
        rec.release();
        rt.release(tx, th, ty, tslots, tranks, tscales, A.t, B.t);
      }, COMPILE_TIMEOUT);
    }
  }
});

describe("bgmv: a row's result depends only on its own slot", () => {
  test("the same row alone and inside a mixed batch gives bit-identical h and y", async () => {
    const [T, K, R, N, S] = [9, 64, 8, 40, 3];
    const slots = Int32Array.from([2, -1, 0, 1, 2, 0, -1, 1, 2]);
    const ranks = Uint32Array.from({ length: S }, () => R);
    const x = randn(T * K), A = randn(S * R * K), B = randn(S * N * R), scales = Float32Array.from([0.5, 2, 1.5]);
    const run = async (rows: number[]) => {
      const n = rows.length;
      const tx = rt.upload("f32", [n, K], Float32Array.from(rows.flatMap((t) => Array.from(x.subarray(t * K, (t + 1) * K)))));
      const th = rt.empty("f32", [n, R]), ty = rt.zeros("f32", [n, N]);
      const ts = rt.upload("i32", [n], Int32Array.from(rows, (t) => slots[t]!)), tr = rt.upload("u32", [S, 1], ranks);
      const tA = rt.upload("f32", [S, R, K], A), tB = rt.upload("f32", [S, N, R], B), tsc = rt.upload("f32", [S], scales);
      const rec = rt.recorder();
      bgmvShrink(rec, { x: tx, A: tA, R, slots: ts, ranks: tr, h: th });
      bgmvExpand(rec, { h: th, B: tB, scales: tsc, slots: ts, ranks: tr, y: ty });
      rec.submit();
      const y = await rt.read(ty);
      rec.release();
      rt.release(tx, th, ty, ts, tr, tA, tB, tsc);
      return y;
    };
    const all = await run([...slots.keys()]);
    for (const t of [0, 3, 5]) {
      const alone = await run([t]);
      expect(Array.from(all.subarray(t * N, (t + 1) * N))).toEqual(Array.from(alone));
      expect(alone.some((v) => v !== 0)).toBe(true);
    }
  }, COMPILE_TIMEOUT);
});

describe("bgmv: bad input is refused naming the kernel", () => {
  test("shapes, rank blocks, rank columns and out-of-range slots", () => {
    const x = rt.empty("f32", [4, 32]), h = rt.empty("f32", [4, 16]), y = rt.empty("f32", [4, 20]);
    const A = rt.empty("f32", [2, 16, 32]), B = rt.empty("f32", [2, 20, 8]);
    const slots = rt.empty("i32", [4]), ranks = rt.empty("u32", [2, 7]), scales = rt.empty("f32", [2]);
    const rec = rt.recorder();
    expect(() => bgmvShrink(rec, { x, A, R: 5, slots, ranks, h })).toThrow(/bgmvShrink: A's 16 rows per slot are not whole blocks of the padded rank R=5/);
    expect(() => bgmvShrink(rec, { x, A, R: 8, slots, ranks, rankCol: 6, h })).toThrow(/bgmvShrink: rank columns 6…7 are outside the ranks table's 7/);
    expect(() => bgmvShrink(rec, { x, A, R: 8, slots, ranks, h, hOffset: 1 })).toThrow(/bgmvShrink: h columns 1…16 do not fit its 16/);
    expect(() => bgmvShrink(rec, { x: rt.empty("f32", [3, 32]), A, R: 8, slots, ranks, h })).toThrow(/bgmvShrink: x has 3 rows, slots 4/);
    expect(() => bgmvExpand(rec, { h, B, scales: rt.empty("f32", [3]), slots, ranks, y })).toThrow(/bgmvExpand: scales must have shape \[2\]/);
    expect(() => bgmvExpand(rec, { h, B: rt.empty("f32", [3, 20, 8]), scales, slots, ranks, y })).toThrow(/bgmvExpand: ranks has 2 rows, the stack 3 slots/);
    expect(() => bgmvExpand(rec, { h, B: rt.empty("i32", [2, 20, 8]), scales, slots, ranks, y })).toThrow(/bgmvExpand: B must be f32\|f16\|bf16/);
    expect(() => checkRowSlots("decode", [0, -1, 2], 2)).toThrow(/decode: row 2 has LoRA slot 2, not −1 \(base\) or one of 0…1/);
    expect(() => checkRowSlots("decode", [-2], 2)).toThrow(/row 0 has LoRA slot -2/);
    expect(() => checkRowSlots("decode", [0, -1, 1], 2)).not.toThrow();
    rec.release();
  });
});
