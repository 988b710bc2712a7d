// Tiled matmul for linear layers.  C[b] = alpha · op(A[b]) · op(B[b]) (+ bias) + beta · C[b]
//   op(A): (M, K)   stored (M, K) row-major, or (K, M) when TRANS_A  -> xᵀ·dy
//   op(B): (K, N)   stored (K, N) row-major, or (N, K) when TRANS_B  -> x·Wᵀ
// The three linear-layer forms:  y = x·Wᵀ (TRANS_B),  dx = dy·W,  dW = dyᵀ·x (TRANS_A).
// Params, bindings and the C epilogue: matmul-interface.wgsl, inserted by matmul.ts below.
// Workgroup: 16×16 threads own a 64×64 tile of C, 4×4 per thread, K in steps of 16.

//!INTERFACE

const BM = 64u;
const BN = 64u;
const BK = 16u;
var<workgroup> As: array<f32, 1024>; // [BK][BM]
var<workgroup> Bs: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let row0 = wg.y * BM;
  let col0 = wg.x * BN;
  let aBase = p.offA + wg.z * p.strideA;
  let bBase = p.offB + wg.z * p.strideB;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    // Stage the A tile (BM×BK) and B tile (BK×BN), reading along each one's contiguous axis.
    for (var i = 0u; i < 4u; i++) {
      let e = tid + 256u * i;
      var m: u32; var ka: u32;
      if (TRANS_A) { ka = e / BM; m = e % BM; } else { m = e / BK; ka = e % BK; }
      let gm = row0 + m; let gk = k0 + ka;
      var va = 0.0;
      if (gm < p.M && gk < p.K) {
        va = a[aBase + select(gm * p.lda + gk, gk * p.lda + gm, TRANS_A)];
      }
      As[ka * BM + m] = va;
      var n: u32; var kb: u32;
      if (TRANS_B) { n = e / BK; kb = e % BK; } else { kb = e / BN; n = e % BN; }
      let gn = col0 + n; let gkb = k0 + kb;
      var vb = 0.0;
      if (gn < p.N && gkb < p.K) {
        vb = load_b(bBase + select(gkb * p.ldb + gn, gn * p.ldb + gkb, TRANS_B));
      }
      Bs[kb * BN + n] = vb;
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      var av: array<f32, 4>;
      var bv: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { av[i] = As[k * BM + lid.y + 16u * i]; }
      for (var j = 0u; j < 4u; j++) { bv[j] = Bs[k * BN + lid.x + 16u * j]; }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  let cBase = p.offC + wg.z * p.strideC;
  for (var i = 0u; i < 4u; i++) {
    let gm = row0 + lid.y + 16u * i;
    if (gm >= p.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let gn = col0 + lid.x + 16u * j;
      if (gn >= p.N) { continue; }
      let idx = cBase + gm * p.ldc + gn;
      store_c(idx, gn, acc[i][j]);
    }
  }
}
