// Repetition, presence and frequency penalties and token masks, applied in place to logits
// (B, V) before sampling (sampling.wgsl). One workgroup per row; the row's entries are the
// distinct tokens it has seen, so no two threads touch the same logit.
//
// For entry (token t, count c, flags) of row b, with rowParams[b] = [rep, presence, frequency, _]:
//   masked (min_tokens: a stop id before its time):  l = −big (never sampled)
//   else, in vLLM's order:
//     repetition (HF/vLLM, over prompt + generated):  l = l / rep  if l > 0,  l · rep  otherwise
//     frequency and presence (OpenAI, generated only): l = l − c · frequency − (c > 0) · presence
// Tokens absent from the list are untouched. Columns ≥ Vt (a padded vocabulary) are skipped.
//
// entries (E, 2) u32: [token, count | SEEN | MASKED]; offsets (B + 1) u32: row b's entries are
// offsets[b] .. offsets[b + 1].

struct Params { B: u32, V: u32, Vt: u32, _pad: u32 }
const WG = 64u;
const SEEN = 0x40000000u;   // in the prompt or generated: the repetition penalty applies
const MASKED = 0x80000000u;
const COUNT = 0x3fffffffu;   // times generated
const NEG_BIG = -3.4028234663852886e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;   // (B, V)
@group(0) @binding(2) var<storage, read> row_params: array<f32>;     // (B, 4)
@group(0) @binding(3) var<storage, read> offsets: array<u32>;        // (B + 1)
@group(0) @binding(4) var<storage, read> entries: array<u32>;        // (E, 2)

@compute @workgroup_size(WG)
fn apply_penalties(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row = wg.x;
  let rep = row_params[row * 4u];
  let presence = row_params[row * 4u + 1u];
  let frequency = row_params[row * 4u + 2u];
  for (var e = offsets[row] + tid; e < offsets[row + 1u]; e += WG) {
    let token = entries[2u * e];
    let bits = entries[2u * e + 1u];
    if (token >= p.Vt) { continue; }
    let i = row * p.V + token;
    var l = logits[i];
    if ((bits & MASKED) != 0u) {
      l = NEG_BIG;
    } else {
      if ((bits & SEEN) != 0u && rep != 1.0) { l = select(l * rep, l / rep, l > 0.0); }
      let c = f32(bits & COUNT);
      if (c > 0.0) { l = l - c * frequency - presence; }
    }
    logits[i] = l;
  }
}
