// RMSNorm's weight gradient, for full fine-tuning (LoRA keeps norm weights frozen; rmsnorm.wgsl
// differentiates x only). Differentiates rmsnorm.wgsl's `y[base + c] = (x[base + c] * r) * load_w(c)`
// with respect to w_c:
//   dw_c = Σ_t dy[t, c]·x[t, c]·r_t                 x, dy: (T, C), r = saved rstd (T), dw: (C)
// One thread per channel walks the rows in order: deterministic, no atomics. beta = 1 adds into
// dw (micro-batches and checkpoint recomputes accumulate), beta = 0 never reads it.
// Many rows (T > ROWS): rmsnorm_weight_partial sums ROWS-row chunks into partials (chunks, C), one
// workgroup row per chunk, and matmul-splitk.wgsl adds them up in chunk order (still deterministic):
// one thread per channel over 4,096 rows left a whole GPU to C/64 workgroups.

struct Params { T: u32, C: u32, _pad: f32, beta: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (T, C)
@group(0) @binding(2) var<storage, read> saved_rstd: array<f32>; // (T)
@group(0) @binding(3) var<storage, read> dy: array<f32>;         // (T, C)
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;   // (C)

@compute @workgroup_size(64)
fn rmsnorm_weight_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= p.C) { return; }
  var s = 0.0;
  for (var t = 0u; t < p.T; t++) {
    s = fma(dy[t * p.C + c] * saved_rstd[t], x[t * p.C + c], s);
  }
  if (p.beta != 0.0) { s += p.beta * dw[c]; }
  dw[c] = s;
}

const ROWS = 64u;

@compute @workgroup_size(64)
fn rmsnorm_weight_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let c = gid.x;
  if (c >= p.C) { return; }
  let t0 = wg.y * ROWS;
  let t1 = min(t0 + ROWS, p.T);
  var s = 0.0;
  for (var t = t0; t < t1; t++) {
    s = fma(dy[t * p.C + c] * saved_rstd[t], x[t * p.C + c], s);
  }
  dw[wg.y * p.C + c] = s; // the partials (chunks, C)
}
