// f32 → f16 on raw bits (integer ALU only): round to nearest even, beyond the range → ±inf,
// f16 subnormals where due, NaN stays NaN (quiet) with its top payload bits. The one owner of
// this rounding: convert.wgsl's f32 → f16 passes and the kernels that write a 16-bit copy of
// their f32 output for the tensor-core products (swiglu.wgsl) are composed with it, so a fused
// copy has the bits of a separate conversion.
fn f32_bits_to_f16(f: u32) -> u32 {
  let sign = (f >> 16u) & 0x8000u;
  let e = (f >> 23u) & 0xffu; // biased 127
  let m = f & 0x7fffffu;
  if (e == 0xffu) {
    if (m == 0u) { return sign | 0x7c00u; }
    return sign | 0x7e00u | (m >> 13u); // NaN: quiet, top payload bits kept
  }
  if (e >= 143u) { return sign | 0x7c00u; } // |x| ≥ 2¹⁶: beyond f16's range (max 65504)
  if (e >= 113u) {
    // Normal in f16: rebias 127 → 15 and round 13 mantissa bits off (RNE). A carry runs into
    // the exponent and from 0x7bff into 0x7c00 = inf, which is right: 65520 and up round to inf.
    var h = ((e - 112u) << 10u) | (m >> 13u);
    let rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) == 1u)) { h += 1u; }
    return sign | h;
  }
  if (e < 102u) { return sign; } // |x| < 2⁻²⁵: rounds to ±0 (2⁻²⁵ itself ties to even 0)
  // Subnormal in f16: units of 2⁻²⁴. x = (m | 2²³)·2^(e−150) → shift right by 126 − e (14..24).
  let mant = m | 0x800000u;
  let shift = 126u - e;
  var h = mant >> shift;
  let rest = mant & ((1u << shift) - 1u);
  let halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (h & 1u) == 1u)) { h += 1u; } // may reach 0x400, the smallest normal
  return sign | h;
}

// Four f32 values as four f16 packed two per word (element 2w in the low half of word w).
fn f16x4_bits(v: vec4<f32>) -> vec2<u32> {
  let b = bitcast<vec4<u32>>(v);
  return vec2<u32>(f32_bits_to_f16(b.x) | (f32_bits_to_f16(b.y) << 16u), f32_bits_to_f16(b.z) | (f32_bits_to_f16(b.w) << 16u));
}
