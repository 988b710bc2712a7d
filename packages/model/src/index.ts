// @tuneloom/model: Hugging Face model directories (config, weights, tokenizer) and the Llama-family
// CPU reference. GPU forward, KV cache and sampling are exported from here as they land.
export * from "./config.ts";
export * from "./generation-config.ts";
export * from "./safetensors.ts";
export * from "./checkpoint.ts";
export * from "./half-floats.ts";
export * from "./tokenizer.ts";
export * from "./cpu-reference.ts";
export * from "./tiny-model.ts";
export * from "./gpu/index.ts";
