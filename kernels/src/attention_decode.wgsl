// Inference-time attention against a per-layer KV cache, for continuous batching.
//
//   cache_append:   kCache[pos[t]] = kNew[t], vCache[pos[t]] = vNew[t]   (pos < 0: skipped)
//     kNew, vNew (n, nKV, HD) f32;  pos (n) i32;  kCache, vCache (maxT, nKV, HD) f32 or f16
//   decode:         B sequences, one new query each; sequence b owns cache rows
//                   offsets[b] .. offsets[b] + lengths[b] − 1 (its new token, already appended,
//                   is the last of them), so it is row lengths[b] − 1 of its own causal attention.
//     q (B, nH, HD) f32;  offsets, lengths (B) u32;  out (B, nH, HD);  lse (B, nH)
//   Split-K (flash-decoding): nSplit workgroups share one sequence's keys, each writing
//   (unnormalised o, m, l) to part (B, nH, nSplit, HD + 2); decode_combine merges them.
//   With nSplit == 1, decode normalises and writes out/lse itself.
//
// Caches are bound as u32 words: f32 values bit-cast, f16 values packed two per word, so one
// source serves both (CACHE_F16).

override HD: u32 = 64u;        // head dim, multiple of 8, ≤ 128
override GB: u32 = 8u;         // query heads per workgroup (one kv group's, GB·HD ≤ 1024)
override CACHE_F16: bool = false;
const BKD = 32u;               // keys per tile
const NEG = -3.0e38;
const NEG_HALF = -1.0e38;
override LD: u32 = HD + 1u;
override KV_TILE: u32 = BKD * LD;
override Q_TILE: u32 = GB * HD;
override S_TILE: u32 = GB * BKD;
override NO: u32 = (GB * HD + 63u) / 64u; // outputs per thread (≤ 16)

struct Params {
  B: u32, nH: u32, nKV: u32, group: u32,
  window: u32, scale: f32, nSplit: u32, splitLen: u32,
  nHB: u32, n: u32, maxT: u32, wgx: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
// cache_append
@group(0) @binding(1) var<storage, read> kNew: array<f32>;           // (n, nKV, HD)
@group(0) @binding(2) var<storage, read> vNew: array<f32>;           // (n, nKV, HD)
@group(0) @binding(3) var<storage, read> pos: array<i32>;            // (n)
@group(0) @binding(4) var<storage, read_write> kCacheW: array<u32>;  // (maxT, nKV, HD)
@group(0) @binding(5) var<storage, read_write> vCacheW: array<u32>;  // (maxT, nKV, HD)
// decode
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;        // (B, nH, HD), 4 values an element
@group(0) @binding(2) var<storage, read> kCache: array<vec4<u32>>;   // (maxT, nKV, HD), 16-byte chunks
@group(0) @binding(3) var<storage, read> vCache: array<vec4<u32>>;   // (maxT, nKV, HD), 16-byte chunks
@group(0) @binding(4) var<storage, read> offsets: array<u32>;        // (B)
@group(0) @binding(5) var<storage, read> lengths: array<u32>;        // (B)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;      // (B, nH, HD)
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;      // (B, nH)
@group(0) @binding(8) var<storage, read_write> part: array<f32>;     // (B, nH, nSplit, HD + 2)
// decode_combine
@group(0) @binding(1) var<storage, read> partIn: array<f32>;         // (B, nH, nSplit, HD + 2)
@group(0) @binding(2) var<storage, read_write> outC: array<f32>;     // (B, nH, HD)
@group(0) @binding(3) var<storage, read_write> lseC: array<f32>;     // (B, nH)

// ------------------------------------------------------------------------------ cache_append
// one thread per element (f32) or per element pair (f16); grid (wgx, ·) of 256 threads
@compute @workgroup_size(256)
fn cache_append(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let per = select(1u, 2u, CACHE_F16);
  let row = p.nKV * HD;
  let i = ((wg.y * p.wgx + wg.x) * 256u + lid) * per;
  if (i >= p.n * row) { return; }
  let t = i / row;
  let at = pos[t];
  if (at < 0 || u32(at) >= p.maxT) { return; }
  let dst = u32(at) * row + i % row;
  if (CACHE_F16) {
    kCacheW[dst / 2u] = pack2x16float(vec2<f32>(kNew[i], kNew[i + 1u]));
    vCacheW[dst / 2u] = pack2x16float(vec2<f32>(vNew[i], vNew[i + 1u]));
  } else {
    kCacheW[dst] = bitcast<u32>(kNew[i]);
    vCacheW[dst] = bitcast<u32>(vNew[i]);
  }
}

// A key or value tile (BKD cache rows of one kv head) is staged in 16-byte chunks (8 f16 or 4 f32
// values), two chunks of a thread loaded before either is stored. The scalar loop before issued one
// load per value (two per f16 word) and stored each before the next load: at head dim 128 that is
// 64 dependent loads per thread and tile, 8-16 times the chunked form's (an 8B decode step spent
// 45 µs per layer in this kernel at 49 keys, session 11's H100 profile). Two chunks, not four:
// four made lavapipe's compile of this kernel 1.5-2× slower (CI compiles it in every process).
override EPC: u32 = select(4u, 8u, CACHE_F16);     // values per chunk
override CPR: u32 = HD / EPC;                      // chunks per cache row of one head

fn loadChunk(isV: bool, e: u32, j0: u32, hi: u32, off: u32, g: u32) -> vec4<u32> {
  let c = e / CPR;
  if (e >= BKD * CPR || j0 + c >= hi) { return vec4<u32>(0u); }
  let at = ((off + j0 + c) * p.nKV + g) * CPR + e % CPR;
  if (isV) { return vCache[at]; }
  return kCache[at];
}

fn storeChunk(e: u32, x: vec4<u32>) {
  if (e >= BKD * CPR) { return; }
  let dst = (e / CPR) * LD + (e % CPR) * EPC;
  if (CACHE_F16) {
    let a = unpack2x16float(x.x); let b = unpack2x16float(x.y); let c = unpack2x16float(x.z); let d = unpack2x16float(x.w);
    KVs[dst] = a.x; KVs[dst + 1u] = a.y; KVs[dst + 2u] = b.x; KVs[dst + 3u] = b.y;
    KVs[dst + 4u] = c.x; KVs[dst + 5u] = c.y; KVs[dst + 6u] = d.x; KVs[dst + 7u] = d.y;
  } else {
    let f = bitcast<vec4<f32>>(x);
    KVs[dst] = f.x; KVs[dst + 1u] = f.y; KVs[dst + 2u] = f.z; KVs[dst + 3u] = f.w;
  }
}

fn stageTile(isV: bool, j0: u32, hi: u32, off: u32, g: u32, tid: u32) {
  for (var e0 = tid; e0 < BKD * CPR; e0 += 128u) { // 2 chunks of this thread per round: 64 threads apart
    let x0 = loadChunk(isV, e0, j0, hi, off, g);
    let x1 = loadChunk(isV, e0 + 64u, j0, hi, off, g);
    storeChunk(e0, x0); storeChunk(e0 + 64u, x1);
  }
}

var<workgroup> Qs: array<f32, Q_TILE>;     // (GB, HD), scale folded in
var<workgroup> KVs: array<f32, KV_TILE>;   // (BKD, HD+1)
var<workgroup> Ss: array<f32, S_TILE>;     // (GB, BKD)
var<workgroup> mS: array<f32, 8>;
var<workgroup> lS: array<f32, 8>;
var<workgroup> aS: array<f32, 8>;

// ------------------------------------------------------------------------------ decode
// grid (nSplit, B, nKV·nHB): split `wg.x` of sequence b's keys for GB heads of kv head g.
@compute @workgroup_size(64)
fn decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let split = wg.x;
  let b = wg.y;
  let g = wg.z / p.nHB;
  let h0 = g * p.group + (wg.z % p.nHB) * GB;        // first query head of this workgroup
  let nG = min(GB, g * p.group + p.group - h0);      // heads here
  let off = offsets[b];
  let len = lengths[b];
  // the query is position len − 1: keys j ≥ len − window
  var start = 0u;
  if (p.window != 0u && len > p.window) { start = len - p.window; }
  let lo = start + split * p.splitLen;
  // the last split takes everything left, so a low length hint never drops keys
  let hi = select(min(len, lo + p.splitLen), len, split + 1u == p.nSplit);
  for (var e = 4u * tid; e < GB * HD; e += 256u) { // 4 values a load (HD is a multiple of 8)
    let gi = e / HD;
    var x = vec4<f32>(0.0);
    if (gi < nG) { x = q[((b * p.nH + h0 + gi) * HD + e % HD) / 4u] * p.scale; } // s = scale·q·kᵀ
    Qs[e] = x.x; Qs[e + 1u] = x.y; Qs[e + 2u] = x.z; Qs[e + 3u] = x.w;
  }
  if (tid < GB) { mS[tid] = NEG; lS[tid] = 0.0; }
  var o: array<f32, 16>; // outputs e = tid + 64i of (GB, HD)
  workgroupBarrier();
  for (var j0 = lo; j0 < hi; j0 += BKD) {
    stageTile(false, j0, hi, off, g, tid);
    workgroupBarrier();
    for (var e = tid; e < GB * BKD; e += 64u) {
      let gi = e / BKD; let c = e % BKD;
      var s = NEG;
      if (gi < nG && j0 + c < hi) {
        s = 0.0;
        for (var d = 0u; d < HD; d++) { s = fma(Qs[gi * HD + d], KVs[c * LD + d], s); }
      }
      Ss[e] = s;
    }
    workgroupBarrier();
    stageTile(true, j0, hi, off, g, tid); // v replaces k
    if (tid < GB) { // online softmax, as attention.wgsl's forward
      let mOld = mS[tid];
      var mNew = mOld;
      for (var c = 0u; c < BKD; c++) { mNew = max(mNew, Ss[tid * BKD + c]); }
      var sum = 0.0;
      for (var c = 0u; c < BKD; c++) {
        let x = Ss[tid * BKD + c];
        let pr = select(0.0, exp(x - mNew), x > NEG_HALF);
        Ss[tid * BKD + c] = pr;
        sum += pr;
      }
      let alpha = exp(mOld - mNew);
      mS[tid] = mNew;
      lS[tid] = lS[tid] * alpha + sum;
      aS[tid] = alpha;
    }
    workgroupBarrier();
    for (var i = 0u; i < NO; i++) {
      let e = tid + 64u * i;
      if (e >= GB * HD) { break; }
      let gi = e / HD; let d = e % HD;
      var acc = o[i] * aS[gi];
      for (var c = 0u; c < BKD; c++) { acc = fma(Ss[gi * BKD + c], KVs[c * LD + d], acc); }
      o[i] = acc;
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < NO; i++) {
    let e = tid + 64u * i;
    let gi = e / HD; let d = e % HD;
    if (e >= GB * HD || gi >= nG) { break; }
    let h = h0 + gi;
    let l = lS[gi];
    if (p.nSplit == 1u) {
      out[(b * p.nH + h) * HD + d] = select(0.0, o[i] / l, l > 0.0);
      if (d == 0u) { lse[b * p.nH + h] = select(0.0, mS[gi] + log(l), l > 0.0); }
    } else {
      let base = ((b * p.nH + h) * p.nSplit + split) * (HD + 2u);
      part[base + d] = o[i];
      if (d == 0u) { part[base + HD] = mS[gi]; part[base + HD + 1u] = l; }
    }
  }
}

// ------------------------------------------------------------------------------ decode_combine
// grid (B, nH): out = Σ_s exp(m_s − M)·o_s / Σ_s exp(m_s − M)·l_s;  lse = M + log(denominator)
@compute @workgroup_size(64)
fn decode_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wg.x;
  let h = wg.y;
  let W = HD + 2u;
  let base = (b * p.nH + h) * p.nSplit * W;
  var M = NEG;
  for (var s = 0u; s < p.nSplit; s++) { M = max(M, partIn[base + s * W + HD]); }
  var den = 0.0;
  for (var s = 0u; s < p.nSplit; s++) { den += exp(partIn[base + s * W + HD] - M) * partIn[base + s * W + HD + 1u]; }
  for (var d = tid; d < HD; d += 64u) {
    var num = 0.0;
    for (var s = 0u; s < p.nSplit; s++) { num += exp(partIn[base + s * W + HD] - M) * partIn[base + s * W + d]; }
    outC[(b * p.nH + h) * HD + d] = select(0.0, num / den, den > 0.0);
  }
  if (tid == 0u) { lseC[b * p.nH + h] = select(0.0, M + log(den), den > 0.0); }
}
