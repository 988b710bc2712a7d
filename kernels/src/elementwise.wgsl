// Elementwise helpers on f32 tensors of n elements: one thread per element, a flat grid of
// 256-thread workgroups wrapped into y past the 65535-per-dimension limit.
//   add:           out = a + b          residual stream, out-of-place: x + attn(x)
//   axpby:         y = s·x + beta·y     a += b (s = 1, beta = 1), y = s·x (beta = 0), y += s·x
//   scale_inplace: x = s·x
// Each entry point declares its own bindings (Dawn checks bindings per entry point).

struct Params { n: u32, s: f32, beta: f32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wg.y * nwg.x + wg.x) * 256u + lid;
}

@group(0) @binding(1) var<storage, read> add_a: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read> add_b: array<f32>;       // (n)
@group(0) @binding(3) var<storage, read_write> add_out: array<f32>; // (n)

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (i >= p.n) { return; }
  add_out[i] = add_a[i] + add_b[i];
}

@group(0) @binding(1) var<storage, read> axpby_x: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> axpby_y: array<f32>; // (n)

@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (i >= p.n) { return; }
  var v = p.s * axpby_x[i];
  // beta == 0 must not read y: it may hold garbage (NaN·0 = NaN).
  if (p.beta != 0.0) { v += p.beta * axpby_y[i]; }
  axpby_y[i] = v;
}

@group(0) @binding(1) var<storage, read_write> scale_x: array<f32>; // (n)

@compute @workgroup_size(256)
fn scale_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (i >= p.n) { return; }
  scale_x[i] = p.s * scale_x[i];
}
