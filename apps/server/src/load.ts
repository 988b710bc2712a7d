/**
 * `--model DIR [--adapter DIR]` → what the server serves: an engine plus the chat template it
 * renders with. Which template, tokenizer and stop ids is @tuneloom/model's serving-files.ts
 * (the adapter's template, refused when training_args.json pins another sha256).
 */
import { basename, dirname, resolve } from "node:path";
import {
  type LoadedAdapter, type ModelConfig, type ModelTokenizer, type ReferenceWeights, IncrementalDetokenizer, encodeChatText, expectedTensors,
  foldAdapter, loadModelConfig, loadServingTokenizer, openCheckpoint, readAdapterDir, resolveServingTemplate, servingStopTokenIds,
} from "@tuneloom/model";
import { CpuReferenceEngine } from "./cpu-engine.ts";
import type { EngineTokenizer } from "./engine.ts";

/** The server's tokenizer view of a ModelTokenizer, with the stop ids generation should end on. */
export function engineTokenizer(tokenizer: ModelTokenizer, eosTokenIds: readonly number[]): EngineTokenizer {
  return {
    vocabSize: tokenizer.vocabSize,
    eosTokenIds,
    encode: (text, options) => tokenizer.encode(text, options),
    encodeChat: (text) => encodeChatText(tokenizer, text),
    decode: (ids, options) => tokenizer.decode(ids, options),
    createDetokenizer: (options) => new IncrementalDetokenizer(tokenizer, options),
  };
}

/** `--adapter DIR`'s name: the run directory's (train writes RUN/adapter), else the directory's own. */
export function adapterNameOf(dir: string): string {
  const full = resolve(dir);
  return basename(full) === "adapter" ? basename(dirname(full)) : basename(full);
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
  /** The id clients send as `model`; default the adapter's name (adapterNameOf), else the model directory's. */
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

export function summarizeAdapter(adapter: LoadedAdapter): AdapterSummary {
  const { rank, alpha, rslora } = adapter.lora;
  return { rank, alpha, rslora, scale: adapter.scaling, modules: adapter.weights.map((w) => w.spec.base) };
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
    const loaded = readAdapterDir(adapterDir, config);
    foldAdapter(loaded, (name) => weights.toFloat32(name));
    adapter = summarizeAdapter(loaded);
  }
  const modelId = options.modelId ?? (adapterDir ? adapterNameOf(adapterDir) : basename(resolve(modelDir)));
  const engine = new CpuReferenceEngine({
    modelId,
    config,
    weights,
    tokenizer: engineTokenizer(tokenizer, servingStopTokenIds(modelDir, config, tokenizer)),
    chatTemplate,
    maxBatchSize: options.maxBatchSize,
  });
  return { engine, config, adapter };
}
