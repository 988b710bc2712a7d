// usage: bun scripts/make-llama8b-checkpoint.ts DIR   (for `bun run bench -- --load --model DIR`)
// Writes a Llama-3.1-8B-shaped bf16 checkpoint (one ~16 GB model.safetensors, as transformers 5 saves it)
// with random weights (one 64 MiB random block reused), streaming tensor by tensor.
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";
import { encodeSafetensorsHeader, expectedTensors, parseModelConfig, toTransformersConfig } from "@tuneloom/model";
const dir = process.argv[2]!;
mkdirSync(dir, { recursive: true });
const cfg = parseModelConfig({ model_type: "llama", hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
  num_key_value_heads: 8, vocab_size: 128256, tie_word_embeddings: false, rope_theta: 500000.0, max_position_embeddings: 131072, rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
  hidden_act: "silu", torch_dtype: "bfloat16" }, "8b");
writeFileSync(path.join(dir, "config.json"), JSON.stringify(toTransformersConfig(cfg), null, 2));
const specs = expectedTensors(cfg).map((s) => ({ name: s.name, dtype: "BF16" as const, shape: s.shape, data: new Uint8Array(0) }));
const header = encodeSafetensorsHeader(specs);
const t0 = performance.now();
const block = new Uint16Array(32 * 2 ** 20);
let s = 0x9e3779b9; const f = new Float32Array(1), u = new Uint32Array(f.buffer);
for (let i = 0; i < block.length; i++) { s ^= s << 13; s ^= s >>> 17; s ^= s << 5; f[0] = ((s >>> 0) / 4294967296 - 0.5) * 0.0693; block[i] = u[0]! >>> 16; }
const bytes = new Uint8Array(block.buffer);
const fd = openSync(path.join(dir, "model.safetensors"), "w");
const len = new Uint8Array(8); new DataView(len.buffer).setBigUint64(0, BigInt(header.length), true);
writeSync(fd, len); writeSync(fd, header);
let total = 0;
for (const sp of specs) {
  let n = sp.shape.reduce((a, b) => a * b, 1) * 2;
  while (n > 0) { const k = Math.min(n, bytes.length); let w = 0; while (w < k) w += writeSync(fd, bytes, w, k - w); n -= k; total += k; }
}
closeSync(fd);
console.log(`wrote ${(total / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
