// Matmul for CPU drivers (lavapipe): the same contract and Params as matmul.wgsl,
//   C[b] = alpha · op(A[b]) · op(B[b]) (+ bias) + beta · C[b]
// but no workgroup memory and no barriers. A software driver runs a workgroup's invocations as
// SIMD lanes and every barrier as a switch between them, which cost the tiled kernel ~4× here;
// CPU caches serve the operand reuse instead. Each invocation owns an 8×8 block of C: rows
// m0..m0+7 and columns col + G·j (j < 8, G = column groups), so neighbouring lanes read
// neighbouring columns of B and write neighbouring columns of C.
// B is f32/f16/bf16 through load_b (declared by the wrapper, binding 2).

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;

struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, strideA: u32, strideB: u32,
  strideC: u32, alpha: f32, beta: f32, offA: u32,
  offB: u32, offC: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
//!LOAD_B
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TM = 8u;
const TN = 8u;
const WG = 64u;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let groups = (p.N + TN - 1u) / TN; // column groups
  let inv = (wg.y * nwg.x + wg.x) * WG + lid;
  let col = inv % groups;
  let m0 = (inv / groups) * TM;
  if (m0 >= p.M) { return; }
  let aBase = p.offA + wg.z * p.strideA;
  let bBase = p.offB + wg.z * p.strideB;
  var acc: array<array<f32, 8>, 8>;
  for (var i = 0u; i < TM; i++) { for (var j = 0u; j < TN; j++) { acc[i][j] = 0.0; } }
  for (var k = 0u; k < p.K; k++) {
    var av: array<f32, 8>;
    var bv: array<f32, 8>;
    // Rows and columns past the edge repeat the last one; their results are not stored.
    for (var i = 0u; i < TM; i++) {
      let m = min(m0 + i, p.M - 1u);
      av[i] = a[aBase + select(m * p.lda + k, k * p.lda + m, TRANS_A)];
    }
    for (var j = 0u; j < TN; j++) {
      let n = min(col + groups * j, p.N - 1u);
      bv[j] = load_b(bBase + select(k * p.ldb + n, n * p.ldb + k, TRANS_B));
    }
    for (var i = 0u; i < TM; i++) {
      for (var j = 0u; j < TN; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
    }
  }
  let cBase = p.offC + wg.z * p.strideC;
  for (var i = 0u; i < TM; i++) {
    let m = m0 + i;
    if (m >= p.M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = col + groups * j;
      if (n >= p.N) { break; }
      let idx = cBase + m * p.ldc + n;
      var v = p.alpha * acc[i][j];
      if (HAS_BIAS) { v += bias[n]; }
      // beta == 0 must not read C: it may hold garbage (NaN·0 = NaN).
      if (p.beta != 0.0) { v += p.beta * c[idx]; }
      c[idx] = v;
    }
  }
}
