// Split-K reduction: C = alpha · Σ_z P[z] (+ bias) + beta · C, P the (S, M, N) partial products
// of K-chunks (matmul.wgsl with one chunk per workgroup z). One thread per element of C.

override HAS_BIAS: bool = false;
override TRANSPOSE_C: bool = false; // C is stored transposed: element (m, n) at offC + n·ldc + m

struct Params { M: u32, N: u32, ldc: u32, splits: u32, alpha: f32, beta: f32, offC: u32, _p1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * 256u + lid;
  let mn = p.M * p.N;
  if (i >= mn) { return; }
  // Four partials loaded before they are added, so their loads are in flight together (a load per
  // iteration waited for the add before it: one memory latency per split); same order of sums.
  var s = 0.0;
  var z = 0u;
  for (; z + 4u <= p.splits; z += 4u) {
    let p0 = part[z * mn + i]; let p1 = part[(z + 1u) * mn + i]; let p2 = part[(z + 2u) * mn + i]; let p3 = part[(z + 3u) * mn + i];
    s += p0; s += p1; s += p2; s += p3;
  }
  for (; z < p.splits; z++) { s += part[z * mn + i]; }
  let m = i / p.N; let n = i % p.N;
  var idx = p.offC + m * p.ldc + n;
  if (TRANSPOSE_C) { idx = p.offC + n * p.ldc + m; }
  var v = p.alpha * s;
  if (HAS_BIAS) { v += bias[n]; }
  if (p.beta != 0.0) { v += p.beta * c[idx]; } // beta == 0 never reads C (it may hold NaN)
  c[idx] = v;
}
