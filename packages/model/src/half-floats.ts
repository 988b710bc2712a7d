// Bit-exact conversions between float32 and the two 16-bit float formats (bf16, f16) found in checkpoints.
//
// bfloat16 is the top half of a float32 (1 sign, 8 exponent, 7 mantissa bits), so widening is a
// shift; float16 (1, 5, 10) has its own exponent range and subnormals. Narrowing rounds to nearest,
// ties to even, as PyTorch's `.to(torch.bfloat16)` / `.half()` do. Bun has Float16Array, but these
// helpers pin the exact bits (NaN payloads, subnormals, ties) and work on raw Uint16 data straight
// out of a safetensors file without an intermediate typed-array conversion.

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** float32 bit pattern of `x` (after rounding `x` to float32). */
export function float32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0]!;
}

/** The float32 whose bit pattern is `bits`. */
export function float32FromBits(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0]!;
}

/** bf16 bits of `x` (rounded to float32 first), round-to-nearest-even; NaN stays a quiet NaN. */
export function float32ToBf16Bits(x: number): number {
  const bits = float32Bits(x);
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x0040) & 0xffff; // NaN: keep sign + quiet bit
  const roundingBias = 0x7fff + ((bits >>> 16) & 1);
  return ((bits + roundingBias) >>> 16) & 0xffff; // carry into the exponent rounds up to inf correctly
}

/** The float32 value of bf16 bits (exact: bf16 ⊂ float32). */
export function bf16BitsToFloat32(h: number): number {
  return float32FromBits((h & 0xffff) << 16);
}

/** f16 bits of `x` (rounded to float32 first), round-to-nearest-even, overflow to ±inf, NaN quiet. */
export function float32ToF16Bits(x: number): number {
  const bits = float32Bits(x);
  const sign = (bits >>> 16) & 0x8000;
  const exp32 = (bits >>> 23) & 0xff;
  const mant32 = bits & 0x7fffff;
  if (exp32 === 0xff) return mant32 === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant32 >>> 13); // inf / quiet NaN
  const exp16 = exp32 - 127 + 15;
  if (exp16 >= 0x1f) return sign | 0x7c00; // too large: inf
  if (exp16 <= 0) {
    // Subnormal f16: value in units of 2^-24 is (1.mant) * 2^(exp32 - 126) = m >> (14 - exp16).
    const shift = 14 - exp16;
    if (shift > 25) return sign; // below half the smallest subnormal: ±0
    const m = mant32 | 0x800000;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half++; // may carry into the smallest normal: correct
    return sign | half;
  }
  let half = (exp16 << 10) | (mant32 >>> 13);
  const rem = mant32 & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half++; // carry may reach 0x7c00 = inf: correct
  return sign | half;
}

/** The float32 value of f16 bits (exact: f16 ⊂ float32). */
export function f16BitsToFloat32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return float32FromBits(((h & 0x8000) << 16) | 0x7f800000 | (mant << 13));
  return float32FromBits(((h & 0x8000) << 16) | ((exp - 15 + 127) << 23) | (mant << 13));
}

let f16Table: Float32Array | null = null;
/** All 65536 f16 values widened once (256 KiB), so bulk widening is a table lookup. */
function f16ToFloat32Table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToFloat32(h);
  }
  return f16Table;
}

/** Widen bf16 data (N) to float32 (N); `out` may be given to avoid an allocation. */
export function bf16ToFloat32Array(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  if (out.length !== src.length) throw new Error(`bf16ToFloat32Array: out has ${out.length} elements, src ${src.length}`);
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) outBits[i] = src[i]! << 16;
  return out;
}

/** Narrow float32 data (N) to bf16 bits (N), round-to-nearest-even. */
export function float32ToBf16Array(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (out.length !== src.length) throw new Error(`float32ToBf16Array: out has ${out.length} elements, src ${src.length}`);
  const srcBits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const bits = srcBits[i]!;
    if ((bits & 0x7fffffff) > 0x7f800000) out[i] = (bits >>> 16) | 0x0040;
    else out[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Widen f16 data (N) to float32 (N). */
export function f16ToFloat32Array(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  if (out.length !== src.length) throw new Error(`f16ToFloat32Array: out has ${out.length} elements, src ${src.length}`);
  const table = f16ToFloat32Table();
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
  return out;
}

/** Narrow float32 data (N) to f16 bits (N), round-to-nearest-even. */
export function float32ToF16Array(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (out.length !== src.length) throw new Error(`float32ToF16Array: out has ${out.length} elements, src ${src.length}`);
  for (let i = 0; i < src.length; i++) out[i] = float32ToF16Bits(src[i]!);
  return out;
}
