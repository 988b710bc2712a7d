import { afterAll, describe, expect, test } from "bun:test";
import { CONVERT_COUNTS_PER_SLOT, convertTensor, convertTensorCounted, convertTransposedF16, getRuntime, Tensor } from "../src/index.ts";
import { randn, rng } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

// References in float64, written independently of the kernel's bit tricks: decode a 16-bit
// pattern to its value, and round a value to the nearest representable one (ties to even)
// by comparing distances to its two neighbours.

function f32Bits(x: number): number {
  return new Uint32Array(Float32Array.of(x).buffer)[0]!;
}
function f32FromBits(u: number): number {
  return new Float32Array(Uint32Array.of(u).buffer)[0]!;
}

/** Value of a 16-bit float with `mantBits` mantissa bits and `expBits` exponent bits. */
function decode16(h: number, expBits: number, mantBits: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> mantBits) & ((1 << expBits) - 1);
  const m = h & ((1 << mantBits) - 1);
  const bias = (1 << (expBits - 1)) - 1;
  if (e === (1 << expBits) - 1) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** (1 - bias - mantBits);
  return sign * (1 + m / 2 ** mantBits) * 2 ** (e - bias);
}
const f16Value = (h: number) => decode16(h, 5, 10);
const bf16Value = (h: number) => decode16(h, 8, 7);

/** Round a finite or infinite non-NaN value to a 16-bit format, RNE, overflow → ±inf. */
function round16(x: number, expBits: number, mantBits: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const infBits = ((1 << expBits) - 1) << mantBits;
  if (a === Infinity) return sign | infBits;
  // Non-negative 16-bit patterns are ordered like their values: binary search the largest ≤ a.
  let lo = 0, hi = infBits; // value(lo) ≤ a < value(hi) unless a ≥ inf-adjacent
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (decode16(mid, expBits, mantBits) <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - decode16(lo, expBits, mantBits);
  // Above the largest finite value, the "next" value for rounding is max + ulp (= 2^emax+1 boundary).
  const vHi = hi === infBits ? decode16(lo, expBits, mantBits) + (decode16(lo, expBits, mantBits) - decode16(lo - 1, expBits, mantBits)) : decode16(hi, expBits, mantBits);
  const dHi = vHi - a;
  const pick = dLo < dHi ? lo : dLo > dHi ? hi : lo % 2 === 0 ? lo : hi;
  return sign | pick;
}

/**
 * Converts and reads back dst's whole storage: for a 16-bit dst of odd length that includes
 * the last word's high half, pre-filled with garbage (0xffff) that the kernel must zero.
 */
async function run(src: Tensor, dstDtype: "f32" | "f16" | "bf16"): Promise<ArrayBuffer> {
  const n = src.numel;
  const dst = rt.empty(dstDtype, [n]);
  const words = new Tensor(dst.buffer, dstDtype === "f32" ? "f32" : "u32", [dstDtype === "f32" ? n : Math.ceil(n / 2)]);
  rt.write(words, new Uint32Array(words.numel).fill(0xffffffff));
  const rec = rt.recorder();
  convertTensor(rec, src, dst);
  rec.submit();
  const bytes = await rt.readBytes(words);
  rec.release();
  rt.release(src, dst);
  return bytes;
}

/** Every 16-bit pattern, with an odd count so the last word is half-used. */
const ALL16 = Uint16Array.from({ length: 65535 }, (_, i) => i);

/** f32 test values: specials, boundaries of f16 (max, overflow tie, subnormal edges, ties), random bits and normals. */
function f32Cases(): Float32Array {
  const special = [0, -0, Infinity, -Infinity, NaN, f32FromBits(0xffc00001), f32FromBits(0x7f800001), f32FromBits(0x7fbfffff),
    65504, 65519.99, 65520, 65536, -65520, 3.4e38, 1e-45, -1e-45, 1.17549435e-38, 2 ** -14, 2 ** -24, 2 ** -25,
    2 ** -25 * 1.0000001, 2 ** -26, 3 * 2 ** -25, 2 ** -15 * 1.5, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -8,
    f32FromBits(0x7f7fffff), f32FromBits(0x7f7f8000), f32FromBits(0x7f7f7fff), f32FromBits(0x3f808000), f32FromBits(0x3f818000)];
  const r = rng(99);
  const out: number[] = [...special];
  for (let i = 0; i < 200_000; i++) out.push(f32FromBits(Math.floor(r.uniform() * 2 ** 32)));
  // Around f16's range, where rounding matters most.
  for (let i = 0; i < 100_000; i++) out.push(r.normal() * 2 ** r.int(-30, 18));
  if (out.length % 2 === 0) out.push(1.5); // odd count: the last 16-bit output word is half-used
  return Float32Array.from(out);
}

describe("conversions are exact on every driver", () => {
  test("bf16 → f32: all 65535 patterns (exact, NaN payloads kept)", async () => {
    const out = new Uint32Array(await run(rt.upload("bf16", [ALL16.length], ALL16), "f32"));
    for (let i = 0; i < ALL16.length; i++) if (out[i] !== ALL16[i]! << 16 >>> 0) throw new Error(`bf16 0x${i.toString(16)}: got 0x${out[i]!.toString(16)}`);
    // All 65536 patterns, a multiple of 8: the eight-per-thread form.
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const wide = new Uint32Array(await run(rt.upload("bf16", [all.length], all), "f32"));
    for (let i = 0; i < all.length; i++) if (wide[i] !== all[i]! << 16 >>> 0) throw new Error(`bf16 0x${i.toString(16)} (8 per thread): got 0x${wide[i]!.toString(16)}`);
    for (let i = 0; i < ALL16.length; i += 1) {
      const v = bf16Value(i), o = f32FromBits(out[i]!);
      if (!(Object.is(v, o) || (Number.isNaN(v) && Number.isNaN(o)))) throw new Error(`bf16 0x${i.toString(16)}: ${o} vs ${v}`);
    }
  });

  test("f16 → f32: all 65535 patterns (subnormals exact, NaN stays NaN)", async () => {
    const out = new Float32Array(await run(rt.upload("f16", [ALL16.length], ALL16), "f32"));
    for (let i = 0; i < ALL16.length; i++) {
      const v = f16Value(i), o = out[i]!;
      if (!(Object.is(v, o) || (Number.isNaN(v) && Number.isNaN(o)))) throw new Error(`f16 0x${i.toString(16)}: ${o} vs ${v}`);
    }
  });

  test("bf16 → f16: all 65535 patterns, round to nearest even, overflow → inf", async () => {
    const out = new Uint16Array(await run(rt.upload("bf16", [ALL16.length], ALL16), "f16"));
    for (let i = 0; i < ALL16.length; i++) {
      const v = bf16Value(i);
      const want = Number.isNaN(v) ? null : round16(v, 5, 10);
      const got = out[i]!;
      if (want === null ? !Number.isNaN(f16Value(got)) : got !== want) throw new Error(`bf16 0x${i.toString(16)} (${v}): got 0x${got.toString(16)}, want 0x${want?.toString(16)}`);
    }
    expect(out[ALL16.length]).toBe(0); // the odd element count leaves the last high half zero
  });

  // f32 → f16 and → bf16 run eight elements per thread when the count is a multiple of 8 (the wide form).
  for (const [dtype, expBits, mantBits, wide] of [["f16", 5, 10, false], ["f16", 5, 10, true], ["bf16", 8, 7, false], ["bf16", 8, 7, true]] as const) {
    test(`f32 → ${dtype}${wide ? " (8 per thread)" : ""}: specials, boundaries, 300k values, RNE`, async () => {
      const cases = f32Cases();
      const x = wide ? Float32Array.from({ length: cases.length + 8 - (cases.length % 8) }, (_, i) => cases[i % cases.length]!) : cases;
      const out = new Uint16Array(await run(rt.upload("f32", [x.length], x), dtype));
      for (let i = 0; i < x.length; i++) {
        const v = x[i]!, got = out[i]!;
        if (Number.isNaN(v)) {
          // NaN stays NaN, quiet, sign kept.
          const quiet = 1 << (mantBits - 1);
          if (!Number.isNaN(decode16(got, expBits, mantBits)) || !(got & quiet) || (got & 0x8000) !== (f32Bits(v) >>> 16 & 0x8000))
            throw new Error(`f32 NaN 0x${f32Bits(v).toString(16)}: got 0x${got.toString(16)}`);
          continue;
        }
        const want = round16(v, expBits, mantBits);
        if (got !== want) throw new Error(`f32 ${v} (0x${f32Bits(v).toString(16)}): got 0x${got.toString(16)}, want 0x${want.toString(16)}`);
      }
      if (dtype === "f16") {
        // Cross-check with the JS engine's own f32 → f16 rounding (Math.f16round) on the finite values.
        for (let i = 0; i < x.length; i++) {
          const v = x[i]!;
          if (Number.isNaN(v)) continue;
          if (!Object.is(Math.f16round(v), f16Value(out[i]!))) throw new Error(`Math.f16round(${v}) = ${Math.f16round(v)}, GPU ${f16Value(out[i]!)}`);
        }
      }
      if (!wide) expect(out[x.length]).toBe(0); // odd count: high half of the last word is zero
      else expect(x.length % 8).toBe(0);
    });
  }

  test("round trips: f32 → bf16 → f32 and f32 → f16 → f32 of normal data", async () => {
    const x = randn(129 * 896 + 1);
    const bf = await run(rt.upload("f32", [x.length], x), "bf16");
    const f16 = await run(rt.upload("f32", [x.length], x), "f16");
    const back1 = new Float32Array(await run(rt.upload("bf16", [x.length], new Uint16Array(bf, 0, x.length)), "f32"));
    const back2 = new Float32Array(await run(rt.upload("f16", [x.length], new Uint16Array(f16, 0, x.length)), "f32"));
    for (let i = 0; i < x.length; i++) {
      expect(Math.abs(back1[i]! - x[i]!)).toBeLessThanOrEqual(Math.abs(x[i]!) * 2 ** -8);
      expect(back2[i]).toBe(Math.f16round(x[i]!));
    }
  });

  test("unsupported pairs and size mismatches name the kernel", () => {
    const a = rt.empty("f16", [4]), b = rt.empty("i32", [4]), c = rt.empty("f32", [5]);
    expect(() => convertTensor(rt.recorder(), a, b)).toThrow(/convertTensor: no f16 → i32 conversion/);
    expect(() => convertTensorCounted(rt.recorder(), c, c, rt.empty("u32", [4]), 0)).toThrow(/convertTensorCounted: no f32 → f32 conversion/);
    expect(() => convertTensor(rt.recorder(), a, c)).toThrow(/convertTensor: src has 4 elements, dst has 5/);
    rt.release(a, b, c);
  });
});

describe("counted narrowing (checkpoint loading): same bits, and the losses counted", () => {
  /** CPU counts of what rounding `values` to `out` (16-bit patterns) lost: [overflow, zeroed, subnormal]. */
  function lossRef(values: ArrayLike<number>, out: Uint16Array, expBits: number, mantBits: number): number[] {
    const c = [0, 0, 0];
    const expMask = ((1 << expBits) - 1) << mantBits;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!, h = out[i]! & 0x7fff;
      if (Number.isNaN(v)) continue;
      if (Number.isFinite(v) && h === expMask) c[0]!++;
      if (v !== 0 && h === 0) c[1]!++;
      if ((h & expMask) === 0 && h !== 0) c[2]!++;
    }
    return c;
  }

  /** Converts in chunks of `chunk` elements (each bound at its own offset) into slot 1 of a 3-slot counter. */
  async function runCounted(src: Tensor, dstDtype: "f16" | "bf16", chunk: number) {
    const n = src.numel, srcBytes = src.dtype === "f32" ? 4 : 2;
    const dst = rt.empty(dstDtype, [n]);
    const counts = rt.zeros("u32", [3 * CONVERT_COUNTS_PER_SLOT]);
    const rec = rt.recorder();
    for (let at = 0; at < n; at += chunk) {
      const len = Math.min(chunk, n - at);
      convertTensorCounted(rec, new Tensor(src.buffer, src.dtype, [len], src.byteOffset + at * srcBytes), new Tensor(dst.buffer, dstDtype, [len], at * 2), counts, 1);
    }
    rec.submit();
    const out = new Uint16Array(await rt.readBytes(dst));
    const c = Array.from(await rt.readU32(counts));
    rec.release();
    rt.release(src, dst, counts);
    return { out, c };
  }

  test("bf16 → f16: all 65535 patterns in 128-aligned chunks equal the plain kernel and the RNE reference; counts exact", async () => {
    const plain = new Uint16Array(await run(rt.upload("bf16", [ALL16.length], ALL16), "f16"));
    const { out, c } = await runCounted(rt.upload("bf16", [ALL16.length], ALL16), "f16", 128 * 100);
    for (let i = 0; i < ALL16.length; i++) if (out[i] !== plain[i]) throw new Error(`bf16 0x${i.toString(16)}: counted 0x${out[i]!.toString(16)}, plain 0x${plain[i]!.toString(16)}`);
    const want = lossRef(Array.from(ALL16, bf16Value), out, 5, 10);
    expect(want[0]).toBeGreaterThan(1000); // the sample does hold overflows, zeros and subnormals
    expect(want[1]).toBeGreaterThan(1000);
    expect(want[2]).toBeGreaterThan(1000);
    expect(c).toEqual([0, 0, 0, 0, ...want, 0, 0, 0, 0, 0]);
  });

  test("bf16 → f16 on random weights-like values with a few huge and tiny ones", async () => {
    const r = rng(5);
    const n = 300_001;
    const bits = new Uint16Array(n);
    const scratch = new Float32Array(1), u = new Uint32Array(scratch.buffer);
    for (let i = 0; i < n; i++) {
      const k = r.uniform();
      scratch[0] = r.normal() * (k < 0.001 ? 2 ** 17 : k < 0.01 ? 2 ** -26 : 0.02); // overflow / underflow / normal
      bits[i] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16;
    }
    const { out, c } = await runCounted(rt.upload("bf16", [n], bits), "f16", 256 * 300);
    for (let i = 0; i < n; i++) if (out[i] !== round16(bf16Value(bits[i]!), 5, 10)) throw new Error(`element ${i}`);
    const want = lossRef(Array.from(bits, bf16Value), out, 5, 10);
    expect(want[0]).toBeGreaterThan(50);
    expect(c.slice(4, 7)).toEqual(want);
  });

  for (const [dtype, expBits, mantBits] of [["f16", 5, 10], ["bf16", 8, 7]] as const) {
    test(`f32 → ${dtype} counted: same bits as the plain kernel, counts exact`, async () => {
      const x = f32Cases();
      const plain = new Uint16Array(await run(rt.upload("f32", [x.length], x), dtype));
      const { out, c } = await runCounted(rt.upload("f32", [x.length], x), dtype, 64 * 1000);
      for (let i = 0; i < x.length; i++) if (out[i] !== plain[i]) throw new Error(`f32 ${x[i]}: counted 0x${out[i]!.toString(16)}, plain 0x${plain[i]!.toString(16)}`);
      expect(c.slice(4, 7)).toEqual(lossRef(x, out, expBits, mantBits));
    });
  }

  test("f16 → bf16: all 65535 patterns, round to nearest even", async () => {
    const out = new Uint16Array(await run(rt.upload("f16", [ALL16.length], ALL16), "bf16"));
    for (let i = 0; i < ALL16.length; i++) {
      const v = f16Value(i);
      if (Number.isNaN(v) ? !Number.isNaN(bf16Value(out[i]!)) : out[i] !== round16(v, 8, 7)) throw new Error(`f16 0x${i.toString(16)}: got 0x${out[i]!.toString(16)}`);
    }
  });
});

describe("transposed f32 → f16 (tensor-core operands such as dyᵀ)", () => {
  // Shapes: tile-aligned, ragged in both directions, fewer rows than one tile, one column.
  for (const [R, C] of [[128, 64], [70, 45], [2, 33], [4096 / 32, 1], [198, 97]] as const) {
    test(`(${R}, ${C}) → (${C}, ${R}): the same bits as convertTensor, transposed`, async () => {
      const x = randn(R * C, 1, R * 1000 + C).map((v, i) => (i % 17 === 0 ? v * 1e-6 : i % 23 === 0 ? (v < 0 ? -1e5 : 1e5) : v)); // subnormals and overflow too
      const src = rt.upload("f32", [R, C], x);
      const flat = rt.empty("f16", [R * C]), dst = rt.empty("f16", [C, R]);
      const rec = rt.recorder("convert-t");
      convertTensor(rec, src, flat);
      convertTransposedF16(rec, src, dst);
      rec.submit();
      const [plain, trans] = [new Uint16Array(await rt.readBytes(flat)), new Uint16Array(await rt.readBytes(dst))];
      let bad = 0;
      for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) if (trans[c * R + r] !== plain[r * C + c]) bad++;
      expect(bad).toBe(0);
      expect(plain.some((h) => (h & 0x7fff) === 0x7c00)).toBe(true); // the overflow cases are in there
      rt.release(src, flat, dst);
    });
  }

  test("refuses an odd row count and mismatched shapes, naming the kernel", () => {
    const rec = rt.recorder("convert-t-bad");
    expect(() => convertTransposedF16(rec, rt.empty("f32", [3, 4]), rt.empty("f16", [4, 3]))).toThrow(/convertTransposedF16: R = 3 rows must be even/);
    expect(() => convertTransposedF16(rec, rt.empty("f32", [4, 4]), rt.empty("f16", [8, 2]))).toThrow(/convertTransposedF16: src \(4, 4\) and dst \(8, 2\)/);
    rec.release();
  });
});
