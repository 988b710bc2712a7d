// Embedding gather's backward, for full fine-tuning (embedding.wgsl's table is frozen for LoRA).
// Differentiates `out[t, c] = table[ids[t], c]`:
//   dtable[v, c] += Σ_{t: ids[t] = v} dout[t, c]                 dout: (T, C), dtable: (V, C)
// The host groups the token positions by id (it has the ids): unique id k is uniq[k], its
// positions are pos[start[k] .. start[k+1]). One workgroup per unique id, threads over C, the
// positions summed in order: deterministic, no float atomics.

struct Params { C: u32, numUnique: u32, _pad0: u32, _pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> uniq: array<u32>;        // (U) token ids
@group(0) @binding(2) var<storage, read> start: array<u32>;       // (U + 1)
@group(0) @binding(3) var<storage, read> pos: array<u32>;         // (T') positions grouped by id
@group(0) @binding(4) var<storage, read> dout: array<f32>;        // (T, C)
@group(0) @binding(5) var<storage, read_write> dtable: array<f32>; // (V, C), accumulated

@compute @workgroup_size(64)
fn embedding_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  let k = wg.y * nwg.x + wg.x;
  if (k >= p.numUnique) { return; }
  let row = uniq[k] * p.C;
  for (var c = lid; c < p.C; c += 64u) {
    var s = 0.0;
    for (var i = start[k]; i < start[k + 1u]; i++) {
      s += dout[pos[i] * p.C + c];
    }
    dtable[row + c] += s;
  }
}
