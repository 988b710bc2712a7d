// @tuneloom/model: every on-disk format (model directory: config, weights, tokenizer, chat template;
// adapter directory: PEFT LoRA), the prompt rule (chat-prompt.ts) and the Llama-family CPU
// reference; the GPU forward, KV cache and sampling (gpu/).
export * from "./config.ts";
export * from "./generation-config.ts";
export * from "./safetensors.ts";
export * from "./checkpoint.ts";
export * from "./half-floats.ts";
export * from "./tokenizer.ts";
export * from "./chat-template-file.ts";
export * from "./chat-prompt.ts";
export * from "./serving-files.ts";
export * from "./lora-config.ts";
export * from "./adapter-dir.ts";
export * from "./atomic-dir.ts";
export { readJsonObject } from "./tokenizer-config.ts";
export * from "./lora-merge.ts";
export * from "./model-dir.ts";
export * from "./cpu-reference.ts";
export * from "./tiny-model.ts";
export * from "./hf-cache.ts";
export * from "./gpu/index.ts";
