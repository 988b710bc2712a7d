// Causal self-attention with grouped-query heads over a packed batch, flash-attention style:
// no (T, T) matrix ever exists; key tiles stream through workgroup memory with an online
// softmax, and the backward pass recomputes probabilities from q, k and the saved lse.
//
//   q (T, nH, HD)   k, v (T, nKV, HD)   seq (T) i32   out (T, nH, HD)   lse (T, nH)
//   query head h reads kv head h / group, group = nH / nKV
//   query i sees key j  iff  seq[i] >= 0, seq[j] == seq[i], j <= i, (window == 0 or i - j < window)
//   (sequences are contiguous and in order; padding tokens have seq -1: zero output, zero grads)
//
// forward:   s = scale·q·kᵀ;  m = max s;  l = Σ exp(s − m);  out = Σ exp(s − m)·v / l;  lse = m + log l
// backward:  D = rowsum(dout ∘ out);  p = exp(s − lse);  dp = dout·vᵀ;  ds = p ∘ (dp − D)
//            dq = scale·ds·k;   dk = scale·dsᵀ·q;   dv = pᵀ·dout     (dk, dv summed over a group's heads)
//
// Every entry point runs 64 threads as an 8×8 grid (tx, ty). A workgroup owns BR "rows" and
// streams tiles of BC "cols": rows are queries and cols keys in forward/backward_dq; rows
// are keys and cols queries in backward_dkv (so dk/dv are owned by one workgroup: no atomics).
// Thread (tx, ty) owns score rows ty + 8i (i < RT), cols tx + 8j (j < CT), and output
// columns tx + 8jd (jd < HD/8) of its rows. Workgroup tiles are padded to HD + 1 per row so
// reads down a column hit distinct banks.

override HD: u32 = 64u;    // head dim, multiple of 8, ≤ 128
override RT: u32 = 4u;     // rows per thread (≤ 4): BR = 8·RT
override CT: u32 = 4u;     // cols per thread (≤ 4): BC = 8·CT
override BR: u32 = 8u * RT;
override BC: u32 = 8u * CT;
override LD: u32 = HD + 1u;
override CD: u32 = HD / 8u;
override R_TILE: u32 = BR * LD;
override C_TILE: u32 = BC * LD;
override SD: u32 = BC + 1u;
override S_TILE: u32 = BR * SD;

const NEG = -3.0e38;       // "masked" score; exp(NEG − m) is never evaluated
const NEG_HALF = -1.0e38;

struct Params {
  T: u32, nH: u32, nKV: u32, group: u32,
  window: u32, scale: f32, _a: u32, _b: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;    // (T, nH, HD)
@group(0) @binding(2) var<storage, read> k: array<f32>;    // (T, nKV, HD)
@group(0) @binding(3) var<storage, read> v: array<f32>;    // (T, nKV, HD)
@group(0) @binding(4) var<storage, read> seq: array<i32>;  // (T)
// forward
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (T, nH, HD)
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;  // (T, nH)
// backward_dq
@group(0) @binding(5) var<storage, read> out_in: array<f32>;     // (T, nH, HD)
@group(0) @binding(6) var<storage, read> lse_in: array<f32>;     // (T, nH)
@group(0) @binding(7) var<storage, read> dout: array<f32>;       // (T, nH, HD)
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;   // (T, nH, HD)
@group(0) @binding(9) var<storage, read_write> dsum: array<f32>; // (T, nH)  D, for backward_dkv
// backward_dkv: q k v seq, then lse_in (5), dout (6), dsum_in (7), dk (8), dv (9)
@group(0) @binding(5) var<storage, read> lse_kv: array<f32>;
@group(0) @binding(6) var<storage, read> dout_kv: array<f32>;
@group(0) @binding(7) var<storage, read> dsum_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;   // (T, nKV, HD)
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;   // (T, nKV, HD)

var<workgroup> Rs: array<f32, R_TILE>;   // row tile  (BR, HD+1)
var<workgroup> Rs2: array<f32, R_TILE>;
var<workgroup> Cs: array<f32, C_TILE>;   // col tile  (BC, HD+1)
var<workgroup> Cs2: array<f32, C_TILE>;
var<workgroup> Ss: array<f32, S_TILE>;   // scores / probabilities / ds  (BR, BC+1)
var<workgroup> rowSeq: array<i32, 32>;
var<workgroup> rowA: array<f32, 32>;
var<workgroup> rowB: array<f32, 32>;
var<workgroup> rowC: array<f32, 32>;
var<workgroup> colSeq: array<i32, 32>;
var<workgroup> colA: array<f32, 32>;
var<workgroup> colB: array<f32, 32>;

fn allowed(i: u32, si: i32, j: u32, sj: i32) -> bool {
  return si >= 0 && sj == si && j <= i && (p.window == 0u || i - j < p.window);
}
// seq id of token t; -2 past the end (never equal to a real id or to padding)
fn seqAt(t: u32) -> i32 {
  if (t < p.T) { return seq[t]; }
  return -2;
}
// First token in [t0, t1) that attends to anything, or t1. Uniform: read-only storage.
fn firstReal(t0: u32, t1: u32) -> u32 {
  for (var t = t0; t < t1; t++) { if (seq[t] >= 0) { return t; } }
  return t1;
}

// Tile loads: rows t0 .. t0 + BR (row tile) or BC (col tile) of head `head` of a (T, heads, HD)
// tensor into dst[r * LD + d], zero past T; all 64 threads take part, no barrier. (Pointers to
// storage buffers as parameters: WGSL's unrestricted_pointer_parameters, shipped by this Dawn.)
fn tileSlot(e: u32) -> u32 { return (e / HD) * LD + e % HD; }
fn tileValue(src: ptr<storage, array<f32>, read>, e: u32, t0: u32, heads: u32, head: u32) -> f32 {
  let t = t0 + e / HD;
  if (t < p.T) { return (*src)[(t * heads + head) * HD + e % HD]; }
  return 0.0;
}
fn loadRowTile(dst: ptr<workgroup, array<f32, R_TILE>>, src: ptr<storage, array<f32>, read>,
               t0: u32, heads: u32, head: u32, tid: u32) {
  for (var e = tid; e < BR * HD; e += 64u) { (*dst)[tileSlot(e)] = tileValue(src, e, t0, heads, head); }
}
fn loadColTile(dst: ptr<workgroup, array<f32, C_TILE>>, src: ptr<storage, array<f32>, read>,
               t0: u32, heads: u32, head: u32, tid: u32) {
  for (var e = tid; e < BC * HD; e += 64u) { (*dst)[tileSlot(e)] = tileValue(src, e, t0, heads, head); }
}

// ------------------------------------------------------------------------------ forward
// grid (ceil(T / BR), nH): rows = BR queries of head h; key tiles from the diagonal down.
@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wg.y;
  let g = h / p.group;
  let q0 = wg.x * BR;
  let tx = tid % 8u;
  let ty = tid / 8u;
  let rEnd = min(q0 + BR, p.T);
  loadRowTile(&Rs, &q, q0, p.nH, h, tid);
  for (var e = tid; e < BR * HD; e += 64u) { Rs[tileSlot(e)] *= p.scale; } // s = scale·q·kᵀ: scale folded into q
  if (tid < BR) { rowSeq[tid] = seqAt(q0 + tid); rowA[tid] = NEG; rowB[tid] = 0.0; } // m, l
  var o: array<array<f32, 16>, 4>; // (RT, HD/8) unnormalised Σ exp(s − m)·v
  workgroupBarrier();

  let r0 = firstReal(q0, rEnd);
  if (r0 < rEnd) {
    let s0 = seq[r0];
    var kt = (rEnd - 1u) / BC;
    loop {
      let k0 = kt * BC;
      // Row r0 has the earliest first key of the block; a tile wholly before it ends the scan.
      let kLast = k0 + BC - 1u;
      if (kLast < r0 && (seq[kLast] != s0 || (p.window != 0u && r0 - kLast >= p.window))) { break; }
      loadColTile(&Cs, &k, k0, p.nKV, g, tid);
      if (tid < BC) { colSeq[tid] = seqAt(k0 + tid); }
      workgroupBarrier();
      // s = scale·q·kᵀ   (BR, BC)
      var s = array<array<f32, 4>, 4>(); // explicit zero: this Dawn (webgpu 0.6.2) does not re-zero a bare `var x: T;` on each loop iteration (lavapipe and H200)
      for (var d = 0u; d < HD; d++) {
        var a: array<f32, 4>;
        var b: array<f32, 4>;
        for (var i = 0u; i < RT; i++) { a[i] = Rs[(ty + 8u * i) * LD + d]; }
        for (var j = 0u; j < CT; j++) { b[j] = Cs[(tx + 8u * j) * LD + d]; }
        for (var i = 0u; i < RT; i++) {
          for (var j = 0u; j < CT; j++) { s[i][j] = fma(a[i], b[j], s[i][j]); }
        }
      }
      for (var i = 0u; i < RT; i++) {
        let r = ty + 8u * i;
        for (var j = 0u; j < CT; j++) {
          let c = tx + 8u * j;
          Ss[r * SD + c] = select(NEG, s[i][j], allowed(q0 + r, rowSeq[r], k0 + c, colSeq[c]));
        }
      }
      workgroupBarrier();
      loadColTile(&Cs, &v, k0, p.nKV, g, tid); // v replaces k
      // online softmax, one thread per row: m' = max(m, max s); l' = l·exp(m − m') + Σ exp(s − m')
      if (tid < BR) {
        let r = tid;
        let mOld = rowA[r];
        var mNew = mOld;
        for (var c = 0u; c < BC; c++) { mNew = max(mNew, Ss[r * SD + c]); }
        var sum = 0.0;
        for (var c = 0u; c < BC; c++) {
          let x = Ss[r * SD + c];
          let pr = select(0.0, exp(x - mNew), x > NEG_HALF);
          Ss[r * SD + c] = pr;
          sum += pr;
        }
        let alpha = exp(mOld - mNew);
        rowA[r] = mNew;
        rowB[r] = rowB[r] * alpha + sum;
        rowC[r] = alpha;
      }
      workgroupBarrier();
      // o = o·exp(m − m') + p·v   (BR, HD)
      var pv: array<f32, 4>;
      for (var i = 0u; i < RT; i++) {
        let alpha = rowC[ty + 8u * i];
        for (var jd = 0u; jd < CD; jd++) { o[i][jd] *= alpha; }
      }
      for (var c = 0u; c < BC; c++) {
        for (var i = 0u; i < RT; i++) { pv[i] = Ss[(ty + 8u * i) * SD + c]; }
        for (var jd = 0u; jd < CD; jd++) {
          let vv = Cs[c * LD + tx + 8u * jd];
          for (var i = 0u; i < RT; i++) { o[i][jd] = fma(pv[i], vv, o[i][jd]); }
        }
      }
      workgroupBarrier();
      if (kt == 0u) { break; }
      kt -= 1u;
    }
  }
  // out = o / l;  lse = m + log l  (rows that see no key: out 0, lse 0)
  for (var i = 0u; i < RT; i++) {
    let r = ty + 8u * i;
    let t = q0 + r;
    if (t >= p.T) { continue; }
    let l = rowB[r];
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var jd = 0u; jd < CD; jd++) { out[(t * p.nH + h) * HD + tx + 8u * jd] = o[i][jd] * inv; }
    if (tx == 0u) { lse[t * p.nH + h] = select(0.0, rowA[r] + log(l), l > 0.0); }
  }
}

// ------------------------------------------------------------------------------ backward_dq
// grid (ceil(T / BR), nH): rows = BR queries of head h, same key scan as forward.
// Also writes D = rowsum(dout ∘ out) for backward_dkv, which must run after it.
@compute @workgroup_size(64)
fn backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wg.y;
  let g = h / p.group;
  let q0 = wg.x * BR;
  let tx = tid % 8u;
  let ty = tid / 8u;
  let rEnd = min(q0 + BR, p.T);
  loadRowTile(&Rs, &q, q0, p.nH, h, tid);
  loadRowTile(&Rs2, &dout, q0, p.nH, h, tid);
  if (tid < BR) {
    let t = q0 + tid;
    rowSeq[tid] = seqAt(t);
    var D = 0.0;
    var m = 0.0;
    if (t < p.T) {
      // D = rowsum(dout ∘ out): Σ_j p_j·dp_j, the softmax backward's subtracted term
      for (var d = 0u; d < HD; d++) { D = fma(dout[(t * p.nH + h) * HD + d], out_in[(t * p.nH + h) * HD + d], D); }
      dsum[t * p.nH + h] = D;
      m = lse_in[t * p.nH + h];
    }
    rowA[tid] = m;
    rowB[tid] = D;
  }
  var acc: array<array<f32, 16>, 4>; // (RT, HD/8) Σ ds·k
  workgroupBarrier();

  let r0 = firstReal(q0, rEnd);
  if (r0 < rEnd) {
    let s0 = seq[r0];
    var kt = (rEnd - 1u) / BC;
    loop {
      let k0 = kt * BC;
      let kLast = k0 + BC - 1u;
      if (kLast < r0 && (seq[kLast] != s0 || (p.window != 0u && r0 - kLast >= p.window))) { break; }
      loadColTile(&Cs, &v, k0, p.nKV, g, tid);
      if (tid < BC) { colSeq[tid] = seqAt(k0 + tid); }
      workgroupBarrier();
      // out = p·v   ->   dp = dout·vᵀ
      var dp = array<array<f32, 4>, 4>();
      for (var d = 0u; d < HD; d++) {
        var a: array<f32, 4>;
        var b: array<f32, 4>;
        for (var i = 0u; i < RT; i++) { a[i] = Rs2[(ty + 8u * i) * LD + d]; }
        for (var j = 0u; j < CT; j++) { b[j] = Cs[(tx + 8u * j) * LD + d]; }
        for (var i = 0u; i < RT; i++) {
          for (var j = 0u; j < CT; j++) { dp[i][j] = fma(a[i], b[j], dp[i][j]); }
        }
      }
      workgroupBarrier();
      loadColTile(&Cs, &k, k0, p.nKV, g, tid); // k replaces v
      workgroupBarrier();
      // s = scale·q·kᵀ (recomputed);  p = exp(s − lse)
      var s = array<array<f32, 4>, 4>();
      for (var d = 0u; d < HD; d++) {
        var a: array<f32, 4>;
        var b: array<f32, 4>;
        for (var i = 0u; i < RT; i++) { a[i] = Rs[(ty + 8u * i) * LD + d]; }
        for (var j = 0u; j < CT; j++) { b[j] = Cs[(tx + 8u * j) * LD + d]; }
        for (var i = 0u; i < RT; i++) {
          for (var j = 0u; j < CT; j++) { s[i][j] = fma(a[i], b[j], s[i][j]); }
        }
      }
      // p = softmax(s)   ->   ds = p ∘ (dp − D)
      for (var i = 0u; i < RT; i++) {
        let r = ty + 8u * i;
        for (var j = 0u; j < CT; j++) {
          let c = tx + 8u * j;
          var ds = 0.0;
          if (allowed(q0 + r, rowSeq[r], k0 + c, colSeq[c])) {
            ds = exp(p.scale * s[i][j] - rowA[r]) * (dp[i][j] - rowB[r]);
          }
          Ss[r * SD + c] = ds;
        }
      }
      workgroupBarrier();
      // s = scale·q·kᵀ   ->   dq = scale·ds·k
      for (var c = 0u; c < BC; c++) {
        var dsv: array<f32, 4>;
        for (var i = 0u; i < RT; i++) { dsv[i] = Ss[(ty + 8u * i) * SD + c]; }
        for (var jd = 0u; jd < CD; jd++) {
          let kv = Cs[c * LD + tx + 8u * jd];
          for (var i = 0u; i < RT; i++) { acc[i][jd] = fma(dsv[i], kv, acc[i][jd]); }
        }
      }
      workgroupBarrier();
      if (kt == 0u) { break; }
      kt -= 1u;
    }
  }
  for (var i = 0u; i < RT; i++) {
    let t = q0 + ty + 8u * i;
    if (t >= p.T) { continue; }
    for (var jd = 0u; jd < CD; jd++) { dq[(t * p.nH + h) * HD + tx + 8u * jd] = p.scale * acc[i][jd]; }
  }
}

// ------------------------------------------------------------------------------ backward_dkv
// grid (ceil(T / BR), nKV): rows = BR keys of kv head g; for each query head of the group,
// query tiles from the diagonal up until the last key's sequence (or window) ends.
@compute @workgroup_size(64)
fn backward_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let g = wg.y;
  let k0 = wg.x * BR;
  let tx = tid % 8u;
  let ty = tid / 8u;
  let kEnd = min(k0 + BR, p.T);
  loadRowTile(&Rs, &k, k0, p.nKV, g, tid);
  loadRowTile(&Rs2, &v, k0, p.nKV, g, tid);
  if (tid < BR) { rowSeq[tid] = seqAt(k0 + tid); }
  var dka: array<array<f32, 16>, 4>; // (RT, HD/8) Σ ds·q
  var dva: array<array<f32, 16>, 4>; // (RT, HD/8) Σ p·dout
  workgroupBarrier();

  // last key of the block that any query sees (uniform)
  var k1 = kEnd;
  for (var t = kEnd; t > k0; t--) { if (seq[t - 1u] >= 0) { k1 = t - 1u; break; } }
  if (k1 < kEnd) {
    let s1 = seq[k1];
    for (var hq = 0u; hq < p.group; hq++) {
      let h = g * p.group + hq;
      for (var c0 = (k0 / BC) * BC; c0 < p.T; c0 += BC) {
        if (c0 > k1 && (seq[c0] != s1 || (p.window != 0u && c0 - k1 >= p.window))) { break; }
        loadColTile(&Cs, &q, c0, p.nH, h, tid);
        loadColTile(&Cs2, &dout_kv, c0, p.nH, h, tid);
        if (tid < BC) {
          let t = c0 + tid;
          colSeq[tid] = seqAt(t);
          var m = 0.0;
          var D = 0.0;
          if (t < p.T) { m = lse_kv[t * p.nH + h]; D = dsum_in[t * p.nH + h]; }
          colA[tid] = m;
          colB[tid] = D;
        }
        workgroupBarrier();
        // s = scale·q·kᵀ (recomputed, here as k·qᵀ) and dp = dout·vᵀ (here v·doutᵀ)
        var s = array<array<f32, 4>, 4>();
        var dp = array<array<f32, 4>, 4>();
        for (var d = 0u; d < HD; d++) {
          var a: array<f32, 4>;
          var a2: array<f32, 4>;
          var b: array<f32, 4>;
          var b2: array<f32, 4>;
          for (var i = 0u; i < RT; i++) { a[i] = Rs[(ty + 8u * i) * LD + d]; a2[i] = Rs2[(ty + 8u * i) * LD + d]; }
          for (var j = 0u; j < CT; j++) { b[j] = Cs[(tx + 8u * j) * LD + d]; b2[j] = Cs2[(tx + 8u * j) * LD + d]; }
          for (var i = 0u; i < RT; i++) {
            for (var j = 0u; j < CT; j++) {
              s[i][j] = fma(a[i], b[j], s[i][j]);
              dp[i][j] = fma(a2[i], b2[j], dp[i][j]);
            }
          }
        }
        // p = exp(s − lse);  p = softmax(s)   ->   ds = p ∘ (dp − D)
        for (var i = 0u; i < RT; i++) {
          let r = ty + 8u * i;
          for (var j = 0u; j < CT; j++) {
            let c = tx + 8u * j;
            var pr = 0.0;
            if (allowed(c0 + c, colSeq[c], k0 + r, rowSeq[r])) { pr = exp(p.scale * s[i][j] - colA[c]); }
            s[i][j] = pr;
            dp[i][j] = pr * (dp[i][j] - colB[c]);
            Ss[r * SD + c] = pr;
          }
        }
        workgroupBarrier();
        // out = p·v   ->   dv = pᵀ·dout
        for (var c = 0u; c < BC; c++) {
          var pv: array<f32, 4>;
          for (var i = 0u; i < RT; i++) { pv[i] = Ss[(ty + 8u * i) * SD + c]; }
          for (var jd = 0u; jd < CD; jd++) {
            let y = Cs2[c * LD + tx + 8u * jd];
            for (var i = 0u; i < RT; i++) { dva[i][jd] = fma(pv[i], y, dva[i][jd]); }
          }
        }
        workgroupBarrier();
        for (var i = 0u; i < RT; i++) {
          for (var j = 0u; j < CT; j++) { Ss[(ty + 8u * i) * SD + tx + 8u * j] = dp[i][j]; }
        }
        workgroupBarrier();
        // s = scale·q·kᵀ   ->   dk = scale·dsᵀ·q
        for (var c = 0u; c < BC; c++) {
          var dsv: array<f32, 4>;
          for (var i = 0u; i < RT; i++) { dsv[i] = Ss[(ty + 8u * i) * SD + c]; }
          for (var jd = 0u; jd < CD; jd++) {
            let x = Cs[c * LD + tx + 8u * jd];
            for (var i = 0u; i < RT; i++) { dka[i][jd] = fma(dsv[i], x, dka[i][jd]); }
          }
        }
        workgroupBarrier();
      }
    }
  }
  for (var i = 0u; i < RT; i++) {
    let t = k0 + ty + 8u * i;
    if (t >= p.T) { continue; }
    for (var jd = 0u; jd < CD; jd++) {
      let idx = (t * p.nKV + g) * HD + tx + 8u * jd;
      dk[idx] = p.scale * dka[i][jd];
      dv[idx] = dva[i][jd];
    }
  }
}
