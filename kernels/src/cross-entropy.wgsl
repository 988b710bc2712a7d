// Cross-entropy of the output projection, chunked over the vocabulary so that the full
// (T, V) logits never exist at once. The wrapper (cross-entropy.ts) drives it:
//
//   forward   for each chunk [v0, v0+n):  logits = h · W[v0:v0+n]ᵀ      // (T, n)  matmul
//                                        ce_chunk_stats                 // online max / sum-exp
//             ce_finalize: lse = m + log(s); nll = lse - logit[label]   // (T), loss sum + count
//   backward  for each chunk:            logits = h · W[v0:v0+n]ᵀ       // recomputed
//                                        ce_chunk_backward (in place)   // dlogits (T, n)
//                                        dh += dlogits · W[v0:v0+n]     // (T, C)  matmul
//                                        dW[v0:v0+n] += dlogitsᵀ · h    // (n, C)  optional
//
// Shapes: T rows (tokens), C channels, V vocabulary, n columns in the current chunk.
// state (T, 4) per row: [running max m, running sum s of exp(l - m), target logit, lse].
// labels (T) i32; -100 is ignored (no loss, zero gradient). A label outside [0, V) that is not
// -100 makes that row's nll NaN, so the loss and the non-finite flag report it.

struct Params {
  T: u32, n: u32, v0: u32, V: u32,
  scale: f32, flags: u32, _a: u32, _b: u32,
}
const FIRST_CHUNK = 1u;   // ce_chunk_stats: the state holds nothing yet
const ACCUM_LOSS = 2u;    // ce_finalize: loss += (sum, count) instead of loss = ...
const HAS_NLL = 4u;       // ce_finalize: write per-token nll
const HAS_FLAG = 8u;      // ce_finalize: set nonfinite[0] = 1 when the loss sum is not finite
const IGNORE_INDEX = -100;
const WG = 256u;
const NEG_BIG = -3.4028234663852886e38;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;
var<workgroup> red2: array<f32, WG>;

fn wg_max(x: f32, tid: u32) -> f32 {
  workgroupBarrier();
  red[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
    workgroupBarrier();
  }
  return red[0];
}

fn wg_sum(x: f32, tid: u32) -> f32 {
  workgroupBarrier();
  red[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { red[tid] = red[tid] + red[tid + s]; }
    workgroupBarrier();
  }
  return red[0];
}

// ------------------------------------------------------------------ forward, per chunk
@group(0) @binding(1) var<storage, read> s_logits: array<f32>;       // (T, n)
@group(0) @binding(2) var<storage, read> s_labels: array<i32>;       // (T)
@group(0) @binding(3) var<storage, read_write> s_state: array<f32>;  // (T, 4)

// One workgroup per row: merges this chunk's (max, sum-exp) into the running pair,
//   m' = max(m, m_c);  s' = s·exp(m - m') + s_c·exp(m_c - m')
// and picks up the target logit when the label falls inside the chunk.
@compute @workgroup_size(WG)
fn ce_chunk_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = wg.x;
  let base = t * p.n;
  var mx = NEG_BIG;
  for (var j = tid; j < p.n; j += WG) { mx = max(mx, s_logits[base + j]); }
  mx = wg_max(mx, tid);
  var se = 0.0;
  for (var j = tid; j < p.n; j += WG) { se += exp(s_logits[base + j] - mx); }
  se = wg_sum(se, tid);
  if (tid == 0u) {
    var m = mx;
    var s = se;
    var alpha = 0.0; // exp(m_old - m_new): the one-pass backward rescales its row of U by it
    if ((p.flags & FIRST_CHUNK) == 0u) {
      let m0 = s_state[t * 4u];
      let s0 = s_state[t * 4u + 1u];
      m = max(m0, mx);
      s = s0 * exp(m0 - m) + se * exp(mx - m);
      alpha = exp(m0 - m);
    }
    s_state[t * 4u] = m;
    s_state[t * 4u + 1u] = s;
    s_state[t * 4u + 3u] = alpha; // slot 3 holds lse only after ce_finalize
    let label = s_labels[t];
    if (label >= i32(p.v0) && label < i32(p.v0 + p.n)) {
      s_state[t * 4u + 2u] = s_logits[base + u32(label) - p.v0];
    }
  }
}

// ------------------------------------------------------------------ forward, finalize
@group(0) @binding(1) var<storage, read_write> f_state: array<f32>;   // (T, 4)
@group(0) @binding(2) var<storage, read> f_labels: array<i32>;        // (T)
@group(0) @binding(3) var<storage, read_write> f_loss: array<f32>;    // (2) [nll sum, count]
@group(0) @binding(4) var<storage, read_write> f_nll: array<f32>;     // (T) or placeholder
@group(0) @binding(5) var<storage, read_write> f_flag: array<u32>;    // (1) or placeholder

fn is_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }

// One workgroup for all rows, a fixed summation order: the loss is deterministic.
//   lse = m + log(s);  nll = lse - logit[label];  loss = Σ nll over rows with label != -100
@compute @workgroup_size(WG)
fn ce_finalize(@builtin(local_invocation_index) tid: u32) {
  var nanBits = 0x7fc00000u;
  var sum = 0.0;
  var cnt = 0.0;
  for (var t = tid; t < p.T; t += WG) {
    let label = f_labels[t];
    let lse = f_state[t * 4u] + log(f_state[t * 4u + 1u]);
    f_state[t * 4u + 3u] = lse;
    var nll = 0.0;
    if (label != IGNORE_INDEX) {
      if (label < 0 || u32(label) >= p.V) { nll = bitcast<f32>(nanBits); }
      else { nll = lse - f_state[t * 4u + 2u]; }
      sum += nll;
      cnt += 1.0;
    }
    if ((p.flags & HAS_NLL) != 0u) { f_nll[t] = nll; }
  }
  sum = wg_sum(sum, tid);
  workgroupBarrier();
  red2[tid] = cnt;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { red2[tid] = red2[tid] + red2[tid + s]; }
    workgroupBarrier();
  }
  if (tid == 0u) {
    cnt = red2[0];
    if ((p.flags & ACCUM_LOSS) != 0u) {
      sum += f_loss[0];
      cnt += f_loss[1];
    }
    f_loss[0] = sum;
    f_loss[1] = cnt;
    if ((p.flags & HAS_FLAG) != 0u && !is_finite(sum)) { f_flag[0] = 1u; }
  }
}

// ------------------------------------------------------------------ backward, per chunk
@group(0) @binding(1) var<storage, read_write> b_logits: array<f32>;  // (T, n) -> dlogits
@group(0) @binding(2) var<storage, read> b_labels: array<i32>;        // (T)
@group(0) @binding(3) var<storage, read> b_state: array<f32>;         // (T, 4)

// Differentiates  loss = scale · Σ_t (lse_t - logit[t, label_t]):
//   dlogits[t, v] = scale · (softmax(logits[t])[v] - [v == label_t]),  0 for ignored rows.
// Grid: (ceil(n / WG), T).
@compute @workgroup_size(WG)
fn ce_chunk_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = wg.y;
  let j = wg.x * WG + tid;
  if (j >= p.n) { return; }
  let idx = t * p.n + j;
  let label = b_labels[t];
  if (label == IGNORE_INDEX) {
    b_logits[idx] = 0.0;
    return;
  }
  var d = exp(b_logits[idx] - b_state[t * 4u + 3u]);
  if (i32(p.v0 + j) == label) { d -= 1.0; }
  b_logits[idx] = d * p.scale;
}

// ------------------------------------------------------------------ one-pass backward (dh only)
// Without a dW to compute, dh = scale · (Σ_v softmax_v · W_v − W_label) is accumulated during the
// forward sweep, as flash attention accumulates its output: per chunk, after ce_chunk_stats,
//   E = exp(logits − m_running)          (T, n), 0 for ignored rows    ce_chunk_exp (in place)
//   U = α · U + E · W[v0:v0+n]           (T, C), α = exp(m_old − m_new)  ce_scale_rows + a matmul
// so U_t = Σ_v exp(l_tv − m_t) W_v at the end and dh_t = scale · (U_t / s_t − W_label) (the label
// rows subtracted chunk by chunk; cross-entropy.ts dhSource), with no logits recompute.

// Grid (ceil(n / WG), T).
@compute @workgroup_size(WG)
fn ce_chunk_exp(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = wg.y;
  let j = wg.x * WG + tid;
  if (j >= p.n) { return; }
  let idx = t * p.n + j;
  if (b_labels[t] == IGNORE_INDEX) { b_logits[idx] = 0.0; return; }
  b_logits[idx] = exp(b_logits[idx] - b_state[t * 4u]);
}

// U (T, C) row t *= α_t (state slot 3); p.n = C. Grid (ceil(C / WG), T).
@compute @workgroup_size(WG)
fn ce_scale_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = wg.y;
  let j = wg.x * WG + tid;
  if (j >= p.n) { return; }
  var a = b_state[t * 4u + 3u];
  if (b_labels[t] == IGNORE_INDEX) { a = 0.0; }
  b_logits[t * p.n + j] *= a;
}
