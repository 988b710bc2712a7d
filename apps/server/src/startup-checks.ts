/**
 * Settings the server cannot serve are refused before it listens, with the reason: a flag out
 * of range, a model directory that lacks a file, a context longer than the model was trained
 * for, or KV-cache and attention buffers larger than the GPU can bind. Each check is cheap and
 * runs before the expensive step it guards (the model-file checks before any file is parsed,
 * the device check before the KV cache is allocated), so a bad start costs seconds, and never
 * a server whose every generation fails.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { attentionDecodeScratchSize } from "@tuneloom/kernels";
import type { ModelConfig } from "@tuneloom/model/config.ts";

/** `value` as an integer in [min, max], or an error naming the flag. undefined passes (the default applies). */
export function checkIntegerFlag(name: string, value: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (value === undefined) return;
  if (!Number.isInteger(value) || value < min || value > max)
    throw new Error(`${name} must be an integer in ${min}..${max === Number.MAX_SAFE_INTEGER ? "∞" : max}, got ${value}`);
}

/** A duration flag in seconds, > 0 (or ≥ 0 with allowZero), as milliseconds; undefined passes. */
export function secondsFlagMs(name: string, value: number | undefined, allowZero = false): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isFinite(value) || value < 0 || (value === 0 && !allowZero))
    throw new Error(`${name} must be a number of seconds ${allowZero ? "≥ 0" : "> 0"}, got ${value}`);
  return Math.round(value * 1000);
}

/**
 * What a model directory must hold to be served: the directory itself, config.json,
 * tokenizer.json and the weights (model.safetensors or model.safetensors.index.json). One
 * error lists everything missing, before the template or tokenizer readers are asked.
 */
export function checkModelDirectory(modelDir: string, adapterDir?: string): void {
  if (!existsSync(modelDir)) throw new Error(`model directory not found: ${modelDir}`);
  if (!statSync(modelDir).isDirectory()) throw new Error(`--model ${modelDir} is a file; pass the model's directory (Hugging Face layout)`);
  const missing: string[] = [];
  if (!existsSync(join(modelDir, "config.json"))) missing.push("config.json");
  if (!existsSync(join(modelDir, "tokenizer.json")) && !(adapterDir && existsSync(join(adapterDir, "tokenizer.json")))) missing.push("tokenizer.json");
  if (!existsSync(join(modelDir, "model.safetensors")) && !existsSync(join(modelDir, "model.safetensors.index.json")))
    missing.push("weights (model.safetensors or model.safetensors.index.json with its shards)");
  if (missing.length) throw new Error(`model directory ${modelDir} is missing ${missing.join(", ")}`);
  if (adapterDir !== undefined) {
    if (!existsSync(adapterDir)) throw new Error(`adapter directory not found: ${adapterDir}`);
    if (!existsSync(join(adapterDir, "adapter_config.json"))) throw new Error(`adapter directory ${adapterDir} is missing adapter_config.json (PEFT layout)`);
  }
}

/** A context the model was not trained for is refused: RoPE positions past it are out of distribution. */
export function checkContextFitsModel(maxContext: number, cfg: Pick<ModelConfig, "maxPositionEmbeddings">): void {
  checkIntegerFlag("--max-context", maxContext, 2);
  if (maxContext > cfg.maxPositionEmbeddings)
    throw new Error(`--max-context ${maxContext} is longer than the model's max_position_embeddings (${cfg.maxPositionEmbeddings}); use at most ${cfg.maxPositionEmbeddings}`);
}

export interface DeviceLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
}

/** The GPU buffers whose size grows with the serving flags, in bytes, as KvCacheGenerator allocates them. */
export function servingBufferBytes(cfg: Pick<ModelConfig, "numKvHeads" | "numHeads" | "headDim" | "vocabSize">, slots: number, maxContext: number) {
  const splits = Math.max(1, Math.min(32, Math.floor(maxContext / 32))); // the generator's split-K decode attention
  return {
    /** One layer's K (or V) cache: (slots·maxContext, nKV, hd) f32, bound whole by attention. */
    kvCacheLayer: 4 * slots * maxContext * cfg.numKvHeads * cfg.headDim,
    attentionScratch: 4 * attentionDecodeScratchSize(slots, cfg.numHeads, cfg.headDim, splits),
    logits: 4 * slots * cfg.vocabSize,
  };
}

/**
 * Every buffer the generator binds must fit maxStorageBufferBindingSize; the refusal names the
 * buffer and the largest --max-context (at this --max-running) that fits.
 */
export function checkDeviceFits(
  cfg: Pick<ModelConfig, "numKvHeads" | "numHeads" | "headDim" | "vocabSize">,
  limits: DeviceLimits,
  slots: number,
  maxContext: number,
): void {
  const limit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const bytes = servingBufferBytes(cfg, slots, maxContext);
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (bytes.kvCacheLayer > limit) {
    const fits = Math.floor(limit / (4 * slots * cfg.numKvHeads * cfg.headDim));
    throw new Error(
      `--max-context ${maxContext} with --max-running ${slots} needs a KV cache of ${mib(bytes.kvCacheLayer)} per layer, more than the GPU can bind (${mib(limit)}); ` +
        `use --max-context ${fits} or less at --max-running ${slots}, or fewer running sequences`,
    );
  }
  for (const [name, n] of [["decode attention scratch", bytes.attentionScratch], ["logits", bytes.logits]] as const)
    if (n > limit) throw new Error(`--max-running ${slots} needs ${name} of ${mib(n)}, more than the GPU can bind (${mib(limit)}); lower --max-running`);
}
