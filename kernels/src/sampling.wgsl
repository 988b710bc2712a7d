// Next-token selection from logits (B, V), one workgroup per row, everything on the GPU:
// greedy argmax, or the chain  temperature → min-p and top-k → top-p  and one draw
// with the row's uniform number u ∈ [0, 1) (drawn on the CPU from a seeded RNG).
//
// Filters are thresholds on the logit value, found by binary search over the order-preserving
// u32 key of f32 (32 passes at most, each one sweep of the row), so nothing is sorted:
//   top-k: θk = the k-th largest logit (largest θ with #{l ≥ θ} ≥ k); keep l ≥ θk
//          (HF: scores < topk(scores, k)[-1] are removed, ties with the k-th kept)
//   min-p: keep p ≥ minP · p_max, i.e. l ≥ max + T·ln(minP) (vLLM: before top-p); with top-k
//          the kept set is l ≥ max(θk, θmin)
//   top-p: over e = exp((l − max)/T) of the top-k survivors, Z_k = Σ e; keep a token iff the
//          mass strictly above it is < p·Z_k (HF: sorted ascending, remove cumprobs ≤ 1 − p,
//          the top token always kept); θp = the smallest such logit.
//   draw:  the first index i (index order) whose running kept mass exceeds u · Z_kept.
// Returned logprob(s) are of the raw distribution log_softmax(logits) (no temperature, no
// filtering), as OpenAI's logprobs report the model's distribution. top-N: the N largest raw
// logprobs, ties to the lower index (N passes of argmax below the previous pick). With HAS_RAW,
// `raw` holds the logits before penalties were applied to `logits` (the sampled distribution):
// the logprobs and top-N are of log_softmax(raw), as vLLM's default (raw) logprobs are.
//
// rowParams (B, 8) f32: [temperature, topK, topP, u, minP, 0, 0, 0]; temperature ≤ 0 → greedy.
// topK 0 or ≥ Vt, topP ≥ 1 and minP ≤ 0 disable those filters. probs (optional, B×V): the filtered, renormalised
// distribution that was sampled from (one-hot at the argmax when greedy).
//
// Padded vocabulary: only the first Vt ≤ V columns of a row are tokens (checkpoints pad
// vocab_size past the tokenizer's, e.g. Qwen2.5's 151,936 rows for 151,665 ids). Every sweep
// stops at Vt, which is exactly masking columns ≥ Vt to −inf: they are never chosen, never in
// top-N, and logprobs are normalised over the Vt real tokens; probs is 0 there.

struct Params { B: u32, V: u32, topN: u32, flags: u32, Vt: u32 }
const HAS_ROW_PARAMS = 1u; // else every row is greedy
const HAS_LOGPROB = 2u;
const HAS_PROBS = 4u;
const HAS_RAW = 8u; // logprobs and top-N from `raw` (binding 8), not from `logits`
const WG = 256u;
const NEG_BIG = -3.4028234663852886e38;
const NONE = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;          // (B, V)
@group(0) @binding(2) var<storage, read> row_params: array<f32>;      // (B, 8) or placeholder
@group(0) @binding(3) var<storage, read_write> tokens: array<i32>;    // (B)
@group(0) @binding(4) var<storage, read_write> logprobs: array<f32>;  // (B) or unused
@group(0) @binding(5) var<storage, read_write> top_ids: array<i32>;   // (B, topN) or unused
@group(0) @binding(6) var<storage, read_write> top_lp: array<f32>;    // (B, topN) or unused
@group(0) @binding(7) var<storage, read_write> probs: array<f32>;     // (B, V) or unused
@group(0) @binding(8) var<storage, read> raw: array<f32>;             // (B, V) with HAS_RAW, else placeholder

var<workgroup> rf: array<f32, WG>;
var<workgroup> ru: array<u32, WG>;
var<workgroup> row_sp: vec4<f32>;
var<workgroup> row_min_p: f32;
var<workgroup> choice: atomic<u32>;

/** Order-preserving map f32 → u32: a < b ⇔ key(a) < key(b) (for non-NaN). */
fn key(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn sum_f(x: f32, tid: u32) -> f32 {
  workgroupBarrier();
  rf[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { rf[tid] = rf[tid] + rf[tid + s]; }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&rf[0]);
}

fn sum_u(x: u32, tid: u32) -> u32 {
  workgroupBarrier();
  ru[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { ru[tid] = ru[tid] + ru[tid + s]; }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&ru[0]);
}

fn min_u(x: u32, tid: u32) -> u32 {
  workgroupBarrier();
  ru[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { ru[tid] = min(ru[tid], ru[tid + s]); }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&ru[0]);
}

fn max_u(x: u32, tid: u32) -> u32 {
  workgroupBarrier();
  ru[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { ru[tid] = max(ru[tid], ru[tid + s]); }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&ru[0]);
}

/** (value, index) a ranks before b: larger value, then lower index. */
fn before(av: f32, ai: u32, bv: f32, bi: u32) -> bool { return av > bv || (av == bv && ai < bi); }

/** The best (value, index) pair of the workgroup; returns the index (value in rf[0]). */
fn best_pair(v: f32, i: u32, tid: u32) -> u32 {
  workgroupBarrier();
  rf[tid] = v;
  ru[tid] = i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s && before(rf[tid + s], ru[tid + s], rf[tid], ru[tid])) {
      rf[tid] = rf[tid + s];
      ru[tid] = ru[tid + s];
    }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&ru[0]);
}

// Sweeps of one row, each followed by a workgroup reduction.
fn count_ge(base: u32, th: u32, tid: u32) -> u32 {
  var c = 0u;
  for (var i = tid; i < p.Vt; i += WG) { c += select(0u, 1u, key(logits[base + i]) >= th); }
  return sum_u(c, tid);
}
/** Σ exp((l − mx)·invT) over l with key(l) ≥ th (strict: key > th). */
fn mass(base: u32, th: u32, strict: bool, mx: f32, invT: f32, tid: u32) -> f32 {
  var s = 0.0;
  for (var i = tid; i < p.Vt; i += WG) {
    let l = logits[base + i];
    let k = key(l);
    if (k > th || (!strict && k == th)) { s += exp((l - mx) * invT); }
  }
  return sum_f(s, tid);
}

/** The logit the reported logprobs are of: raw (before penalties) with HAS_RAW, else the sampled one. */
fn lp_logit(i: u32) -> f32 {
  if ((p.flags & HAS_RAW) != 0u) { return raw[i]; }
  return logits[i];
}

/** log Σ exp over the row of lp_logit (the reported distribution's log-partition). */
fn lp_lse(base: u32, tid: u32) -> f32 {
  var bv = NEG_BIG;
  var bi = NONE;
  for (var i = tid; i < p.Vt; i += WG) {
    let l = lp_logit(base + i);
    if (before(l, i, bv, bi)) { bv = l; bi = i; }
  }
  let mx = lp_logit(base + best_pair(bv, bi, tid));
  var s = 0.0;
  for (var i = tid; i < p.Vt; i += WG) { s += exp(lp_logit(base + i) - mx); }
  return mx + log(sum_f(s, tid));
}

@compute @workgroup_size(WG)
fn sample_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row = wg.x;
  let base = row * p.V;
  if (tid == 0u) {
    var sp = vec4<f32>(0.0, 0.0, 1.0, 0.0);
    var min_p = 0.0;
    if ((p.flags & HAS_ROW_PARAMS) != 0u) {
      sp = vec4<f32>(row_params[row * 8u], row_params[row * 8u + 1u], row_params[row * 8u + 2u], row_params[row * 8u + 3u]);
      min_p = row_params[row * 8u + 4u];
    }
    row_sp = sp;
    row_min_p = min_p;
    atomicStore(&choice, NONE);
  }
  let sp = workgroupUniformLoad(&row_sp);

  // argmax (ties → lowest index) and the raw log-partition: lse = max + log Σ exp(l − max)
  var bv = NEG_BIG;
  var bi = NONE;
  for (var i = tid; i < p.Vt; i += WG) {
    let l = logits[base + i];
    if (before(l, i, bv, bi)) { bv = l; bi = i; }
  }
  let amax = best_pair(bv, bi, tid);
  let mx = logits[base + amax];
  let lse = mx + log(mass(base, 0u, false, mx, 1.0, tid));
  var tok = amax;

  let temperature = sp.x;
  if (temperature > 0.0) {
    let invT = 1.0 / temperature;
    var kmin = NONE;
    for (var i = tid; i < p.Vt; i += WG) { kmin = min(kmin, key(logits[base + i])); }
    kmin = min_u(kmin, tid);
    let kmax = key(mx);

    // top-k: the largest θ with #{key ≥ θ} ≥ k
    var th = kmin;
    let k = u32(max(sp.y, 0.0));
    if (k > 0u && k < p.Vt) {
      var lo = kmin;
      var hi = kmax;
      while (lo < hi) {
        let mid = lo + (hi - lo + 1u) / 2u;
        if (count_ge(base, mid, tid) >= k) { lo = mid; } else { hi = mid - 1u; }
      }
      th = lo;
    }
    // min-p: a logit threshold, combined with top-k's (both keep the largest logits)
    let minP = workgroupUniformLoad(&row_min_p);
    if (minP > 0.0) { th = max(th, key(mx + temperature * log(minP))); }
    // top-p: the smallest θ ≥ θk with mass(key > θ) < p · Z_k
    let topP = sp.z;
    if (topP < 1.0) {
      let goal = topP * mass(base, th, false, mx, invT, tid);
      var lo = th;
      var hi = kmax;
      while (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        if (mass(base, mid, true, mx, invT, tid) < goal) { hi = mid; } else { lo = mid + 1u; }
      }
      th = lo;
    }

    // draw: contiguous index ranges per thread, exclusive prefix of kept mass across threads
    let seg = (p.Vt + WG - 1u) / WG;
    let s0 = min(p.Vt, tid * seg);
    let s1 = min(p.Vt, s0 + seg);
    var mine = 0.0;
    var lastKept = NONE;
    for (var i = s0; i < s1; i++) {
      let l = logits[base + i];
      if (key(l) >= th) { mine += exp((l - mx) * invT); lastKept = i; }
    }
    workgroupBarrier();
    rf[tid] = mine;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
      var add = 0.0;
      if (tid >= off) { add = rf[tid - off]; }
      workgroupBarrier();
      rf[tid] += add;
      workgroupBarrier();
    }
    let total = workgroupUniformLoad(&rf[WG - 1u]);
    let inclusive = rf[tid];
    var exclusive = 0.0;
    if (tid > 0u) { exclusive = rf[tid - 1u]; }
    let draw = sp.w * total;
    if (lastKept != NONE && exclusive <= draw && draw < inclusive) {
      var acc = exclusive;
      var pick = lastKept; // if rounding keeps the running sum at or below the draw
      for (var i = s0; i < s1; i++) {
        let l = logits[base + i];
        if (key(l) >= th) {
          acc += exp((l - mx) * invT);
          if (acc > draw) { pick = i; break; }
        }
      }
      atomicMin(&choice, pick);
    }
    let chosen = workgroupUniformLoad(&choice);
    let anyKept = max_u(select(0u, lastKept + 1u, lastKept != NONE), tid);
    tok = select(anyKept - 1u, chosen, chosen != NONE); // draw ≥ total by rounding: the last kept

    if ((p.flags & HAS_PROBS) != 0u) {
      for (var i = tid; i < p.V; i += WG) {
        let l = logits[base + i];
        probs[base + i] = select(0.0, exp((l - mx) * invT) / total, i < p.Vt && key(l) >= th);
      }
    }
  } else if ((p.flags & HAS_PROBS) != 0u) {
    for (var i = tid; i < p.V; i += WG) { probs[base + i] = select(0.0, 1.0, i == amax); }
  }

  // The reported distribution's log-partition: the sampled logits' (lse above) or the raw ones'.
  var lpz = lse;
  if ((p.flags & HAS_RAW) != 0u) { lpz = lp_lse(base, tid); }
  if (tid == 0u) {
    tokens[row] = i32(tok);
    if ((p.flags & HAS_LOGPROB) != 0u) { logprobs[row] = lp_logit(base + tok) - lpz; }
  }

  // top-N raw logprobs: repeated argmax strictly after the previous pick in (value ↓, index ↑)
  var pv = 0.0;
  var prevI = NONE;
  for (var n = 0u; n < p.topN; n++) {
    var cv = NEG_BIG;
    var ci = NONE;
    for (var i = tid; i < p.Vt; i += WG) {
      let l = lp_logit(base + i);
      if ((n == 0u || before(pv, prevI, l, i)) && before(l, i, cv, ci)) { cv = l; ci = i; }
    }
    let pick = best_pair(cv, ci, tid);
    prevI = pick;
    pv = lp_logit(base + pick);
    if (tid == 0u) {
      top_ids[row * p.topN + n] = i32(pick);
      top_lp[row * p.topN + n] = pv - lpz;
    }
  }
}
