// Matmul for CPU drivers (lavapipe): the same contract and Params as matmul.wgsl,
//   C[b] = alpha · op(A[b]) · op(B[b]) (+ bias) + beta · C[b]
// but no workgroup memory and no barriers. A software driver runs a workgroup's invocations as
// SIMD lanes and every barrier as a switch between them, which cost the tiled kernel ~4× here;
// CPU caches serve the operand reuse instead. Each invocation owns an 8×8 block of C: rows
// m0..m0+7 and columns col + G·j (j < 8, G = column groups), so neighbouring lanes read
// neighbouring columns of B and write neighbouring columns of C.
// Params, bindings and the C epilogue: matmul-interface.wgsl, inserted by matmul.ts below.

//!INTERFACE

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
      store_c(idx, n, acc[i][j]);
    }
  }
}
