/**
 * @tuneloom/trainer: LoRA and full fine-tuning. This entry exports the CPU side: data loading and
 * validation, tokenization with assistant masks, batching/packing, LoRA init, lr schedules,
 * checkpoints, run directories, metrics, loss curve and progress output.
 */
export * from "./rng.ts";
export * from "./data.ts";
export * from "./tokenize-conversation.ts";
export * from "./batching.ts";
export * from "./eval-set.ts";
export * from "./general-eval.ts";
export * from "./lora-init.ts";
export * from "./schedule.ts";
export * from "./checkpoint.ts";
export * from "./run-dir.ts";
export * from "./metrics.ts";
export * from "./loss-curve-svg.ts";
export * from "./progress.ts";
export * from "./demo-data.ts";
export * from "./train-loop.ts";
export * from "./gpu/lora-trainer.ts";
export * from "./gpu/full-trainer.ts";
export * from "./gpu/selective-checkpoint.ts";
export * from "./full-memory.ts";
export * from "./distributed/world.ts";
export * from "./distributed/launch.ts";
