// AdamW (PyTorch semantics, decoupled weight decay, bias correction) over one flat f32
// parameter buffer made of segments (one per parameter tensor), in one dispatch.
//
//   g  = coef · grad                     coef = clip coefficient from grad-norm (stats[1]), else 1
//   p  = p · (1 − lr·wd)                 decoupled weight decay (param.mul_(1 − lr·wd))
//   m  = β1·m + (1 − β1)·g
//   v  = β2·v + (1 − β2)·g²
//   p  = p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
//
// lr here is lr_step · lrScale of the segment; wd the segment's weight decay. Elements outside
// every segment (alignment gaps) are left alone. With nonfinite[0] != 0 nothing changes, so a
// NaN gradient cannot reach the weights or the moments.

struct Params {
  n: u32, numSegments: u32, groups: u32, flags: u32,
  lr: f32, beta1: f32, beta2: f32, eps: f32,
  bc1: f32, bc2Sqrt: f32, weightDecay: f32, _pad: u32,
}
const HAS_CLIP = 1u;
const HAS_FLAG = 2u;
const WG = 256u;

struct Segment { start: u32, end: u32, lrScale: f32, weightDecay: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;  // (n)
@group(0) @binding(2) var<storage, read> grad: array<f32>;         // (n)
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;     // (n) first moment
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;     // (n) second moment
@group(0) @binding(5) var<storage, read> segments: array<Segment>; // (numSegments), sorted by start
@group(0) @binding(6) var<storage, read> clip: array<f32>;         // (4) [norm, coef, ..] or placeholder
@group(0) @binding(7) var<storage, read> nonfinite: array<u32>;    // (1) or placeholder

/** Index of the last segment with start ≤ i (binary search; segments are sorted and disjoint). */
fn find_segment(i: u32) -> u32 {
  var lo = 0u;
  var hi = p.numSegments - 1u;
  while (lo < hi) {
    let mid = (lo + hi + 1u) / 2u;
    if (segments[mid].start <= i) { lo = mid; } else { hi = mid - 1u; }
  }
  return lo;
}

@compute @workgroup_size(WG)
fn adamw_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  if ((p.flags & HAS_FLAG) != 0u && nonfinite[0] != 0u) { return; }
  var coef = 1.0;
  if ((p.flags & HAS_CLIP) != 0u) { coef = clip[1]; }
  for (var i = wg.x * WG + tid; i < p.n; i += p.groups * WG) {
    var lr = p.lr;
    var wd = p.weightDecay;
    if (p.numSegments > 0u) {
      let s = segments[find_segment(i)];
      if (i < s.start || i >= s.end) { continue; }
      lr = p.lr * s.lrScale;
      wd = s.weightDecay;
    }
    let g = coef * grad[i];
    var w = param[i] * (1.0 - lr * wd);
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
    w -= (lr / p.bc1) * m / (sqrt(v) / p.bc2Sqrt + p.eps);
    m1[i] = m;
    m2[i] = v;
    param[i] = w;
  }
}
