// Seeded dropout on the LoRA input path: out = in · keep / (1 − p)          in, out: (n)
// keep(i) = hash(seed, i) ≥ threshold, threshold = round(p·2³²), from a counter-based hash
// (two rounds of the PCG hash of Jarzynski & Olano, "Hash Functions for GPU Rendering",
// JCGT 2020), so the backward regenerates the forward's mask from (seed, i) instead of
// storing it. The same entry serves both directions: the forward maps x to x̃, the backward
// maps dx̃ to dx (differentiating `x̃ = x · keep / (1 − p)`: dx = dx̃ · keep / (1 − p)).
// Flat grid of 256-thread workgroups wrapped into y.

struct Params { n: u32, seed: u32, threshold: u32, scale: f32, beta: f32, _pad0: u32, _pad1: u32, _pad2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>; // (n)

fn pcg_hash(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// Both rounds are bijections of u32, so within one seed distinct elements get distinct hashes.
fn dropout_hash(seed: u32, i: u32) -> u32 {
  return pcg_hash(pcg_hash(i) + pcg_hash(seed));
}

@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * 256u + lid;
  if (i >= p.n) { return; }
  var v = select(0.0, src[i] * p.scale, dropout_hash(p.seed, i) >= p.threshold);
  // beta == 0 must not read dst: it may hold garbage (NaN·0 = NaN).
  if (p.beta != 0.0) { v += p.beta * dst[i]; }
  dst[i] = v;
}
