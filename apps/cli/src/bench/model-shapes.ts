/**
 * Random-weight models of the published shapes the benchmarks compare against HF PEFT
 * (shared/bench/peft_bench.py builds the same configs). Step cost does not depend on the
 * values, so weights are cheap uniform bf16 noise of std ≈ 0.02.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { type ModelConfig, expectedTensors, parseModelConfig, toTransformersConfig, writeSafetensors, writeTinyModel } from "@tuneloom/model";

export const BENCH_MODELS: Record<string, Record<string, unknown>> = {
  "smollm2-135m": { model_type: "llama", hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, vocab_size: 49152, tie_word_embeddings: true, rope_theta: 100000.0, max_position_embeddings: 8192, rms_norm_eps: 1e-5 },
  "qwen2.5-0.5b": { model_type: "qwen2", hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24, num_attention_heads: 14, num_key_value_heads: 2, vocab_size: 151936, tie_word_embeddings: true, rope_theta: 1000000.0, max_position_embeddings: 32768, rms_norm_eps: 1e-6 },
  "llama3.2-1b": { model_type: "llama", hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, tie_word_embeddings: true, rope_theta: 500000.0, max_position_embeddings: 131072, rms_norm_eps: 1e-5, rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" } },
  "llama3.2-3b": { model_type: "llama", hidden_size: 3072, intermediate_size: 8192, num_hidden_layers: 28, num_attention_heads: 24, num_key_value_heads: 8, vocab_size: 128256, tie_word_embeddings: true, rope_theta: 500000.0, max_position_embeddings: 131072, rms_norm_eps: 1e-5, rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" } },
  "llama3.1-8b": { model_type: "llama", hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, tie_word_embeddings: false, rope_theta: 500000.0, max_position_embeddings: 131072, rms_norm_eps: 1e-5, rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" } },
  "qwen2.5-7b": { model_type: "qwen2", hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28, num_attention_heads: 28, num_key_value_heads: 4, vocab_size: 152064, tie_word_embeddings: false, rope_theta: 1000000.0, max_position_embeddings: 32768, rms_norm_eps: 1e-6 },
};

/** The config of a benchmark model name (bf16, as written). */
export function benchModelConfig(name: string): ModelConfig {
  const raw = BENCH_MODELS[name];
  if (!raw) throw new Error(`unknown benchmark model '${name}' (known: ${Object.keys(BENCH_MODELS).join(", ")})`);
  return parseModelConfig({ ...raw, hidden_act: "silu", torch_dtype: "bfloat16" }, `${name} config`);
}

/** Writes config.json + model.safetensors (bf16) of `name` into dir; returns the config. */
export function writeBenchModel(name: string, dir: string): ModelConfig {
  const cfg = benchModelConfig(name);
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

/**
 * The model directory a benchmark runs on: a Hugging Face directory given by path (used as it
 * is, never deleted), `tiny`, or a built-in published shape written with random weights into a
 * temporary directory that `cleanup` removes.
 */
export function benchModelDir(model: string, prefix: string): { dir: string; name: string; cleanup: () => void } {
  if (existsSync(model) && statSync(model).isDirectory()) {
    if (!existsSync(path.join(model, "config.json"))) throw new Error(`--model ${model}: a directory without config.json`);
    return { dir: model, name: path.basename(path.resolve(model)), cleanup: () => {} };
  }
  if (model !== "tiny" && !BENCH_MODELS[model]) {
    throw new Error(`unknown benchmark model '${model}' and no model directory there (known: tiny, ${Object.keys(BENCH_MODELS).join(", ")}, or a Hugging Face model directory)`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  try {
    if (model === "tiny") writeTinyModel(dir, { arch: "llama", seed: 1 });
    else writeBenchModel(model, dir);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return { dir, name: model, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
