// The interface both portable matmul forms share (matmul.wgsl tiled, matmul-direct.wgsl):
//   C[b] = alpha · op(A[b]) · op(B[b]) (+ bias) + beta · C[b]
// offA/offB/offC (elements) start each operand inside its buffer, e.g. at a column of a wider
// matrix (binding offsets must be 256-byte aligned; these need not be). A and C are f32; B is
// f32/f16/bf16 through load_b (declared by the wrapper, binding 2).

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

// C[idx] (column n) = alpha·s (+ bias[n]) + beta·C[idx]; beta == 0 never reads C (it may hold
// garbage: NaN·0 = NaN).
fn store_c(idx: u32, n: u32, s: f32) {
  var v = p.alpha * s;
  if (HAS_BIAS) { v += bias[n]; }
  if (p.beta != 0.0) { v += p.beta * c[idx]; }
  c[idx] = v;
}
