// RMSNorm (Llama/Qwen2/Mistral): y = x / sqrt(mean(x²) + eps) · w        x, y: (T, C), w: (C)
// One workgroup of WG threads (a power of two, 32..1024: ~4 elements per thread, set by the
// wrapper) per row (rows wrap into y past 65535); the row's sum is reduced in workgroup memory. The weight w is frozen and read through load_w (f32/f16/bf16,
// declared by the wrapper at binding 2), so only dx is differentiated.
// Forward saves rstd = 1/sqrt(mean(x²) + eps) (T) for backward.

struct Params { T: u32, C: u32, eps: f32, beta: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (T, C)
//!LOAD_W

override WG: u32 = 256u;
var<workgroup> partial: array<f32, 1024>; // the first WG entries are used

// Sum of `v` over the workgroup; every thread gets the total. Called in uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { partial[lid] += partial[lid + s]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier(); // partial is reused by the next call
  return total;
}

@group(0) @binding(3) var<storage, read_write> y: array<f32>;     // (T, C)
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;  // (T)

// r = 1 / sqrt(mean(x²) + eps) of the row that starts at base. Called in uniform control flow.
// Four of a thread's values are loaded before they are summed (their loads in flight together;
// a load per iteration waited for the sum before it), in the same order of sums.
fn row_rstd(lid: u32, base: u32) -> f32 {
  var ss = 0.0;
  var c = lid;
  for (; c + 3u * WG < p.C; c += 4u * WG) {
    let v0 = x[base + c]; let v1 = x[base + c + WG]; let v2 = x[base + c + 2u * WG]; let v3 = x[base + c + 3u * WG];
    ss = fma(v0, v0, ss); ss = fma(v1, v1, ss); ss = fma(v2, v2, ss); ss = fma(v3, v3, ss);
  }
  for (; c < p.C; c += WG) {
    let v = x[base + c];
    ss = fma(v, v, ss);
  }
  return 1.0 / sqrt(workgroup_sum(lid, ss) / f32(p.C) + p.eps);
}

@compute @workgroup_size(WG)
fn rmsnorm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= p.T) { return; } // uniform per workgroup
  let base = row * p.C;
  let r = row_rstd(lid, base);
  for (var c = lid; c < p.C; c += WG) {
    y[base + c] = (x[base + c] * r) * load_w(c); // transformers' order: weight * (x * rstd)
  }
  if (lid == 0u) { rstd[row] = r; }
}

// The forward that also writes y rounded to f16 for the tensor-core products that read it, with
// the bits of convert.wgsl's f32 → f16 (f16-bits.wgsl, composed with this file by rmsnorm.ts): two
// elements per thread and step, one packed word each (C even).
@group(0) @binding(5) var<storage, read_write> y16: array<u32>;  // (T, C) f16, two per word

@compute @workgroup_size(WG)
fn rmsnorm_forward_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= p.T) { return; } // uniform per workgroup
  let base = row * p.C;
  let r = row_rstd(lid, base);
  for (var c2 = lid; c2 < p.C / 2u; c2 += WG) {
    let c = 2u * c2;
    let v0 = (x[base + c] * r) * load_w(c);
    let v1 = (x[base + c + 1u] * r) * load_w(c + 1u);
    y[base + c] = v0;
    y[base + c + 1u] = v1;
    y16[(base + c) / 2u] = f32_bits_to_f16(bitcast<u32>(v0)) | (f32_bits_to_f16(bitcast<u32>(v1)) << 16u);
  }
  if (lid == 0u) { rstd[row] = r; }
}

@group(0) @binding(3) var<storage, read> saved_rstd: array<f32>;  // (T)
@group(0) @binding(4) var<storage, read> dy: array<f32>;          // (T, C)
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;    // (T, C)

// Differentiates `y[base + c] = (x[base + c] * r) * load_w(c)` with r = (Σ x²/C + eps)^(-1/2):
//   dr/dx_j = −r³·x_j/C, so
//   dx_j = r·dy_j·w_j − x_j·(r³/C)·Σ_c dy_c·w_c·x_c
// beta = 1 adds into dx (the residual stream's gradient); beta = 0 never reads dx.
@compute @workgroup_size(WG)
fn rmsnorm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= p.T) { return; }
  let base = row * p.C;
  var dot = 0.0;
  for (var c = lid; c < p.C; c += WG) {
    dot = fma(dy[base + c] * load_w(c), x[base + c], dot);
  }
  let r = saved_rstd[row];
  let k = r * r * r * workgroup_sum(lid, dot) / f32(p.C);
  for (var c = lid; c < p.C; c += WG) {
    var v = r * dy[base + c] * load_w(c) - x[base + c] * k;
    if (p.beta != 0.0) { v += p.beta * dx[base + c]; }
    dx[base + c] = v;
  }
}
