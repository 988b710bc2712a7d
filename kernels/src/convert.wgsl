// Float format conversions for loading checkpoints, done on raw bits (integer ALU only), so
// the result is exact and independent of the driver: no flush of subnormals, no rounding-mode
// latitude of f32→f16 casts or pack2x16float (indeterminate out of range), NaN payloads kept.
// f32_bits_to_f16 lives in f16-bits.wgsl (composed with this file by convert.ts).
// 16-bit tensors are packed two per u32 word (element 2w in the low half of word w). Each
// thread handles one word of the 16-bit side, so no two threads write the same word; an odd
// element count leaves the last word's high half zero (16-bit output) or unread (16-bit input).
//   bf16 → f32, f16 → f32: exact
//   f32 → bf16, f32 → f16, bf16 → f16: round to nearest even; beyond the range → ±inf;
//   f16 subnormals produced where due; NaN stays NaN (quiet) with its top payload bits.
//   f16 → bf16: via f32 (exact), so it rounds once.
// The `_counted` forms of the narrowing conversions (used when loading checkpoints) also count
// what the narrowing lost, into counts[4·slot + k]: k = 0 overflow (finite → ±inf), 1 flushed to
// zero (nonzero → ±0), 2 subnormal result (fewer significant bits); one atomicAdd per
// workgroup and kind, after a reduction in workgroup memory.
// Flat grid of 256-thread workgroups wrapped into y.

// n: elements; slot: the counted forms' slot; cols: f32_to_f16_t's source columns.
struct Params { n: u32, slot: u32, cols: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>;
var<workgroup> wg_counts: array<atomic<u32>, 3>;

fn word_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wg.y * nwg.x + wg.x) * 256u + lid;
}

fn bf16_to_f32_bits(h: u32) -> u32 {
  return h << 16u;
}

fn f16_to_f32_bits(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return sign | 0x7f800000u | (m << 13u); } // inf, NaN (payload kept)
  if (e != 0u) { return sign | ((e + 112u) << 23u) | (m << 13u); } // normal: rebias 15 → 127
  if (m == 0u) { return sign; } // ±0
  // Subnormal m·2⁻²⁴ with leading bit b: 2^(b−24)·(m/2^b), normal in f32.
  let b = firstLeadingBit(m);
  return sign | ((b + 103u) << 23u) | ((m << (23u - b)) & 0x7fffffu);
}

fn f32_bits_to_bf16(f: u32) -> u32 {
  if ((f & 0x7fffffffu) > 0x7f800000u) { return (f >> 16u) | 0x40u; } // NaN: keep it quiet
  // Round to nearest even; a carry out of the mantissa rounds up the exponent, up to inf.
  return (f + 0x7fffu + ((f >> 16u) & 1u)) >> 16u;
}

// 16-bit → f32: thread per source word, two outputs.
@compute @workgroup_size(256)
fn bf16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  let i = 2u * w;
  if (i >= p.n) { return; }
  let word = src[w];
  dst[i] = bf16_to_f32_bits(word & 0xffffu);
  if (i + 1u < p.n) { dst[i + 1u] = bf16_to_f32_bits(word >> 16u); }
}

@compute @workgroup_size(256)
fn f16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  let i = 2u * w;
  if (i >= p.n) { return; }
  let word = src[w];
  dst[i] = f16_to_f32_bits(word & 0xffffu);
  if (i + 1u < p.n) { dst[i + 1u] = f16_to_f32_bits(word >> 16u); }
}

// f32 → 16-bit: thread per destination word, two inputs.
@compute @workgroup_size(256)
fn f32_to_bf16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  let i = 2u * w;
  if (i >= p.n) { return; }
  var hi = 0u;
  if (i + 1u < p.n) { hi = f32_bits_to_bf16(src[i + 1u]); }
  dst[w] = f32_bits_to_bf16(src[i]) | (hi << 16u);
}

@compute @workgroup_size(256)
fn f32_to_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  let i = 2u * w;
  if (i >= p.n) { return; }
  var hi = 0u;
  if (i + 1u < p.n) { hi = f32_bits_to_f16(src[i + 1u]); }
  dst[w] = f32_bits_to_f16(src[i]) | (hi << 16u);
}

// The same conversions eight elements per thread where n is a multiple of 8: 16-byte loads and
// stores, the same bits as the two-per-thread forms. These passes are memory-bound, and with
// 8-byte accesses per thread too few bytes were in flight (f32 → f16 of 4096 × 8192 activations
// ran at 1.4 TB/s on an H100).
@group(0) @binding(1) var<storage, read> src8: array<vec4<u32>>;       // 4 f32 or 8 16-bit values per element
@group(0) @binding(2) var<storage, read_write> dst8: array<vec4<u32>>; // 8 16-bit or 4 f32 values per element

fn narrow8(q: u32, to_bf16: bool) {
  let lo = src8[2u * q];
  let hi = src8[2u * q + 1u];
  if (to_bf16) {
    dst8[q] = vec4<u32>(
      f32_bits_to_bf16(lo.x) | (f32_bits_to_bf16(lo.y) << 16u), f32_bits_to_bf16(lo.z) | (f32_bits_to_bf16(lo.w) << 16u),
      f32_bits_to_bf16(hi.x) | (f32_bits_to_bf16(hi.y) << 16u), f32_bits_to_bf16(hi.z) | (f32_bits_to_bf16(hi.w) << 16u));
  } else {
    dst8[q] = vec4<u32>(
      f32_bits_to_f16(lo.x) | (f32_bits_to_f16(lo.y) << 16u), f32_bits_to_f16(lo.z) | (f32_bits_to_f16(lo.w) << 16u),
      f32_bits_to_f16(hi.x) | (f32_bits_to_f16(hi.y) << 16u), f32_bits_to_f16(hi.z) | (f32_bits_to_f16(hi.w) << 16u));
  }
}

@compute @workgroup_size(256)
fn f32_to_f16_x8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let q = word_index(wg, nwg, lid); // elements 8q .. 8q + 7
  if (8u * q < p.n) { narrow8(q, false); }
}

@compute @workgroup_size(256)
fn f32_to_bf16_x8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let q = word_index(wg, nwg, lid);
  if (8u * q < p.n) { narrow8(q, true); }
}

@compute @workgroup_size(256)
fn bf16_to_f32_x8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let q = word_index(wg, nwg, lid);
  if (8u * q >= p.n) { return; }
  let w = src8[q];
  dst8[2u * q] = vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u);
  dst8[2u * q + 1u] = vec4<u32>(w.z << 16u, w.z & 0xffff0000u, w.w << 16u, w.w & 0xffff0000u);
}

// f32 (R, C) → f16 (C, R), rounded as f32_to_f16 (bit for bit): destination row c is source
// column c. R = n / cols must be even (two halves per destination word). A workgroup moves a
// 64 × 32 tile of the source (rows r0.., columns c0..) through workgroup memory: loads run along
// the source rows, stores along the destination rows (one word = two consecutive source rows).
var<workgroup> tile: array<u32, 2112>; // 64 rows × 33 (padding against bank conflicts)
@compute @workgroup_size(256)
fn f32_to_f16_t(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let C = p.cols;
  let R = p.n / C;
  let r0 = wg.y * 64u;
  let c0 = wg.x * 32u;
  for (var i = 0u; i < 8u; i++) {
    let e = lid + 256u * i;
    let r = e / 32u;
    let c = e % 32u;
    var v = 0u;
    if (r0 + r < R && c0 + c < C) { v = src[(r0 + r) * C + c0 + c]; }
    tile[r * 33u + c] = v;
  }
  workgroupBarrier();
  for (var i = 0u; i < 4u; i++) {
    let e = lid + 256u * i;
    let c = e / 32u; // destination row c0 + c
    let j = e % 32u; // its word covering source rows r0 + 2j, r0 + 2j + 1
    if (c0 + c < C && r0 + 2u * j < R) {
      let lo = f32_bits_to_f16(tile[(2u * j) * 33u + c]);
      let hi = f32_bits_to_f16(tile[(2u * j + 1u) * 33u + c]);
      dst[((c0 + c) * R + r0) / 2u + j] = lo | (hi << 16u);
    }
  }
}

// 16-bit → 16-bit: thread per word; bf16 → f32 is exact, so this rounds once.
@compute @workgroup_size(256)
fn bf16_to_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  if (2u * w >= p.n) { return; }
  let word = src[w];
  var hi = 0u;
  if (2u * w + 1u < p.n) { hi = f32_bits_to_f16(bf16_to_f32_bits(word >> 16u)); }
  dst[w] = f32_bits_to_f16(bf16_to_f32_bits(word & 0xffffu)) | (hi << 16u);
}

@compute @workgroup_size(256)
fn f16_to_bf16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  if (2u * w >= p.n) { return; }
  let word = src[w];
  var hi = 0u;
  if (2u * w + 1u < p.n) { hi = f32_bits_to_bf16(f16_to_f32_bits(word >> 16u)); }
  dst[w] = f32_bits_to_bf16(f16_to_f32_bits(word & 0xffffu)) | (hi << 16u);
}

// ---- counted narrowing

// What rounding f32 bits `f` to the 16-bit pattern `h` lost; `exp_mask` is the 16-bit format's
// exponent field (0x7c00 f16, 0x7f80 bf16), whose all-ones value is ±inf/NaN.
fn loss(f: u32, h: u32, exp_mask: u32) -> vec3<u32> {
  let finite = (f & 0x7f800000u) != 0x7f800000u;
  let nonzero = (f & 0x7fffffffu) != 0u;
  let a = h & 0x7fffu;
  return vec3<u32>(
    select(0u, 1u, finite && a == exp_mask),
    select(0u, 1u, nonzero && a == 0u),
    select(0u, 1u, (a & exp_mask) == 0u && a != 0u),
  );
}

// Adds this thread's counts to the workgroup's, then the workgroup's to counts[4·slot + k].
// Every thread of the workgroup must call it (it holds a barrier).
fn add_counts(lid: u32, c: vec3<u32>) {
  for (var k = 0u; k < 3u; k++) {
    if (c[k] != 0u) { atomicAdd(&wg_counts[k], c[k]); }
  }
  workgroupBarrier();
  if (lid == 0u) {
    for (var k = 0u; k < 3u; k++) {
      let v = atomicLoad(&wg_counts[k]);
      if (v != 0u) { atomicAdd(&counts[4u * p.slot + k], v); }
    }
  }
}

@compute @workgroup_size(256)
fn bf16_to_f16_counted(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  let w = word_index(wg, nwg, lid);
  var c = vec3<u32>();
  if (2u * w < p.n) {
    let word = src[w];
    let flo = bf16_to_f32_bits(word & 0xffffu);
    let lo = f32_bits_to_f16(flo);
    c = loss(flo, lo, 0x7c00u);
    var hi = 0u;
    if (2u * w + 1u < p.n) {
      let fhi = bf16_to_f32_bits(word >> 16u);
      hi = f32_bits_to_f16(fhi);
      c += loss(fhi, hi, 0x7c00u);
    }
    dst[w] = lo | (hi << 16u);
  }
  add_counts(lid, c);
}

// f32 → f16 (to_bf16 false) or bf16 (true), two values per output word, with the counts.
fn f32_narrow_counted(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, to_bf16: bool) {
  let w = word_index(wg, nwg, lid);
  let i = 2u * w;
  let inf = select(0x7c00u, 0x7f80u, to_bf16);
  var c = vec3<u32>();
  if (i < p.n) {
    let lo = select(f32_bits_to_f16(src[i]), f32_bits_to_bf16(src[i]), to_bf16);
    c = loss(src[i], lo, inf);
    var hi = 0u;
    if (i + 1u < p.n) {
      hi = select(f32_bits_to_f16(src[i + 1u]), f32_bits_to_bf16(src[i + 1u]), to_bf16);
      c += loss(src[i + 1u], hi, inf);
    }
    dst[w] = lo | (hi << 16u);
  }
  add_counts(lid, c);
}

@compute @workgroup_size(256)
fn f32_to_f16_counted(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  f32_narrow_counted(wg, nwg, lid, false);
}

@compute @workgroup_size(256)
fn f32_to_bf16_counted(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  f32_narrow_counted(wg, nwg, lid, true);
}
