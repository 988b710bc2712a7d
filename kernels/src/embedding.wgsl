// Token embedding gather: out[t, c] = table[ids[t], c]          ids: (T), table: (V, C), out: (T, C)
// The table is frozen (no backward) and read through load_table (f32/f16/bf16, declared by the
// wrapper at binding 2). One thread per output element, flat grid wrapped into y.
// An id outside [0, V) cannot be reported from the GPU by throwing: its row is written as
// zeros and the error buffer records it:
//   errors[0] += 1 for each out-of-range token
//   errors[1] = max(errors[1], t + 1)  (so the last offending position is errors[1] − 1)

struct Params { T: u32, C: u32, V: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;            // (T)
//!LOAD_TABLE
@group(0) @binding(3) var<storage, read_write> out: array<f32>;      // (T, C)
@group(0) @binding(4) var<storage, read_write> errors: array<atomic<u32>>; // (2)

@compute @workgroup_size(256)
fn embedding_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * 256u + lid;
  if (i >= p.T * p.C) { return; }
  let t = i / p.C;
  let c = i - t * p.C;
  let id = ids[t];
  if (id < 0 || u32(id) >= p.V) {
    out[i] = 0.0;
    if (c == 0u) {
      atomicAdd(&errors[0], 1u);
      atomicMax(&errors[1], t + 1u);
    }
    return;
  }
  out[i] = load_table(u32(id) * p.C + c);
}
