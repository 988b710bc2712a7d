import { afterAll, describe, expect, test } from "bun:test";
import { checkEmbeddingErrors, embeddingBackward, embeddingErrors, embeddingForward, getRuntime, type Tensor } from "../src/index.ts";
import { fromBf16Bits, fromF16Bits, randn, relError, rng, toBf16Bits, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

/** A (V, C) table in `dtype`: the tensor and the exact values it holds. */
function table(dtype: "f32" | "f16" | "bf16", V: number, C: number): { t: Tensor; values: Float32Array } {
  const x = randn(V * C);
  if (dtype === "f32") return { t: rt.upload("f32", [V, C], x), values: x };
  const bits = dtype === "f16" ? toF16Bits(x) : toBf16Bits(x);
  return { t: rt.upload(dtype, [V, C], bits), values: dtype === "f16" ? fromF16Bits(bits) : fromBf16Bits(bits) };
}

function gatherRef(values: Float32Array, ids: Int32Array, V: number, C: number) {
  const out = new Float64Array(ids.length * C);
  ids.forEach((id, t) => {
    if (id >= 0 && id < V) for (let c = 0; c < C; c++) out[t * C + c] = values[id * C + c]!;
  });
  return out;
}

// (T, V, C): hidden sizes of SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B with a small vocabulary,
// T scaled down, and odd C (odd 16-bit rows start mid-word).
const cases: [number, number, number, "f32" | "f16" | "bf16"][] = [
  [1, 300, 576, "bf16"], [7, 300, 576, "f32"], [129, 300, 896, "bf16"], [7, 100, 2048, "f16"], [129, 61, 67, "bf16"], [7, 5, 13, "f16"],
];

describe("embedding gather", () => {
  for (const [T, V, C, dtype] of cases) {
    test(`T=${T} V=${V} C=${C} table=${dtype}: exact rows, no error`, async () => {
      const { t: tt, values } = table(dtype, V, C);
      const r = rng(T * 1000 + C);
      const ids = Int32Array.from({ length: T }, (_, t) => (t === 0 ? V - 1 : r.int(0, V)));
      const tids = rt.upload("i32", [T], ids), tout = rt.empty("f32", [T, C]), terr = embeddingErrors(rt);
      const rec = rt.recorder();
      embeddingForward(rec, tids, tt, tout, terr);
      rec.submit();
      // A gather copies the stored values: 16-bit entries widen to f32 exactly.
      expect(relError(await rt.read(tout), gatherRef(values, ids, V, C))).toBe(0);
      expect(Array.from(await rt.readU32(terr))).toEqual([0, 0]);
      await checkEmbeddingErrors(rt, terr, V);
      rec.release();
      rt.release(tt, tids, tout, terr);
    });
  }

  test("out-of-range ids give zero rows and are reported", async () => {
    const [T, V, C] = [7, 50, 67];
    const { t: tt, values } = table("bf16", V, C);
    const ids = Int32Array.from([3, -1, 49, 50, 7, 2 ** 31 - 1, 0]);
    const tids = rt.upload("i32", [T], ids), tout = rt.upload("f32", [T, C], randn(T * C)), terr = embeddingErrors(rt);
    const rec = rt.recorder();
    embeddingForward(rec, tids, tt, tout, terr);
    rec.submit();
    const out = await rt.read(tout);
    expect(relError(out, gatherRef(values, ids, V, C))).toBe(0); // the reference has zeros there
    for (const t of [1, 3, 5]) expect(out.slice(t * C, (t + 1) * C).every((v) => v === 0)).toBe(true);
    expect(Array.from(await rt.readU32(terr))).toEqual([3, 6]);
    await expect(checkEmbeddingErrors(rt, terr, V)).rejects.toThrow(/3 token id\(s\) outside \[0, 50\), the last at position 5/);
    rec.release();
    rt.release(tt, tids, tout, terr);
  });

  test("shape errors name the kernel", () => {
    const tids = rt.empty("i32", [4]), tt = rt.empty("f32", [10, 8]), tout = rt.empty("f32", [4, 9]), terr = embeddingErrors(rt);
    expect(() => embeddingForward(rt.recorder(), tids, tt, tout, terr)).toThrow(/embeddingForward: out must have shape \[4, 8\]/);
    rt.release(tids, tt, tout, terr);
  });
});

describe("embedding backward (full fine-tuning) against float64", () => {
  for (const [T, V, C] of [[9, 11, 64], [200, 50, 67], [1, 3, 5]] as const) {
    test(`T=${T} V=${V} C=${C}: repeated ids sum, out-of-range ids skipped, accumulates`, async () => {
      const r = rng(T * 7 + C);
      const ids = Int32Array.from({ length: T }, (_, t) => (t === 3 ? V + 2 : r.int(0, V)));
      ids[0] = ids.length > 1 ? ids[T - 1]! : ids[0]!; // a repeat
      const dout = randn(T * C), prev = randn(V * C);
      const tdout = rt.upload("f32", [T, C], dout), tdt = rt.upload("f32", [V, C], prev);
      const rec = rt.recorder();
      const scratch = embeddingBackward(rec, ids, tdout, tdt);
      rec.submit();
      const ref = Float64Array.from(prev);
      ids.forEach((id, t) => {
        if (id >= 0 && id < V) for (let c = 0; c < C; c++) ref[id * C + c]! += dout[t * C + c]!;
      });
      expect(relError(await rt.read(tdt), ref)).toBeLessThan(1e-6);
      rec.release();
      rt.release(tdout, tdt, ...scratch);
    });
  }
});
