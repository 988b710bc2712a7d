export * from "./weights.ts";
export * from "./weight-stream.ts";
export * from "./lora.ts";
export * from "./decoder-layer.ts";
export * from "./model.ts";
export * from "./generator.ts";
export * from "./adapter.ts";
export * from "./lora-slots.ts";
