/**
 * Random-weight models of the published shapes the benchmarks compare against HF PEFT
 * (shared/bench/peft_bench.py builds the same configs). Step cost does not depend on the
 * values, so weights are cheap uniform bf16 noise of std ≈ 0.02.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { type ModelConfig, expectedTensors, parseModelConfig, toTransformersConfig, writeSafetensors } from "@tuneloom/model";

export const BENCH_MODELS: Record<string, Record<string, unknown>> = {
  "smollm2-135m": { model_type: "llama", hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, vocab_size: 49152, tie_word_embeddings: true, rope_theta: 100000.0, max_position_embeddings: 8192, rms_norm_eps: 1e-5 },
  "qwen2.5-0.5b": { model_type: "qwen2", hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24, num_attention_heads: 14, num_key_value_heads: 2, vocab_size: 151936, tie_word_embeddings: true, rope_theta: 1000000.0, max_position_embeddings: 32768, rms_norm_eps: 1e-6 },
  "llama3.2-1b": { model_type: "llama", hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, tie_word_embeddings: true, rope_theta: 500000.0, max_position_embeddings: 131072, rms_norm_eps: 1e-5, rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" } },
};

/** Writes config.json + model.safetensors (bf16) of `name` into dir; returns the config. */
export function writeBenchModel(name: string, dir: string): ModelConfig {
  const raw = BENCH_MODELS[name];
  if (!raw) throw new Error(`unknown benchmark model '${name}' (known: ${Object.keys(BENCH_MODELS).join(", ")})`);
  const cfg = parseModelConfig({ ...raw, hidden_act: "silu", torch_dtype: "bfloat16" }, `${name} config`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "config.json"), JSON.stringify(toTransformersConfig(cfg), null, 2));
  let s = 0x9e3779b9;
  const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
  const tensors = expectedTensors(cfg).map((spec) => {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const bits = new Uint16Array(n);
    const isNorm = spec.name.endsWith("norm.weight");
    for (let i = 0; i < n; i++) {
      s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
      // uniform in ±0.0346 (std 0.02) as bf16: take the top half of the f32 bits
      const v = isNorm ? 1 : ((s >>> 0) / 4294967296 - 0.5) * 0.0693;
      f32[0] = v;
      bits[i] = u32[0]! >>> 16;
    }
    return { name: spec.name, dtype: "BF16" as const, shape: [...spec.shape], data: bits };
  });
  writeSafetensors(path.join(dir, "model.safetensors"), tensors);
  return cfg;
}
