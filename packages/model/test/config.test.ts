import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModelConfig, parseModelConfig, toTransformersConfig, type ModelConfig } from "../src/config.ts";
import { loadGenerationConfig, parseGenerationConfig, stopTokenIds, toGenerationConfigJson } from "../src/generation-config.ts";

// Trimmed from real checkpoints' config.json.
const smolLM2 = {
  architectures: ["LlamaForCausalLM"], attention_bias: false, attention_dropout: 0.0, bos_token_id: 1, eos_token_id: 2,
  head_dim: 64, hidden_act: "silu", hidden_size: 576, initializer_range: 0.041666666666666664, intermediate_size: 1536,
  max_position_embeddings: 8192, mlp_bias: false, model_type: "llama", num_attention_heads: 9, num_hidden_layers: 30,
  num_key_value_heads: 3, pad_token_id: 2, pretraining_tp: 1, rms_norm_eps: 1e-5, rope_interleaved: false,
  rope_scaling: null, rope_theta: 100000, tie_word_embeddings: true, torch_dtype: "bfloat16", transformers_version: "4.42.3",
  use_cache: true, vocab_size: 49152,
};
const llama32 = {
  architectures: ["LlamaForCausalLM"], attention_bias: false, bos_token_id: 128000, eos_token_id: [128001, 128008, 128009],
  head_dim: 64, hidden_act: "silu", hidden_size: 2048, intermediate_size: 8192, max_position_embeddings: 131072,
  mlp_bias: false, model_type: "llama", num_attention_heads: 32, num_hidden_layers: 16, num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
  rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: "bfloat16", vocab_size: 128256,
};
const qwen2 = {
  architectures: ["Qwen2ForCausalLM"], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151645, hidden_act: "silu",
  hidden_size: 896, intermediate_size: 4864, max_position_embeddings: 32768, max_window_layers: 21, model_type: "qwen2",
  num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 1000000.0,
  sliding_window: 32768, tie_word_embeddings: true, torch_dtype: "bfloat16", use_sliding_window: false, vocab_size: 151936,
};
const mistral = {
  architectures: ["MistralForCausalLM"], bos_token_id: 1, eos_token_id: 2, hidden_act: "silu", hidden_size: 4096,
  intermediate_size: 14336, max_position_embeddings: 32768, model_type: "mistral", num_attention_heads: 32,
  num_hidden_layers: 32, num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 1000000.0, sliding_window: null,
  tie_word_embeddings: false, torch_dtype: "bfloat16", vocab_size: 32768,
};
// transformers 5 layout: rope_parameters + layer_types + dtype.
const llama32v5 = {
  ...llama32, rope_theta: undefined, rope_scaling: undefined, torch_dtype: undefined, dtype: "bfloat16",
  rope_parameters: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_theta: 500000.0, rope_type: "llama3" },
  layer_types: Array(16).fill("full_attention"),
};

describe("parseModelConfig", () => {
  test("SmolLM2 (llama, tied, head_dim given)", () => {
    const c = parseModelConfig(smolLM2);
    expect(c).toMatchObject({ arch: "llama", hiddenSize: 576, numHeads: 9, numKvHeads: 3, headDim: 64, ropeTheta: 100000, ropeScaling: null,
      tieWordEmbeddings: true, attentionBias: false, oProjBias: false, mlpBias: false, torchDtype: "bfloat16", bosTokenId: 1,
      eosTokenIds: [2], padTokenId: 2, slidingWindow: null });
    expect(c.layerTypes).toHaveLength(30);
  });
  test("Llama 3.2 llama3 rope scaling, eos list", () => {
    const c = parseModelConfig(llama32);
    expect(c.ropeScaling).toEqual({ type: "llama3", factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009]);
  });
  test("transformers 5 layout gives the same ModelConfig", () => {
    expect(parseModelConfig(llama32v5)).toEqual(parseModelConfig(llama32));
  });
  test("qwen2: q/k/v bias implied, sliding window off unless use_sliding_window", () => {
    const c = parseModelConfig(qwen2);
    expect(c).toMatchObject({ arch: "qwen2", attentionBias: true, oProjBias: false, headDim: 64, slidingWindow: null });
    const s = parseModelConfig({ ...qwen2, use_sliding_window: true, max_window_layers: 20, sliding_window: 4096 });
    expect(s.slidingWindow).toBe(4096);
    expect(s.layerTypes.indexOf("sliding_attention")).toBe(20);
  });
  test("mistral: null sliding_window recorded; a window makes every layer slide", () => {
    expect(parseModelConfig(mistral).slidingWindow).toBeNull();
    const s = parseModelConfig({ ...mistral, sliding_window: 4096 });
    expect(s.slidingWindow).toBe(4096);
    expect(s.layerTypes.every((t) => t === "sliding_attention")).toBe(true);
  });
  test("head_dim defaults to hidden/heads; kv heads default to heads; linear scaling", () => {
    const c = parseModelConfig({ ...mistral, num_key_value_heads: undefined, rope_scaling: { type: "linear", factor: 2 } });
    expect(c.headDim).toBe(128);
    expect(c.numKvHeads).toBe(32);
    expect(c.ropeScaling).toEqual({ type: "linear", factor: 2 });
  });
  test("unsupported architecture names it and lists the supported ones", () => {
    expect(() => parseModelConfig({ ...smolLM2, model_type: "gemma3" }, "m/config.json")).toThrow(
      "m/config.json: unsupported architecture model_type 'gemma3' (supported: llama, qwen2, mistral)",
    );
  });
  test("missing and wrong fields name the file and each field", () => {
    const { hidden_size: _, ...noHidden } = smolLM2;
    expect(() => parseModelConfig(noHidden, "x/config.json")).toThrow(/x\/config\.json: field 'hidden_size': missing/);
    let msg = "";
    try {
      parseModelConfig({ ...smolLM2, vocab_size: "big", rms_norm_eps: -1 }, "x/config.json");
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toContain("field 'vocab_size'");
    expect(msg).toContain("field 'rms_norm_eps'");
    expect(() => parseModelConfig({ ...smolLM2, model_type: undefined })).toThrow("field 'model_type': missing");
    expect(() => parseModelConfig({ ...smolLM2, hidden_act: "gelu" })).toThrow("field 'hidden_act': unsupported activation 'gelu'");
    expect(() => parseModelConfig({ ...llama32, rope_scaling: { rope_type: "yarn", factor: 4 } })).toThrow("rope_scaling.rope_type': unsupported RoPE type 'yarn'");
    expect(() => parseModelConfig({ ...llama32, rope_scaling: { rope_type: "llama3", factor: 4 } })).toThrow("rope_scaling.low_freq_factor': missing");
    expect(() => parseModelConfig({ ...mistral, num_key_value_heads: 5 })).toThrow("field 'num_key_value_heads'");
    expect(() => parseModelConfig([1, 2])).toThrow("expected a JSON object");
  });
  test("loadModelConfig names the path", () => {
    const dir = mkdtempSync(join(tmpdir(), "cfg-"));
    expect(() => loadModelConfig(dir)).toThrow(`${join(dir, "config.json")}: not found`);
    writeFileSync(join(dir, "config.json"), "{not json");
    expect(() => loadModelConfig(dir)).toThrow("invalid JSON");
    writeFileSync(join(dir, "config.json"), JSON.stringify(qwen2));
    expect(loadModelConfig(dir).arch).toBe("qwen2");
  });
});

describe("toTransformersConfig", () => {
  const cases: [string, object][] = [["smollm2", smolLM2], ["llama32", llama32], ["qwen2", qwen2], ["mistral", mistral],
    ["qwen2 sliding", { ...qwen2, use_sliding_window: true, max_window_layers: 3, sliding_window: 64 }],
    ["mistral window", { ...mistral, sliding_window: 4096 }],
    ["mixed layer types", { ...llama32v5, model_type: "mistral", sliding_window: 128, layer_types: Array.from({ length: 16 }, (_, i) => (i % 2 ? "sliding_attention" : "full_attention")) }]];
  for (const [name, raw] of cases)
    test(`round trip: ${name}`, () => {
      const c: ModelConfig = parseModelConfig(raw);
      const json = JSON.parse(JSON.stringify(toTransformersConfig(c)));
      expect(parseModelConfig(json)).toEqual(c);
      expect(json.architectures).toHaveLength(1);
    });
});

describe("generation config", () => {
  test("parses eos number or list, optional file", () => {
    const g = parseGenerationConfig({ bos_token_id: 1, eos_token_id: [2, 3], temperature: 0.7, top_p: 0.9, top_k: 20, do_sample: true, max_new_tokens: 64, transformers_version: "4.45" });
    expect(g).toMatchObject({ bosTokenId: 1, eosTokenIds: [2, 3], temperature: 0.7, topP: 0.9, topK: 20, doSample: true, maxNewTokens: 64, minP: null });
    expect(parseGenerationConfig({ eos_token_id: 5 }).eosTokenIds).toEqual([5]);
    expect(parseGenerationConfig(toGenerationConfigJson(g))).toEqual(g);
    expect(() => parseGenerationConfig({ top_p: 3 }, "g.json")).toThrow("g.json: field 'top_p'");
    const dir = mkdtempSync(join(tmpdir(), "gen-"));
    expect(loadGenerationConfig(dir)).toBeNull();
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [7] }));
    expect(loadGenerationConfig(dir)!.eosTokenIds).toEqual([7]);
  });
  test("stopTokenIds unions config, generation config and tokenizer eos", () => {
    expect(stopTokenIds([2], parseGenerationConfig({ eos_token_id: [2, 9] }), 5)).toEqual([2, 5, 9]);
    expect(stopTokenIds([], null, null)).toEqual([]);
  });
});
