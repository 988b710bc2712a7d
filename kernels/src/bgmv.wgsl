// Gathered per-row LoRA (Punica/S-LoRA's BGMV): every row t of a mixed batch picks its own
// adapter slot s = slots[t] (−1: the base, no LoRA) out of stacked per-slot weights.
//
//   shrink:  h[t, n] = Σ_k x[t, k] · W[s, n, k]          W = A stack (S, N, K), N = nb·R
//            (n in block j = n / R, rank index r = n % R; h[t, n] = 0 where s < 0 or r ≥ rank(s, j))
//   expand:  y[t, n] += scale[s] · Σ_{r < rank(s)} h[t, r] · W[s, n, r]     W = B stack (S, N, R)
//            (rows with s < 0 or rank 0 are left as they are)
//
// rank(s, j) = ranks[s·ldr + rcol + j] (u32 table (S, ldr): the slot's rank per target module,
// 0 where the slot's adapter leaves the module alone). Padding past a slot's rank is never read
// as a contribution, so slots of different ranks share one stack padded to the largest, R.
// Input rows are read at in[t·ldi + ioff + k], output rows written at out[t·ldo + ooff + n]
// (element offsets: a column block of h is not a 256-byte binding offset). Slots ≥ S are
// treated as −1 here (bounds); the host wrappers refuse them before they reach the GPU.
//
// Forms: shrink_lanes (GPUs: 8 outputs per workgroup, 32 lanes along K each, summed through
// workgroup memory), shrink_row (CPU drivers: one invocation walks K for one output),
// expand (everywhere: one invocation per output, K = R is short).

struct Params {
  T: u32, N: u32, K: u32, S: u32,
  ldi: u32, ioff: u32, ldo: u32, ooff: u32,
  wslot: u32, ldr: u32, rcol: u32, R: u32,
  gridX: u32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;          // x (T, ·) or h (T, ·)
//!LOAD_W
@group(0) @binding(3) var<storage, read> slots: array<i32>;        // (T)
@group(0) @binding(4) var<storage, read> ranks: array<u32>;        // (S, ldr)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;    // h (T, ·) or y (T, ·)
@group(0) @binding(6) var<storage, read> scales: array<f32>;       // (S), expand only

// The row's slot, or −1 for the base (and for anything out of range).
fn slot_of(t: u32) -> i32 {
  let s = slots[t];
  if (s < 0 || u32(s) >= p.S) { return -1; }
  return s;
}

// h[t, n] for one (t, n) walked serially over K; 0 where the row has no LoRA or r ≥ rank.
fn shrink_one(t: u32, n: u32, s: i32) -> f32 {
  if (s < 0) { return 0.0; }
  let rank = ranks[u32(s) * p.ldr + p.rcol + n / p.R];
  if (n % p.R >= rank) { return 0.0; }
  let xb = t * p.ldi + p.ioff;
  let wb = u32(s) * p.wslot + n * p.K;
  var acc = 0.0;
  for (var k = 0u; k < p.K; k++) { acc = fma(inp[xb + k], load_w(wb + k), acc); }
  return acc;
}

@compute @workgroup_size(64)
fn shrink_row(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * p.gridX + wg.x) * 64u + lid;
  if (i >= p.T * p.N) { return; }
  let t = i / p.N;
  let n = i - t * p.N;
  out[t * p.ldo + p.ooff + n] = shrink_one(t, n, slot_of(t));
}

const LANES = 32u;
const COLS = 8u; // outputs per workgroup
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn shrink_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let groups = (p.N + COLS - 1u) / COLS;
  let wi = wg.y * p.gridX + wg.x;
  let t = min(wi / groups, p.T - 1u);
  let n = (wi % groups) * COLS + tid / LANES;
  let lane = tid % LANES;
  let s = slot_of(t);
  var acc = 0.0;
  var live = wi < p.T * groups && n < p.N && s >= 0;
  if (live) { live = n % p.R < ranks[u32(s) * p.ldr + p.rcol + n / p.R]; }
  if (live) {
    let xb = t * p.ldi + p.ioff;
    let wb = u32(s) * p.wslot + n * p.K;
    for (var k = lane; k < p.K; k += LANES) { acc = fma(inp[xb + k], load_w(wb + k), acc); }
  }
  red[tid] = acc;
  workgroupBarrier();
  if (lane == 0u && wi < p.T * groups && n < p.N) {
    var sum = 0.0;
    for (var l = 0u; l < LANES; l++) { sum += red[tid + l]; }
    out[t * p.ldo + p.ooff + n] = sum;
  }
}

@compute @workgroup_size(256)
fn expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * p.gridX + wg.x) * 256u + lid;
  if (i >= p.T * p.N) { return; }
  let t = i / p.N;
  let n = i - t * p.N;
  let s = slot_of(t);
  if (s < 0) { return; }
  let rank = min(ranks[u32(s) * p.ldr + p.rcol], p.R);
  if (rank == 0u) { return; }
  let hb = t * p.ldi + p.ioff;
  let wb = u32(s) * p.wslot + n * p.R;
  var acc = 0.0;
  for (var r = 0u; r < rank; r++) { acc = fma(inp[hb + r], load_w(wb + r), acc); }
  let o = t * p.ldo + p.ooff + n;
  out[o] = out[o] + scales[u32(s)] * acc;
}
