/**
 * GpuEngine: the InferenceEngine over @tuneloom/model's KV-cache generator on WebGPU. The loop
 * (admission, continuous batching, stops, aborts, seeded draws) is BatchingEngine's; here a
 * running sequence holds a KV slot, the prompts admitted in one scheduling round are prefilled in
 * ONE submit (KvCacheGenerator.prefillMany: packed, each into its own slot), and a decode step is ONE
 * submit for every running sequence (each at its own position, with its own sampling row and
 * uniform draw), sampling on the GPU.
 *
 * Sampling matches CpuReferenceEngine (same draws, same semantics), so a seeded request yields
 * the same tokens on both engines (up to f32 vs float64 rounding of near-tied logits or of u
 * landing on a CDF step) and the same tokens alone or batched. Logit rows past the tokenizer's
 * vocabulary (a padded vocab_size) are masked on the GPU and never sampled or reported.
 */
import { basename, resolve } from "node:path";
import { getRuntime, type SampledRow } from "@tuneloom/kernels";
import {
  GpuModel, KvCacheGenerator, type LayerLora, type LoadGpuModelOptions, type ModelConfig, loadModelConfig, loadServingTokenizer, readAdapterDir,
  releaseAdapter, resolveServingTemplate, servingStopTokenIds, uploadAdapter,
} from "@tuneloom/model";
import { BatchingEngine, type LiveSequence } from "./batching-engine.ts";
import type { EngineChatTemplate, EngineTokenizer } from "./engine.ts";
import { type AdapterSummary, engineTokenizer, summarizeAdapter } from "./load.ts";
import { checkContextFitsModel, checkDeviceFits, checkIntegerFlag } from "./startup-checks.ts";

export interface GpuEngineOptions {
  modelId: string;
  model: GpuModel;
  /** Adapter modules uploaded for `model` (uploadAdapter); the forward adds s·B·A·x to each. */
  lora?: readonly LayerLora[];
  tokenizer: EngineTokenizer;
  chatTemplate: EngineChatTemplate;
  /** Sequences decoded together = KV slots; default 16. */
  maxBatchSize?: number;
  /** KV rows per slot (prompt + generated); default min(max_position_embeddings, 4096). */
  maxContext?: number;
}

export const DEFAULT_GPU_MAX_BATCH = 16;
export const DEFAULT_GPU_MAX_CONTEXT = 4096;
const defaultMaxContext = (cfg: Pick<ModelConfig, "maxPositionEmbeddings">) => Math.min(cfg.maxPositionEmbeddings, DEFAULT_GPU_MAX_CONTEXT);

/** Per sequence: its KV slot. */
type Slot = number;

export class GpuEngine extends BatchingEngine<Slot> {
  readonly model: GpuModel;
  private readonly lora: readonly LayerLora[] | undefined;
  private readonly generator: KvCacheGenerator;

  constructor(options: GpuEngineOptions) {
    super({
      ...options,
      maxBatchSize: options.maxBatchSize ?? DEFAULT_GPU_MAX_BATCH,
      maxContext: options.maxContext ?? defaultMaxContext(options.model.cfg),
    });
    this.model = options.model;
    this.lora = options.lora;
    this.generator = new KvCacheGenerator(options.model, {
      maxSlots: this.maxBatchSize,
      maxContext: this.maxContext,
      lora: options.lora,
      validVocab: options.tokenizer.vocabSize,
    });
  }

  /** KV slots not held by a sequence (tests: an aborted or finished sequence gives its slot back). */
  get slotsFree(): number {
    return this.generator.slotsFree;
  }

  protected override admit(): Slot | null {
    return this.generator.acquireSlot();
  }

  protected override release(seq: LiveSequence<Slot>): void {
    this.generator.releaseSlot(seq.state);
  }

  protected override prefill(seq: LiveSequence<Slot>, u: number): Promise<SampledRow> {
    return this.generator.prefill(seq.state, seq.request.promptIds, seq.sampling, u, seq.topN, seq.penalties);
  }

  protected override prefillMany(batch: readonly LiveSequence<Slot>[], u: readonly number[]): Promise<SampledRow[]> {
    return this.generator.prefillMany(batch.map((seq, i) => ({
      slot: seq.state, promptIds: seq.request.promptIds, sampling: seq.sampling, u: u[i]!, topN: seq.topN, penalties: seq.penalties,
    })));
  }

  /** Prefill steps run and prompts they held (tests, logs). */
  get prefillStats(): { readonly steps: number; readonly prompts: number } {
    return this.generator.prefillStats;
  }

  protected override decode(batch: readonly LiveSequence<Slot>[], u: readonly number[]): Promise<SampledRow[]> {
    const items = batch.map((seq, b) => ({
      slot: seq.state,
      token: seq.generated.at(-1)!,
      position: seq.request.promptIds.length + seq.generated.length - 1, // of that token = tokens cached
      sampling: seq.sampling,
      u: u[b]!,
      penalties: seq.penalties,
    }));
    return this.generator.decode(items, Math.max(0, ...batch.map((seq) => seq.topN)));
  }

  /** Frees the KV cache and the adapter. */
  protected override dispose(): void {
    this.generator.dispose();
    if (this.lora) releaseAdapter(this.model, this.lora);
  }
}

export interface LoadGpuEngineOptions {
  /** The id clients send as `model`; default the adapter's directory name, else the model's. */
  modelId?: string;
  maxBatchSize?: number;
  maxContext?: number;
  weightDtype?: LoadGpuModelOptions["weightDtype"];
}

export interface LoadedGpuModel {
  engine: GpuEngine;
  config: ModelConfig;
  /** Uploaded beside the weights (not merged): the forward adds s·B·A·x. */
  adapter: AdapterSummary | null;
}

/**
 * `--model DIR [--adapter DIR]` on the GPU: same template and tokenizer resolution and stop ids as
 * loadCpuReferenceEngine; the adapter is uploaded as LoRA modules (the forward adds s·B·A·x).
 * Before any weight is read, the context and batch are checked against the model's
 * max_position_embeddings and the device's binding limit (./startup-checks.ts).
 */
export async function loadGpuEngine(modelDir: string, adapterDir?: string, opts: LoadGpuEngineOptions = {}): Promise<LoadedGpuModel> {
  const planned = loadModelConfig(modelDir);
  const maxBatchSize = opts.maxBatchSize ?? DEFAULT_GPU_MAX_BATCH;
  const maxContext = opts.maxContext ?? defaultMaxContext(planned);
  checkIntegerFlag("--max-running", maxBatchSize, 1);
  checkContextFitsModel(maxContext, planned);
  checkDeviceFits(planned, (await getRuntime()).caps.limits, maxBatchSize, maxContext);
  const chatTemplate = resolveServingTemplate(modelDir, adapterDir);
  const tokenizer = loadServingTokenizer(modelDir, adapterDir);
  const model = await GpuModel.load(modelDir, { weightDtype: opts.weightDtype });
  const config = model.cfg;
  let lora: LayerLora[] | undefined;
  let adapter: AdapterSummary | null = null;
  if (adapterDir) {
    const loaded = readAdapterDir(adapterDir, config);
    lora = uploadAdapter(model, loaded);
    adapter = summarizeAdapter(loaded);
  }
  const engine = new GpuEngine({
    modelId: opts.modelId ?? basename(resolve(adapterDir ?? modelDir)),
    model,
    lora,
    tokenizer: engineTokenizer(tokenizer, servingStopTokenIds(modelDir, config, tokenizer)),
    chatTemplate,
    maxBatchSize,
    maxContext,
  });
  return { engine, config, adapter };
}
