// SwiGLU of the Llama MLP: h = silu(gate) · up, with silu(g) = g·σ(g).   gate, up, h: (T, I)
// Flat over n = T·I elements, one thread each, 256-thread workgroups wrapped into y.
// Nothing is saved beyond gate and up: backward recomputes σ(g) from them.

struct Params { n: u32, beta: f32, _pad0: u32, _pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wg.y * nwg.x + wg.x) * 256u + lid;
}

// σ(g) without overflow: exp of a non-positive argument only.
fn sigmoid(g: f32) -> f32 {
  if (g >= 0.0) { return 1.0 / (1.0 + exp(-g)); }
  let e = exp(g);
  return e / (1.0 + e);
}

@group(0) @binding(1) var<storage, read> gate: array<f32>;       // (T, I)
@group(0) @binding(2) var<storage, read> up: array<f32>;         // (T, I)
@group(0) @binding(3) var<storage, read_write> h: array<f32>;    // (T, I)

@compute @workgroup_size(256)
fn swiglu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (i >= p.n) { return; }
  let g = gate[i];
  h[i] = g * sigmoid(g) * up[i];
}

@group(0) @binding(1) var<storage, read> bwd_gate: array<f32>;     // (T, I)
@group(0) @binding(2) var<storage, read> bwd_up: array<f32>;       // (T, I)
@group(0) @binding(3) var<storage, read> dh: array<f32>;           // (T, I)
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>;  // (T, I)
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;    // (T, I)

// Differentiates `h[i] = g * sigmoid(g) * up[i]` (every backward entry point below uses these):
//   dup   = dh · g·σ(g)
//   dgate = dh · up · σ(g)·(1 + g·(1 − σ(g)))      (d/dg of g·σ(g))
fn dgate_of(g: f32, u: f32, d: f32) -> f32 { let sg = sigmoid(g); return d * u * sg * (1.0 + g * (1.0 - sg)); }
fn dup_of(g: f32, d: f32) -> f32 { return d * g * sigmoid(g); }
fn dgate_of4(g: vec4<f32>, u: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dgate_of(g.x, u.x, d.x), dgate_of(g.y, u.y, d.y), dgate_of(g.z, u.z, d.z), dgate_of(g.w, u.w, d.w));
}
fn dup_of4(g: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dup_of(g.x, d.x), dup_of(g.y, d.y), dup_of(g.z, d.z), dup_of(g.w, d.w));
}

// beta = 1 accumulates into dgate and dup; beta = 0 never reads them.
@compute @workgroup_size(256)
fn swiglu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (i >= p.n) { return; }
  var dg = dgate_of(bwd_gate[i], bwd_up[i], dh[i]);
  var du = dup_of(bwd_gate[i], dh[i]);
  if (p.beta != 0.0) {
    dg += p.beta * dgate[i];
    du += p.beta * dup[i];
  }
  dgate[i] = dg;
  dup[i] = du;
}

// The same two kernels four elements per thread (n a multiple of 4): 16-byte accesses keep more
// bytes in flight in these memory-bound passes. Identical arithmetic per element.
fn sigmoid4(g: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(sigmoid(g.x), sigmoid(g.y), sigmoid(g.z), sigmoid(g.w));
}

@group(0) @binding(1) var<storage, read> gate4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> up4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> h4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn swiglu_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid); // elements 4i .. 4i + 3
  if (4u * i >= p.n) { return; }
  let g = gate4[i];
  h4[i] = g * sigmoid4(g) * up4[i];
}

@group(0) @binding(1) var<storage, read> bwd_gate4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bwd_up4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dh4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dgate4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dup4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn swiglu_backward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (4u * i >= p.n) { return; }
  var dg = dgate_of4(bwd_gate4[i], bwd_up4[i], dh4[i]);
  var du = dup_of4(bwd_gate4[i], dh4[i]);
  if (p.beta != 0.0) {
    dg += p.beta * dgate4[i];
    du += p.beta * dup4[i];
  }
  dgate4[i] = dg;
  dup4[i] = du;
}

// Backward in place (beta = 0): gate and up are overwritten with dgate and dup, so the MLP's
// backward needs no (T, I) gradient buffers of its own. Each element reads its own inputs before
// writing them, so the aliasing is safe.
@group(0) @binding(1) var<storage, read_write> gate_dgate4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> up_dup4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dh_in4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn swiglu_backward_inplace4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (4u * i >= p.n) { return; }
  let g = gate_dgate4[i];
  gate_dgate4[i] = dgate_of4(g, up_dup4[i], dh_in4[i]);
  up_dup4[i] = dup_of4(g, dh_in4[i]);
}

@group(0) @binding(1) var<storage, read_write> gate_dgate: array<f32>;
@group(0) @binding(2) var<storage, read_write> up_dup: array<f32>;
@group(0) @binding(3) var<storage, read> dh_in: array<f32>;

@compute @workgroup_size(256)
fn swiglu_backward_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (i >= p.n) { return; }
  let g = gate_dgate[i];
  gate_dgate[i] = dgate_of(g, up_dup[i], dh_in[i]);
  up_dup[i] = dup_of(g, dh_in[i]);
}

// The four-wide forward and in-place backward that also write a 16-bit copy of what they write,
// for the tensor-core products that read it (down_proj's input h; gate and up's output gradients),
// instead of a separate f32 → f16 pass that reads the f32 back: f16x4_bits (f16-bits.wgsl, composed
// with this file by swiglu.ts) has convert.wgsl's bits. Copies are (T, I) f16, two per word.
@group(0) @binding(4) var<storage, read_write> h16: array<vec2<u32>>;

@compute @workgroup_size(256)
fn swiglu_forward4_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (4u * i >= p.n) { return; }
  let g = gate4[i];
  let h = g * sigmoid4(g) * up4[i];
  h4[i] = h;
  h16[i] = f16x4_bits(h);
}

@group(0) @binding(4) var<storage, read_write> dgate16: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> dup16: array<vec2<u32>>;

@compute @workgroup_size(256)
fn swiglu_backward_inplace4_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wg, nwg, lid);
  if (4u * i >= p.n) { return; }
  let g = gate_dgate4[i];
  let dg = dgate_of4(g, up_dup4[i], dh_in4[i]);
  let du = dup_of4(g, dh_in4[i]);
  gate_dgate4[i] = dg;
  up_dup4[i] = du;
  dgate16[i] = f16x4_bits(dg);
  dup16[i] = f16x4_bits(du);
}
