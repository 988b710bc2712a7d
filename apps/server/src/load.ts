/**
 * `--model DIR [--adapter DIR]` → what the server serves: an engine plus the chat template it
 * renders with. The template is the adapter's `chat_template.jinja` (the one training used),
 * else the model's; when the adapter's training_args.json pins a template hash that differs,
 * loading fails, because serving with another template than training silently degrades output.
 */
import { existsSync, readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { loadChatTemplate } from "@tuneloom/chat-template";
import { expectedTensors, openCheckpoint } from "@tuneloom/model/checkpoint.ts";
import { loadModelConfig, type ModelConfig } from "@tuneloom/model/config.ts";
import { loadGenerationConfig } from "@tuneloom/model/generation-config.ts";
import { IncrementalDetokenizer, loadTokenizer, type ModelTokenizer } from "@tuneloom/model/tokenizer.ts";
import type { ReferenceWeights } from "@tuneloom/model/cpu-reference.ts";
import { CpuReferenceEngine } from "./cpu-engine.ts";
import type { EngineChatTemplate, EngineTokenizer } from "./engine.ts";
import { addLoraDelta, type PeftAdapter, readPeftAdapter } from "@tuneloom/model/gpu/adapter.ts";

export class TemplateMismatchError extends Error {
  override name = "TemplateMismatchError";
}

/**
 * The template to serve with. Exported so `generate` and tests pick the same one.
 * Throws TemplateMismatchError when training_args.json records a different sha256.
 */
export function resolveServingTemplate(modelDir: string, adapterDir?: string): EngineChatTemplate {
  const fromAdapter = adapterDir !== undefined && existsSync(join(adapterDir, "chat_template.jinja"));
  const loaded = loadChatTemplate(fromAdapter ? adapterDir! : modelDir);
  // Special tokens are the model's unless the adapter ships its own tokenizer_config.json.
  const specialTokens =
    adapterDir && existsSync(join(adapterDir, "tokenizer_config.json")) ? loaded.specialTokens : loadChatTemplate(modelDir).specialTokens;
  const template: EngineChatTemplate = { source: loaded.source, sha256: loaded.sha256, origin: loaded.origin, specialTokens };
  if (adapterDir) {
    const argsPath = join(adapterDir, "training_args.json");
    if (existsSync(argsPath)) {
      let args: Record<string, unknown>;
      try {
        args = JSON.parse(readFileSync(argsPath, "utf8"));
      } catch (err) {
        throw new Error(`${argsPath}: invalid JSON (${(err as Error).message})`);
      }
      const recorded = args?.chat_template_sha256;
      if (typeof recorded === "string" && recorded !== template.sha256)
        throw new TemplateMismatchError(
          `refusing to serve: ${argsPath} records chat_template_sha256 ${recorded}, but the template found (${template.origin}) has sha256 ${template.sha256}. ` +
            `The adapter was trained with a different chat template, and prompts rendered with another one are off the distribution it learned. ` +
            `Put the training template in ${join(adapterDir, "chat_template.jinja")}.`,
        );
    }
  }
  return template;
}

/** The tokenizer to serve with: the adapter's copy when it ships one, else the model's. */
export function loadServingTokenizer(modelDir: string, adapterDir?: string): ModelTokenizer {
  return loadTokenizer(adapterDir && existsSync(join(adapterDir, "tokenizer.json")) ? adapterDir : modelDir);
}

/** The server's tokenizer view of a ModelTokenizer, with the stop ids generation should end on. */
export function engineTokenizer(tokenizer: ModelTokenizer, eosTokenIds: readonly number[]): EngineTokenizer {
  return {
    vocabSize: tokenizer.vocabSize,
    eosTokenIds,
    encode: (text, options) => tokenizer.encode(text, options),
    decode: (ids, options) => tokenizer.decode(ids, options),
    createDetokenizer: (options) => new IncrementalDetokenizer(tokenizer, options),
  };
}

/** Stop ids: generation_config.json's eos ids, config.json's, and the tokenizer's eos token, deduplicated. */
export function defaultStopTokenIds(modelDir: string, config: ModelConfig, tokenizer: ModelTokenizer): number[] {
  const ids = new Set<number>(config.eosTokenIds);
  const generation = loadGenerationConfig(modelDir);
  for (const id of generation?.eosTokenIds ?? []) ids.add(id);
  if (tokenizer.eosId !== null) ids.add(tokenizer.eosId);
  return [...ids];
}

/** Float32 weights cached on first use; the LoRA merge writes into the cache. */
class CachedWeights implements ReferenceWeights {
  private readonly cache = new Map<string, Float32Array>();
  constructor(private readonly store: ReturnType<typeof openCheckpoint>) {}
  has(name: string): boolean {
    return this.store.has(name);
  }
  toFloat32(name: string): Float32Array {
    let w = this.cache.get(name);
    if (!w) this.cache.set(name, (w = this.store.toFloat32(name)));
    return w;
  }
}

export interface LoadOptions {
  modelDir: string;
  adapterDir?: string;
  /** The id clients send as `model`; default the adapter's directory name, else the model's. */
  modelId?: string;
  maxBatchSize?: number;
}

/** What an adapter applies: s = alpha/r (alpha/√r with rsLoRA), and the adapted projections. */
export interface AdapterSummary {
  rank: number;
  alpha: number;
  rslora: boolean;
  scale: number;
  /** `model.layers.0.self_attn.q_proj`, ... in layer order. */
  modules: string[];
}

export function summarizeAdapter(peft: PeftAdapter): AdapterSummary {
  return { rank: peft.rank, alpha: peft.alpha, rslora: peft.rslora, scale: peft.scale, modules: peft.modules.map((m) => m.base) };
}

export interface LoadedModel {
  engine: CpuReferenceEngine;
  config: ModelConfig;
  /** Folded into the float32 weights (the CPU reference has no LoRA path). */
  adapter: AdapterSummary | null;
}

export function loadCpuReferenceEngine(options: LoadOptions): LoadedModel {
  const { modelDir, adapterDir } = options;
  const chatTemplate = resolveServingTemplate(modelDir, adapterDir);
  const config = loadModelConfig(modelDir);
  const tokenizer = loadServingTokenizer(modelDir, adapterDir);
  const store = openCheckpoint(modelDir);
  store.expectTensors(expectedTensors(config));
  const weights = new CachedWeights(store);
  // The CPU reference has no LoRA path: fold W' = W + s·B·A into the cached float32 weights.
  let adapter: AdapterSummary | null = null;
  if (adapterDir) {
    const peft = readPeftAdapter(adapterDir, config);
    for (const m of peft.modules) addLoraDelta(weights.toFloat32(`${m.base}.weight`), m.A, m.B, peft.scale, m.outFeatures, m.inFeatures, peft.rank);
    adapter = summarizeAdapter(peft);
  }
  const modelId = options.modelId ?? basename(resolve(adapterDir ?? modelDir));
  const engine = new CpuReferenceEngine({
    modelId,
    config,
    weights,
    tokenizer: engineTokenizer(tokenizer, defaultStopTokenIds(modelDir, config, tokenizer)),
    chatTemplate,
    maxBatchSize: options.maxBatchSize,
  });
  return { engine, config, adapter };
}
