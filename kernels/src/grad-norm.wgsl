// Global gradient norm and clip coefficient over one flat f32 gradient buffer, in two
// deterministic stages (fixed partition, fixed tree order: the same grads give the same bits):
//
//   gn_partial:   partial[g] = Σ_{i in workgroup g's grid-stride range} grad[i]²   // (G)
//   gn_finalize:  sumsq = Σ_g partial[g];  norm = sqrt(sumsq)
//                 coef  = min(1, max_norm / (norm + 1e-6))  (torch.nn.utils.clip_grad_norm_)
//                 stats = [norm, coef, sumsq, 0]; any non-finite value → nonfinite[0] = 1
//
// AdamW reads coef (stats[1]) and the flag on the GPU: no CPU round trip between the two.
// Clipping is the backward of nothing: it only rescales the update (g ← coef · g in AdamW).

struct Params {
  n: u32, groups: u32, maxNorm: f32, flags: u32,
}
const CLIP = 1u;   // maxNorm > 0: clip; otherwise coef = 1
const WG = 256u;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

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

fn is_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }

// ------------------------------------------------------------------ stage 1
@group(0) @binding(1) var<storage, read> s_grad: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read_write> s_partial: array<f32>; // (groups)

@compute @workgroup_size(WG)
fn gn_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  var acc = 0.0;
  for (var i = wg.x * WG + tid; i < p.n; i += p.groups * WG) {
    let g = s_grad[i];
    acc = fma(g, g, acc);
  }
  acc = wg_sum(acc, tid);
  if (tid == 0u) { s_partial[wg.x] = acc; }
}

// ------------------------------------------------------------------ stage 2
@group(0) @binding(1) var<storage, read> f_partial: array<f32>;       // (groups)
@group(0) @binding(2) var<storage, read_write> f_stats: array<f32>;   // (4) [norm, coef, sumsq, 0]
@group(0) @binding(3) var<storage, read_write> f_flag: array<u32>;    // (1)

@compute @workgroup_size(WG)
fn gn_finalize(@builtin(local_invocation_index) tid: u32) {
  var acc = 0.0;
  for (var g = tid; g < p.groups; g += WG) { acc += f_partial[g]; }
  let sumsq = wg_sum(acc, tid);
  if (tid == 0u) {
    let norm = sqrt(sumsq);
    var coef = 1.0;
    if ((p.flags & CLIP) != 0u) { coef = min(1.0, p.maxNorm / (norm + 1e-6)); }
    let finite = is_finite(sumsq);
    if (!finite) {
      f_flag[0] = 1u;
      coef = 0.0; // AdamW also skips on the flag; a zero coef keeps a stray consumer harmless
    }
    f_stats[0] = norm;
    f_stats[1] = coef;
    f_stats[2] = sumsq;
    f_stats[3] = 0.0;
  }
}

// ------------------------------------------------------------------ finiteness of any tensor
@group(0) @binding(1) var<storage, read> c_x: array<f32>;             // (n)
@group(0) @binding(2) var<storage, read_write> c_flag: array<u32>;    // (1)

// nonfinite[0] = 1 if any x[i] is NaN or ±inf (racing writers all store 1: benign).
@compute @workgroup_size(WG)
fn check_finite(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  var bad = false;
  for (var i = wg.x * WG + tid; i < p.n; i += p.groups * WG) {
    if (!is_finite(c_x[i])) { bad = true; }
  }
  if (bad) { c_flag[0] = 1u; }
}
