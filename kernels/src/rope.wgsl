// Rotary position embedding, transformers' "rotate_half" convention: within each head the
// pair (i, i + hd/2) is rotated by θ = pos·inv_freq[i], i < hd/2:
//   out[i]        = x[i]·cos θ − x[i + hd/2]·sin θ
//   out[i + hd/2] = x[i + hd/2]·cos θ + x[i]·sin θ
// q (T, nQ, hd) and k (T, nK, hd) are rotated in place in one dispatch, one thread per pair
// (flat grid wrapped into y); positions (T) i32 are explicit per token, so packed sequences
// restart at 0. sign = +1 is the forward; sign = −1 rotates by −θ, which is the backward (the
// rotation matrix is orthogonal: its transpose is its inverse).
//
// θ is computed as transformers computes it, f32(pos) · inv_freq[i] in f32 (one rounding), so
// for large positions θ carries transformers' own error (ulp(θ)/2, e.g. 0.004 rad at θ = 1e5).
// cos/sin of that f32 θ are then evaluated accurately here (|error| ≲ 2e-7 for |θ| < 2²³):
// GPU sin/cos builtins are only specified on [−π, π] and lose accuracy fast outside it (on an
// H200 with NVIDIA's Vulkan driver, builtin sin/cos of θ up to 2²³ were off by up to 1.03).

struct Params { T: u32, nQ: u32, nK: u32, half: u32, hd: u32, sign: f32, _pad0: u32, _pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<i32>;   // (T)
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;    // (hd/2)
@group(0) @binding(3) var<storage, read_write> q: array<f32>;     // (T, nQ, hd)
@group(0) @binding(4) var<storage, read_write> k: array<f32>;     // (T, nK, hd)

// π/2 split into pieces of ≤ 12 significant bits (C1..C3) plus the rest (C4), so that
// kh·Ci and kl·Ci are exact in f32 for |m| < 2²⁴ split as m = kh + kl, |kl| < 2¹²
// (Cody-Waite reduction that stays exact with or without fused multiply-add).
const PIO2_1 = 1.5703125;
const PIO2_2 = 0.0004837512969970703;
const PIO2_3 = 7.549533620476723e-8;
const PIO2_4 = 2.5633440682570896e-12;

// (sin θ, cos θ) of an f32 θ.
fn sincos(theta: f32) -> vec2<f32> {
  let m = round(theta * 0.636619772367581343); // θ ≈ m·π/2 + r
  let kh = trunc(m * (1.0 / 4096.0)) * 4096.0;
  let kl = m - kh;
  var r = theta - kh * PIO2_1;
  r -= kl * PIO2_1;
  r -= kh * PIO2_2;
  r -= kl * PIO2_2;
  r -= kh * PIO2_3;
  r -= kl * PIO2_3;
  r -= m * PIO2_4;
  // θ·2/π rounds in f32, so for large θ m can be one off and r up to ~1.3: one more step
  // brings r back into [−π/4, π/4], where the polynomials hold (small, so nearly exact).
  let fix = round(r * 0.636619772367581343);
  r -= fix * PIO2_1;
  r -= fix * PIO2_2;
  r -= fix * PIO2_3;
  r -= fix * PIO2_4;
  // Minimax polynomials on [−π/4, π/4] (Cephes sinf/cosf).
  let z = r * r;
  let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
  let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
  switch (u32(i32(m) + i32(fix)) & 3u) {
    case 0u: { return vec2(s, c); }
    case 1u: { return vec2(c, -s); }
    case 2u: { return vec2(-s, -c); }
    default: { return vec2(-c, s); }
  }
}

fn rotate(x0: f32, x1: f32, sc: vec2<f32>) -> vec2<f32> {
  return vec2(x0 * sc.y - x1 * sc.x, x1 * sc.y + x0 * sc.x);
}

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let heads = p.nQ + p.nK;
  let idx = (wg.y * nwg.x + wg.x) * 256u + lid;
  if (idx >= p.T * heads * p.half) { return; }
  let i = idx % p.half;
  let th = idx / p.half;
  let h = th % heads;
  let t = th / heads;
  let theta = f32(positions[t]) * inv_freq[i];
  var sc = sincos(theta);
  sc.x *= p.sign;
  if (h < p.nQ) {
    let j = (t * p.nQ + h) * p.hd + i;
    let o = rotate(q[j], q[j + p.half], sc);
    q[j] = o.x;
    q[j + p.half] = o.y;
  } else {
    let j = (t * p.nK + (h - p.nQ)) * p.hd + i;
    let o = rotate(k[j], k[j + p.half], sc);
    k[j] = o.x;
    k[j + p.half] = o.y;
  }
}

// rope_append: the forward rotation of q and k, and each token's rotated k and its v written to
// KV-cache row rows[t] (rows[t] < 0 or ≥ maxT: not written), in one dispatch instead of rope then
// kvCacheAppend (a decode step's two small dispatches per layer). One thread per two adjacent
// pairs (i, i + half) and (i + 1, i + 1 + half), i even, so an f16 cache gets whole packed words
// (pack2x16float, as kvCacheAppend rounds). Needs hd a multiple of 4. p._pad0 holds maxT.
override CACHE_F16: bool = false;
@group(0) @binding(5) var<storage, read> v: array<f32>;              // (T, nK, hd)
@group(0) @binding(6) var<storage, read> rows: array<i32>;           // (T)
@group(0) @binding(7) var<storage, read_write> kCacheW: array<u32>;  // (maxT, nK, hd): f32 bits or f16 pairs
@group(0) @binding(8) var<storage, read_write> vCacheW: array<u32>;  // (maxT, nK, hd)

// Thread idx's two adjacent rotation pairs (i, i + half) and (i + 1, i + 1 + half), i even, of head
// h (q heads first, then k heads) of token t, and their (sin, cos); ok false past the last pair.
struct PairPair { ok: bool, i: u32, h: u32, t: u32, sc0: vec2<f32>, sc1: vec2<f32> }
fn pair_pair(idx: u32) -> PairPair {
  let heads = p.nQ + p.nK;
  let quarter = p.half / 2u;
  var r: PairPair;
  r.ok = idx < p.T * heads * quarter;
  if (!r.ok) { return r; }
  r.i = 2u * (idx % quarter);
  let th = idx / quarter;
  r.h = th % heads;
  r.t = th / heads;
  let pos = f32(positions[r.t]);
  r.sc0 = sincos(pos * inv_freq[r.i]);
  r.sc1 = sincos(pos * inv_freq[r.i + 1u]);
  return r;
}
// Rotates q's (or k's) two pairs at flat index j (element i of its head) in place; returns the
// rotated (x[i], x[i + 1], x[i + half], x[i + 1 + half]).
fn rotate_q_pairs(j: u32, pp: PairPair) -> vec4<f32> {
  let o0 = rotate(q[j], q[j + p.half], pp.sc0);
  let o1 = rotate(q[j + 1u], q[j + 1u + p.half], pp.sc1);
  q[j] = o0.x; q[j + 1u] = o1.x; q[j + p.half] = o0.y; q[j + 1u + p.half] = o1.y;
  return vec4(o0.x, o1.x, o0.y, o1.y);
}
fn rotate_k_pairs(j: u32, pp: PairPair) -> vec4<f32> {
  let o0 = rotate(k[j], k[j + p.half], pp.sc0);
  let o1 = rotate(k[j + 1u], k[j + 1u + p.half], pp.sc1);
  k[j] = o0.x; k[j + 1u] = o1.x; k[j + p.half] = o0.y; k[j + 1u + p.half] = o1.y;
  return vec4(o0.x, o1.x, o0.y, o1.y);
}

@compute @workgroup_size(256)
fn rope_append(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let pp = pair_pair((wg.y * nwg.x + wg.x) * 256u + lid);
  if (!pp.ok) { return; }
  let i = pp.i;
  let t = pp.t;
  if (pp.h < p.nQ) {
    _ = rotate_q_pairs((t * p.nQ + pp.h) * p.hd + i, pp);
    return;
  }
  let hk = pp.h - p.nQ;
  let j = (t * p.nK + hk) * p.hd + i;
  let ko = rotate_k_pairs(j, pp);
  let row = rows[t];
  if (row < 0 || u32(row) >= p._pad0) { return; }
  let dst = (u32(row) * p.nK + hk) * p.hd + i;
  let v0 = v[j]; let v1 = v[j + 1u]; let v2 = v[j + p.half]; let v3 = v[j + 1u + p.half];
  if (CACHE_F16) {
    kCacheW[dst / 2u] = pack2x16float(ko.xy);
    kCacheW[(dst + p.half) / 2u] = pack2x16float(ko.zw);
    vCacheW[dst / 2u] = pack2x16float(vec2<f32>(v0, v1));
    vCacheW[(dst + p.half) / 2u] = pack2x16float(vec2<f32>(v2, v3));
  } else {
    kCacheW[dst] = bitcast<u32>(ko.x); kCacheW[dst + 1u] = bitcast<u32>(ko.y);
    kCacheW[dst + p.half] = bitcast<u32>(ko.z); kCacheW[dst + 1u + p.half] = bitcast<u32>(ko.w);
    vCacheW[dst] = bitcast<u32>(v0); vCacheW[dst + 1u] = bitcast<u32>(v1);
    vCacheW[dst + p.half] = bitcast<u32>(v2); vCacheW[dst + 1u + p.half] = bitcast<u32>(v3);
  }
}

// rope_f16: the forward rotation of q and k in place, as rope_append pairs them, plus f16 copies of
// the rotated q and k and of v for the tensor-core attention (which would otherwise convert all
// three in three more passes; bindings 6-8 as rope_append's, which no entry point uses both of). Rounded by f32_bits_to_f16 (f16-bits.wgsl), so the copies have the
// bits of convert.ts's f32 → f16. Needs hd a multiple of 4.
@group(0) @binding(6) var<storage, read_write> q16w: array<u32>;  // (T, nQ, hd) f16 pairs
@group(0) @binding(7) var<storage, read_write> k16w: array<u32>; // (T, nK, hd) f16 pairs
@group(0) @binding(8) var<storage, read_write> v16w: array<u32>; // (T, nK, hd) f16 pairs

fn f16_pair(a: f32, b: f32) -> u32 {
  return f32_bits_to_f16(bitcast<u32>(a)) | (f32_bits_to_f16(bitcast<u32>(b)) << 16u);
}

@compute @workgroup_size(256)
fn rope_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let pp = pair_pair((wg.y * nwg.x + wg.x) * 256u + lid);
  if (!pp.ok) { return; }
  if (pp.h < p.nQ) {
    let j = (pp.t * p.nQ + pp.h) * p.hd + pp.i;
    let o = rotate_q_pairs(j, pp);
    q16w[j / 2u] = f16_pair(o.x, o.y);
    q16w[(j + p.half) / 2u] = f16_pair(o.z, o.w);
    return;
  }
  let j = (pp.t * p.nK + pp.h - p.nQ) * p.hd + pp.i;
  let o = rotate_k_pairs(j, pp);
  k16w[j / 2u] = f16_pair(o.x, o.y);
  k16w[(j + p.half) / 2u] = f16_pair(o.z, o.w);
  v16w[j / 2u] = f16_pair(v[j], v[j + 1u]);
  v16w[(j + p.half) / 2u] = f16_pair(v[j + p.half], v[j + 1u + p.half]);
}
