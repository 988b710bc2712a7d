/**
 * GpuEngine: the InferenceEngine over @tuneloom/model's KV-cache generator on WebGPU. The loop
 * (admission, continuous batching, stops, aborts, seeded draws) is BatchingEngine's; here a
 * running sequence holds a KV slot, the prompts admitted in one scheduling round are prefilled in
 * ONE submit (KvCacheGenerator.prefillMany: packed, each into its own slot), and a decode step is ONE
 * submit for every running sequence (each at its own position, with its own sampling row and
 * uniform draw), sampling on the GPU.
 *
 * Several adapters (vLLM's --lora-modules): the base and every loaded adapter are served models
 * of one engine, sharing its KV slots and its continuous batch. Each loaded adapter holds an
 * adapter slot (@tuneloom/model's LoraSlots: --max-loras slots padded to --max-lora-rank), and
 * every row of a step carries its sequence's slot (−1: the base), so a decode step over any mix
 * of adapters is ONE forward and one submit, and so is the prefill of a round's newcomers
 * (kernels' bgmv); see docs/serving.md "Several adapters".
 *
 * Sampling matches CpuReferenceEngine (same draws, same semantics), so a seeded request yields
 * the same tokens on both engines (up to f32 vs float64 rounding of near-tied logits or of u
 * landing on a CDF step) and the same tokens alone or batched. Logit rows past the tokenizer's
 * vocabulary (a padded vocab_size) are masked on the GPU and never sampled or reported.
 */
import { basename, resolve } from "node:path";
import { getRuntime, type SampledRow } from "@tuneloom/kernels";
import {
  GpuModel, KvCacheGenerator, type LoadedAdapter, type LoadGpuModelOptions, LoraSlots, type LoraSlotDtype, resolveLoraSlotDtype, type ModelConfig, loadModelConfig, loadServingTokenizer,
  readAdapterDir, resolveServingTemplate, servingStopTokenIds,
} from "@tuneloom/model";
import { AsyncQueue } from "./async-queue.ts";
import { BatchingEngine, type LiveSequence } from "./batching-engine.ts";
import type { EngineChatTemplate, EngineTokenizer, GenerationRequest, ServedModel, TokenEvent } from "./engine.ts";
import { ApiError, badRequest } from "./errors.ts";
import { type AdapterSummary, adapterNameOf, engineTokenizer, summarizeAdapter } from "./load.ts";
import { checkContextFitsModel, checkDeviceFits, checkIntegerFlag } from "./startup-checks.ts";

export interface GpuEngineOptions {
  /** The base model's id (clients send it as `model` for the base). */
  modelId: string;
  model: GpuModel;
  /** The base's tokenizer (with its stop ids) and template. */
  tokenizer: EngineTokenizer;
  chatTemplate: EngineChatTemplate;
  /** Where the base was read from: /v1/models' `root`, and what runtime adapter loads resolve templates against. */
  modelDir?: string;
  /** Adapters served from the start, each under its own name (readServedAdapter). */
  adapters?: readonly ServedAdapter[];
  /** The model a request without `model` gets: this adapter's name; default the base. */
  defaultAdapter?: string;
  /** Most adapters loaded at once (startup and runtime loads) = adapter slots; default 8. */
  maxLoras?: number;
  /**
   * Largest adapter rank a slot takes (the slots' padded rank); default the largest of 16 and the
   * startup adapters' ranks. A runtime load above it is refused.
   */
  maxLoraRank?: number;
  /** Storage of the adapter slots' A and B; default f32. */
  loraDtype?: LoraSlotDtype;
  /** Sequences decoded together = KV slots; default 16. */
  maxBatchSize?: number;
  /** KV rows per slot (prompt + generated); default min(max_position_embeddings, 4096). */
  maxContext?: number;
}

export const DEFAULT_GPU_MAX_BATCH = 16;
export const DEFAULT_GPU_MAX_CONTEXT = 4096;
export const DEFAULT_MAX_LORAS = 8;
export const DEFAULT_MAX_LORA_RANK = 16;
const defaultMaxContext = (cfg: Pick<ModelConfig, "maxPositionEmbeddings">) => Math.min(cfg.maxPositionEmbeddings, DEFAULT_GPU_MAX_CONTEXT);

/** An adapter read for the model (its A and B on the host until a slot takes them), with what it is served with. */
export interface ServedAdapter {
  served: ServedModel;
  loaded: LoadedAdapter;
  summary: AdapterSummary;
}

/**
 * Reads and checks `dir` against the model (adapter_config, every tensor's shape), resolves its
 * own template (refused when training_args.json pins another sha256), tokenizer and stop ids.
 */
export function readServedAdapter(model: GpuModel, modelDir: string, baseId: string, name: string, dir: string): ServedAdapter {
  const loaded = readAdapterDir(dir, model.cfg);
  const chatTemplate = resolveServingTemplate(modelDir, dir);
  const tokenizer = loadServingTokenizer(modelDir, dir);
  const served: ServedModel = {
    id: name, parent: baseId, root: resolve(dir), adapter: name, chatTemplate,
    tokenizer: engineTokenizer(tokenizer, servingStopTokenIds(modelDir, model.cfg, tokenizer)),
  };
  return { served, loaded, summary: summarizeAdapter(loaded) };
}

/** An adapter being served, from its slot. */
interface AdapterEntry {
  served: ServedModel;
  summary: AdapterSummary;
  /** Its LoraSlots slot. */
  slot: number;
  /** Sequences submitted for it that have not ended yet. */
  active: number;
  unloading: boolean;
  /** Resolved when `active` drops to 0 (unload waits on them). */
  idle: (() => void)[];
}

/** Per sequence: its KV slot and its adapter's slot (−1: the base). */
export interface SeqState {
  slot: number;
  loraSlot: number;
}

const notServed = (name: string, served: readonly string[]) =>
  new ApiError(404, `The model '${name}' does not exist; this server serves ${served.map((n) => `'${n}'`).join(", ")} (see GET /v1/models)`, "invalid_request_error", "model", "model_not_found");

export class GpuEngine extends BatchingEngine<SeqState> {
  readonly model: GpuModel;
  readonly maxLoras: number;
  readonly maxLoraRank: number;
  private readonly generator: KvCacheGenerator;
  private readonly loraSlots: LoraSlots;
  private readonly base: ServedModel;
  private readonly modelDir: string | undefined;
  private readonly adapters = new Map<string, AdapterEntry>();
  private readonly defaultAdapter: string | undefined;

  constructor(options: GpuEngineOptions) {
    const def = options.defaultAdapter === undefined ? undefined : options.adapters?.find((a) => a.served.id === options.defaultAdapter);
    if (options.defaultAdapter !== undefined && !def) throw new Error(`defaultAdapter '${options.defaultAdapter}' is not one of the adapters`);
    super({
      ...options,
      modelId: def?.served.id ?? options.modelId,
      tokenizer: def?.served.tokenizer ?? options.tokenizer,
      chatTemplate: def?.served.chatTemplate ?? options.chatTemplate,
      maxBatchSize: options.maxBatchSize ?? DEFAULT_GPU_MAX_BATCH,
      maxContext: options.maxContext ?? defaultMaxContext(options.model.cfg),
    });
    this.model = options.model;
    this.modelDir = options.modelDir;
    this.defaultAdapter = options.defaultAdapter;
    this.maxLoras = options.maxLoras ?? DEFAULT_MAX_LORAS;
    checkIntegerFlag("--max-loras", this.maxLoras, 1);
    this.base = {
      id: options.modelId, parent: null, root: options.modelDir ? resolve(options.modelDir) : options.modelId, adapter: null,
      tokenizer: options.tokenizer, chatTemplate: options.chatTemplate,
    };
    const adapters = options.adapters ?? [];
    if (adapters.length > this.maxLoras) throw new Error(tooManyAdapters(adapters.length, this.maxLoras));
    this.maxLoraRank = options.maxLoraRank ?? Math.max(DEFAULT_MAX_LORA_RANK, ...adapters.map((a) => a.loaded.lora.rank));
    checkIntegerFlag("--max-lora-rank", this.maxLoraRank, 1);
    for (const a of adapters) {
      if (a.served.id === this.base.id || adapters.filter((b) => b.served.id === a.served.id).length > 1)
        throw new Error(`the model name '${a.served.id}' is given twice (base and adapters need distinct names)`);
      if (a.loaded.lora.rank > this.maxLoraRank) throw new Error(tooHighRank(a.served.id, a.loaded.lora.rank, this.maxLoraRank));
    }
    // The stacks are allocated on the first adapter written: a base-only server pays nothing.
    this.loraSlots = new LoraSlots(options.model.rt, options.model.cfg, { slots: this.maxLoras, maxRank: this.maxLoraRank, dtype: options.loraDtype });
    try {
      for (const a of adapters) this.adapters.set(a.served.id, this.slotIn(a));
    } catch (err) {
      this.loraSlots.dispose();
      throw err;
    }
    this.generator = new KvCacheGenerator(options.model, {
      maxSlots: this.maxBatchSize,
      maxContext: this.maxContext,
      validVocab: options.tokenizer.vocabSize,
      loraSlots: this.loraSlots,
    });
  }

  /** Writes the adapter into a free slot (the caller checked the cap and the rank). */
  private slotIn(a: ServedAdapter): AdapterEntry {
    const slot = this.loraSlots.acquire(a.served.id);
    if (slot === null) throw new Error(tooManyAdapters(this.maxLoras + 1, this.maxLoras));
    try {
      this.loraSlots.write(slot, a.loaded);
    } catch (err) {
      this.loraSlots.clear(slot);
      throw err;
    }
    return { served: a.served, summary: a.summary, slot, active: 0, unloading: false, idle: [] };
  }

  /** Adapter slots in use and their total (tests, logs). */
  get loraSlotsUsed(): { used: number; total: number } {
    return { used: this.loraSlots.count - this.loraSlots.free, total: this.loraSlots.count };
  }

  /** The default first (the --adapter in the one-adapter form, else the base), then the base, then the adapters in load order. */
  models(): readonly ServedModel[] {
    const live = [...this.adapters.values()].filter((a) => !a.unloading).map((a) => a.served);
    const all = [this.base, ...live];
    const i = all.findIndex((m) => m.id === this.defaultAdapter);
    return i > 0 ? [all[i]!, ...all.slice(0, i), ...all.slice(i + 1)] : all;
  }

  private servedNames(): string[] {
    return this.models().map((m) => m.id);
  }

  async loadAdapter(name: string, dir: string): Promise<ServedModel> {
    if (!this.modelDir) throw new ApiError(501, "this engine was built without its model directory and cannot load adapters", "server_error");
    if (name === this.base.id || this.adapters.has(name))
      throw badRequest(`The model name '${name}' is already served; unload it first or pick another lora_name`, "lora_name", "adapter_already_loaded");
    if (this.adapters.size >= this.maxLoras)
      throw badRequest(`${tooManyAdapters(this.adapters.size + 1, this.maxLoras)}; unload one first`, "lora_name", "max_loras_reached");
    let adapter: ServedAdapter;
    try {
      adapter = readServedAdapter(this.model, this.modelDir, this.base.id, name, dir);
    } catch (err) {
      throw badRequest(`cannot load adapter '${name}' from ${dir}: ${(err as Error).message}`, "lora_path", "invalid_adapter");
    }
    if (adapter.loaded.lora.rank > this.maxLoraRank)
      throw badRequest(tooHighRank(name, adapter.loaded.lora.rank, this.maxLoraRank), "lora_path", "lora_rank_too_high");
    let entry: AdapterEntry;
    try {
      entry = this.slotIn(adapter);
    } catch (err) {
      // What the adapter's values cannot go into the slots as (e.g. past f16's range): the request's fault.
      if (err instanceof RangeError) throw badRequest(`cannot load adapter '${name}' from ${dir}: ${err.message}`, "lora_path", "invalid_adapter");
      throw err;
    }
    this.adapters.set(name, entry);
    return adapter.served;
  }

  async unloadAdapter(name: string): Promise<void> {
    const entry = this.adapters.get(name);
    if (!entry || entry.unloading) throw notServed(name, this.servedNames());
    entry.unloading = true; // new requests for it are 404s from now on
    if (entry.active > 0) await new Promise<void>((resolve) => entry.idle.push(resolve));
    this.adapters.delete(name);
    this.loraSlots.clear(entry.slot); // no running sequence points at it any more
  }

  /** Counts the sequence against its adapter (unload waits for it); an adapter not served (or unloading) is a 404. */
  override submit(request: GenerationRequest, signal: AbortSignal): AsyncIterable<TokenEvent> {
    const name = request.adapter ?? null;
    if (name === null) return super.submit(request, signal);
    const entry = this.adapters.get(name);
    if (!entry || entry.unloading) {
      const events = new AsyncQueue<TokenEvent>();
      events.fail(notServed(name, this.servedNames()));
      return events;
    }
    entry.active++;
    let inner: AsyncIterable<TokenEvent>;
    try {
      inner = super.submit(request, signal);
    } catch (err) {
      this.ended(entry);
      throw err;
    }
    const ended = () => this.ended(entry);
    return (async function* () {
      try {
        yield* inner;
      } finally {
        ended();
      }
    })();
  }

  private ended(entry: AdapterEntry) {
    if (--entry.active > 0) return;
    for (const resolve of entry.idle.splice(0)) resolve();
  }

  /** KV slots not held by a sequence (tests: an aborted or finished sequence gives its slot back). */
  get slotsFree(): number {
    return this.generator.slotsFree;
  }

  protected override admit(request: GenerationRequest): SeqState | null {
    const slot = this.generator.acquireSlot();
    if (slot === null) return null;
    return { slot, loraSlot: request.adapter ? this.adapters.get(request.adapter)!.slot : -1 };
  }

  protected override release(seq: LiveSequence<SeqState>): void {
    this.generator.releaseSlot(seq.state.slot);
  }

  protected override prefill(seq: LiveSequence<SeqState>, u: number): Promise<SampledRow> {
    const [item] = this.prefillItems([seq], [u]);
    return this.generator.prefillMany([item!]).then((rows) => rows[0]!);
  }

  /** The newcomers' prompts packed into one prefill, whatever adapters they use (each token carries its slot). */
  protected override prefillMany(batch: readonly LiveSequence<SeqState>[], u: readonly number[]): Promise<SampledRow[]> {
    return this.generator.prefillMany(this.prefillItems(batch, u));
  }

  private prefillItems(batch: readonly LiveSequence<SeqState>[], u: readonly number[]) {
    return batch.map((seq, i) => ({
      slot: seq.state.slot, promptIds: seq.request.promptIds, sampling: seq.sampling, u: u[i]!, topN: seq.topN, penalties: seq.penalties, loraSlot: seq.state.loraSlot,
    }));
  }

  /** Prefill steps run and prompts they held (tests, logs). */
  get prefillStats(): { readonly steps: number; readonly prompts: number } {
    return this.generator.prefillStats;
  }

  /** Decode submits and the rows they held (tests: a step that mixes adapters is one submit). */
  get decodeStats(): { readonly submits: number; readonly rows: number } {
    return this.generator.decodeStats;
  }

  /** ONE decode submit for the whole batch: every row with its own adapter slot (−1: the base). */
  protected override decode(batch: readonly LiveSequence<SeqState>[], u: readonly number[]): Promise<SampledRow[]> {
    const items = batch.map((seq, i) => ({
      slot: seq.state.slot,
      token: seq.generated.at(-1)!,
      position: seq.request.promptIds.length + seq.generated.length - 1, // of that token = tokens cached
      sampling: seq.sampling,
      u: u[i]!,
      penalties: seq.penalties,
      loraSlot: seq.state.loraSlot,
    }));
    return this.generator.decode(items, Math.max(0, ...batch.map((seq) => seq.topN)));
  }

  /** Frees the KV cache and the adapter slots. */
  protected override dispose(): void {
    this.generator.dispose();
    this.loraSlots.dispose();
    this.adapters.clear();
  }
}

const tooManyAdapters = (n: number, cap: number) => `${n} adapters would be loaded, more than --max-loras ${cap}`;
const tooHighRank = (name: string, rank: number, cap: number) => `adapter '${name}' has rank ${rank}, above --max-lora-rank ${cap} (the adapter slots' rank); raise --max-lora-rank`;

export interface LoadGpuEngineOptions {
  /** The base's id (--served-model-name); default the model directory's name. */
  modelId?: string;
  maxBatchSize?: number;
  maxContext?: number;
  maxLoras?: number;
  maxLoraRank?: number;
  /** --lora-dtype: the adapter slots' storage (resolveLoraSlotDtype; default auto). */
  loraDtype?: string;
  weightDtype?: LoadGpuModelOptions["weightDtype"];
}

export interface LoadedGpuModel {
  engine: GpuEngine;
  config: ModelConfig;
  /** In adapter slots beside the weights (not merged): the forward adds s·B[slot]·A[slot]·x per row. */
  adapters: { name: string; summary: AdapterSummary }[];
}

/**
 * `--model DIR [--adapter DIR | --lora-modules name=DIR ...]` on the GPU. The base is served
 * under `modelId` (default its directory's name); each adapter under its name, with its own
 * template (hash-checked), tokenizer and stop ids. `adapters` as a string is the one-adapter
 * form: named after its run directory (adapterNameOf) and the default model of requests without
 * `model`. Before any weight is read, the context and batch are checked against the model's
 * max_position_embeddings and the device's binding limit (./startup-checks.ts), and every
 * adapter's template against its training_args.json.
 */
export async function loadGpuEngine(
  modelDir: string, adapters?: string | readonly { name: string; dir: string }[], opts: LoadGpuEngineOptions = {},
): Promise<LoadedGpuModel> {
  const planned = loadModelConfig(modelDir);
  const maxBatchSize = opts.maxBatchSize ?? DEFAULT_GPU_MAX_BATCH;
  const maxContext = opts.maxContext ?? defaultMaxContext(planned);
  const maxLoras = opts.maxLoras ?? DEFAULT_MAX_LORAS;
  checkIntegerFlag("--max-running", maxBatchSize, 1);
  checkIntegerFlag("--max-loras", maxLoras, 1);
  resolveLoraSlotDtype(opts.loraDtype, "f32"); // a bad --lora-dtype is refused before anything loads
  const list = typeof adapters === "string" ? [{ name: adapterNameOf(adapters), dir: adapters }] : (adapters ?? []);
  if (list.length > maxLoras) throw new Error(tooManyAdapters(list.length, maxLoras));
  checkContextFitsModel(maxContext, planned);
  checkDeviceFits(planned, (await getRuntime()).caps.limits, maxBatchSize, maxContext);
  for (const a of list) resolveServingTemplate(modelDir, a.dir); // a template mismatch refuses before the weights load
  const chatTemplate = resolveServingTemplate(modelDir);
  const tokenizer = loadServingTokenizer(modelDir);
  const model = await GpuModel.load(modelDir, { weightDtype: opts.weightDtype });
  const config = model.cfg;
  const modelId = opts.modelId ?? basename(resolve(modelDir));
  const served: ServedAdapter[] = [];
  for (const a of list) served.push(readServedAdapter(model, modelDir, modelId, a.name, a.dir));
  const engine = new GpuEngine({
    modelId,
    model,
    modelDir,
    adapters: served,
    defaultAdapter: typeof adapters === "string" ? list[0]!.name : undefined,
    maxLoras,
    maxLoraRank: opts.maxLoraRank,
    loraDtype: resolveLoraSlotDtype(opts.loraDtype, model.weights.dtype),
    tokenizer: engineTokenizer(tokenizer, servingStopTokenIds(modelDir, config, tokenizer)),
    chatTemplate,
    maxBatchSize,
    maxContext,
  });
  return { engine, config, adapters: served.map((a) => ({ name: a.served.id, summary: a.summary })) };
}
