// Tiled matmul for linear layers.  C[b] = alpha · op(A[b]) · op(B[b]) (+ bias) + beta · C[b]
//   op(A): (M, K)   stored (M, K) row-major, or (K, M) when TRANS_A  -> xᵀ·dy
//   op(B): (K, N)   stored (K, N) row-major, or (N, K) when TRANS_B  -> x·Wᵀ
// The three linear-layer forms:  y = x·Wᵀ (TRANS_B),  dx = dy·W,  dW = dyᵀ·x (TRANS_A).
// A and C are f32; B is f32/f16/bf16 through load_b (declared by the wrapper, binding 2).
// Workgroup: 16×16 threads own a 64×64 tile of C, 4×4 per thread, K in steps of 16.
// offA/offB/offC (elements) start each operand inside its buffer, e.g. at a column of a wider
// matrix (binding offsets must be 256-byte aligned; these need not be).

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
      var v = p.alpha * acc[i][j];
      if (HAS_BIAS) { v += bias[gn]; }
      // beta == 0 must not read C: it may hold garbage (NaN·0 = NaN).
      if (p.beta != 0.0) { v += p.beta * c[idx]; }
      c[idx] = v;
    }
  }
}
