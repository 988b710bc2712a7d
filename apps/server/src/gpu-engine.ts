/**
 * GpuEngine: the InferenceEngine over @tuneloom/model's KV-cache generator on WebGPU.
 *
 * Scheduler loop, one iteration = one step boundary:
 *   1. drop aborted sequences (waiting or running) and free their KV slots;
 *   2. admit waiting sequences while KV slots are free: prefill each (one submit per prompt),
 *      which samples its first token;
 *   3. ONE `decode` over every running sequence (each at its own position, with its own
 *      sampling row and uniform draw): this is continuous batching; sequences join after their
 *      prefill and leave the moment they finish, without waiting for the rest of the batch.
 *
 * Sampling matches CpuReferenceEngine: one draw from the sequence's own `uniformStream(seed)` per
 * generated token (prefill's first, then one per decode), greedy or not, so a seeded request
 * yields the same tokens on both engines (up to f32 vs float64 rounding of near-tied logits or of
 * u landing on a CDF step) and the same tokens alone or batched.
 */
import { existsSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import type { SamplingParams } from "@tuneloom/kernels";
import type { ModelConfig } from "@tuneloom/model/config.ts";
import { GpuModel, type LoadGpuModelOptions } from "@tuneloom/model/gpu/model.ts";
import { KvCacheGenerator, type DecodeItem, uniformStream } from "@tuneloom/model/gpu/generator.ts";
import { readPeftAdapter, releaseAdapter, uploadAdapter } from "@tuneloom/model/gpu/adapter.ts";
import type { LayerLora } from "@tuneloom/model/gpu/lora.ts";
import { loadTokenizer } from "@tuneloom/model/tokenizer.ts";
import { AsyncQueue } from "./async-queue.ts";
import type { EngineCounters } from "./cpu-engine.ts";
import type { EngineChatTemplate, EngineTokenizer, GenerationRequest, InferenceEngine, TokenEvent } from "./engine.ts";
import { defaultStopTokenIds, engineTokenizer, resolveServingTemplate } from "./load.ts";

interface Sequence {
  request: GenerationRequest;
  sampling: SamplingParams;
  uniform: () => number;
  stopIds: Set<number>;
  signal: AbortSignal;
  events: AsyncQueue<TokenEvent>;
  /** KV slot while running; null while waiting. */
  slot: number | null;
  /** Last sampled token: the next decode's input. */
  last: number;
  /** Tokens in the KV cache = position of `last`. */
  cached: number;
  generated: number;
}

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

export class GpuEngine implements InferenceEngine {
  readonly modelId: string;
  readonly maxContext: number;
  readonly maxBatchSize: number;
  readonly tokenizer: EngineTokenizer;
  readonly chatTemplate: EngineChatTemplate;
  readonly counters: EngineCounters = { submitted: 0, finished: 0, aborted: 0, failed: 0, active: 0, steps: 0 };
  readonly model: GpuModel;
  private readonly lora: readonly LayerLora[] | undefined;
  private readonly generator: KvCacheGenerator;
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private loopDone: Promise<void> | null = null;
  private closed = false;

  constructor(options: GpuEngineOptions) {
    this.modelId = options.modelId;
    this.model = options.model;
    this.lora = options.lora;
    this.tokenizer = options.tokenizer;
    this.chatTemplate = options.chatTemplate;
    this.maxBatchSize = options.maxBatchSize ?? DEFAULT_GPU_MAX_BATCH;
    this.maxContext = options.maxContext ?? Math.min(options.model.cfg.maxPositionEmbeddings, DEFAULT_GPU_MAX_CONTEXT);
    if (!Number.isInteger(this.maxBatchSize) || this.maxBatchSize < 1) throw new RangeError(`maxBatchSize must be an integer ≥ 1, got ${this.maxBatchSize}`);
    if (!Number.isInteger(this.maxContext) || this.maxContext < 2) throw new RangeError(`maxContext must be an integer ≥ 2, got ${this.maxContext}`);
    this.generator = new KvCacheGenerator(options.model, { maxSlots: this.maxBatchSize, maxContext: this.maxContext, lora: options.lora });
  }

  /** KV slots not held by a sequence (tests: an aborted or finished sequence gives its slot back). */
  get slotsFree(): number {
    return this.generator.slotsFree;
  }

  submit(request: GenerationRequest, signal: AbortSignal): AsyncIterable<TokenEvent> {
    const events = new AsyncQueue<TokenEvent>();
    if (this.closed) {
      events.fail(new Error("engine is closed"));
      return events;
    }
    if (request.promptIds.length === 0) throw new RangeError("promptIds is empty");
    if (request.promptIds.length + request.maxTokens > this.maxContext)
      throw new RangeError(`prompt (${request.promptIds.length}) + maxTokens (${request.maxTokens}) exceeds maxContext ${this.maxContext}`);
    const seed = request.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]!;
    this.counters.submitted++;
    this.counters.active++;
    this.waiting.push({
      request,
      sampling: { temperature: request.temperature, topK: request.topK, topP: request.topP },
      uniform: uniformStream(seed),
      stopIds: new Set(request.stopTokenIds),
      signal,
      events,
      slot: null,
      last: -1,
      cached: 0,
      generated: 0,
    });
    if (!this.loopDone)
      this.loopDone = this.loop()
        .catch((err) => {
          // The loop itself broke (not one sequence): fail everyone rather than hang or crash the process.
          for (const seq of [...this.waiting, ...this.running]) this.leave(seq, "failed", err);
        })
        .finally(() => (this.loopDone = null));
    return events;
  }

  /** Ends every sequence as aborted, waits for the step in flight, frees the KV cache and the adapter. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const seq of [...this.waiting, ...this.running]) this.leave(seq, "aborted");
    await this.loopDone;
    this.generator.dispose();
    if (this.lora) releaseAdapter(this.model, this.lora);
  }

  private leave(seq: Sequence, how: "finished" | "aborted" | "failed", err?: unknown): void {
    const list = seq.slot === null ? this.waiting : this.running;
    const i = list.indexOf(seq);
    if (i < 0) return; // already gone (close() raced a step)
    list.splice(i, 1);
    if (seq.slot !== null) this.generator.releaseSlot(seq.slot);
    this.counters[how]++;
    this.counters.active--;
    if (how === "failed") seq.events.fail(err);
    else seq.events.end();
  }

  /** Emits the sampled token; ends the sequence on a stop token or at maxTokens. */
  private emit(seq: Sequence, row: { token: number; logprob: number; top?: { token: number; logprob: number }[] }): void {
    const { request } = seq;
    seq.generated++;
    seq.last = row.token;
    const finishReason = seq.stopIds.has(row.token) ? "stop" : seq.generated >= request.maxTokens ? "length" : null;
    seq.events.push({
      tokenId: row.token,
      logprob: request.logprobs ? row.logprob : null,
      topLogprobs:
        request.logprobs && request.topLogprobs > 0
          ? row.top!.slice(0, request.topLogprobs).map(({ token, logprob }) => ({ tokenId: token, logprob }))
          : null,
      finishReason,
    });
    if (finishReason) this.leave(seq, "finished");
  }

  private topN(seq: Sequence): number {
    return seq.request.logprobs ? seq.request.topLogprobs : 0;
  }

  private dropAborted(): void {
    for (const seq of [...this.waiting, ...this.running]) if (seq.signal.aborted) this.leave(seq, "aborted");
  }

  private async loop(): Promise<void> {
    while (!this.closed && (this.waiting.length > 0 || this.running.length > 0)) {
      this.dropAborted();
      // Admit: prefill newcomers one at a time while slots are free.
      while (!this.closed && this.waiting.length > 0 && this.generator.slotsFree > 0) {
        const seq = this.waiting.shift()!;
        seq.slot = this.generator.acquireSlot()!;
        this.running.push(seq);
        try {
          const row = await this.generator.prefill(seq.slot, seq.request.promptIds, seq.sampling, seq.uniform(), this.topN(seq));
          seq.cached = seq.request.promptIds.length;
          if (seq.signal.aborted) this.leave(seq, "aborted");
          else this.emit(seq, row);
        } catch (err) {
          this.leave(seq, "failed", err);
        }
        this.dropAborted();
      }
      // Step: one decode over every running sequence.
      const batch = this.running.slice();
      if (batch.length === 0 || this.closed) continue;
      this.counters.steps++;
      const items: DecodeItem[] = batch.map((seq) => ({
        slot: seq.slot!, token: seq.last, position: seq.cached, sampling: seq.sampling, u: seq.uniform(),
      }));
      let rows;
      try {
        rows = await this.generator.decode(items, Math.max(0, ...batch.map((s) => this.topN(s))));
      } catch (err) {
        for (const seq of batch) this.leave(seq, "failed", err);
        continue;
      }
      batch.forEach((seq, b) => {
        if (!this.running.includes(seq)) return; // closed during the step
        seq.cached++;
        if (seq.signal.aborted) this.leave(seq, "aborted");
        else this.emit(seq, rows[b]!);
      });
    }
  }
}

export interface LoadGpuEngineOptions {
  /** The id clients send as `model`; default the adapter's directory name, else the model's. */
  modelId?: string;
  maxBatchSize?: number;
  maxContext?: number;
  weightDtype?: LoadGpuModelOptions["weightDtype"];
}

/** The adapter as applied on the GPU (kept separate from the weights, not merged). */
export interface GpuAdapterInfo {
  rank: number;
  alpha: number;
  rslora: boolean;
  scale: number;
  /** `model.layers.0.self_attn.q_proj`, ... in layer order. */
  modules: string[];
}

export interface LoadedGpuModel {
  engine: GpuEngine;
  config: ModelConfig;
  adapter: GpuAdapterInfo | null;
}

/**
 * `--model DIR [--adapter DIR]` on the GPU: same template and tokenizer resolution and stop ids as
 * loadCpuReferenceEngine; the adapter is uploaded as LoRA modules (the forward adds s·B·A·x).
 */
export async function loadGpuEngine(modelDir: string, adapterDir?: string, opts: LoadGpuEngineOptions = {}): Promise<LoadedGpuModel> {
  const chatTemplate = resolveServingTemplate(modelDir, adapterDir);
  const tokenizerDir = adapterDir && existsSync(join(adapterDir, "tokenizer.json")) ? adapterDir : modelDir;
  const tokenizer = loadTokenizer(tokenizerDir);
  const model = await GpuModel.load(modelDir, { weightDtype: opts.weightDtype });
  const config = model.cfg;
  let lora: LayerLora[] | undefined;
  let adapter: GpuAdapterInfo | null = null;
  if (adapterDir) {
    const peft = readPeftAdapter(adapterDir, config);
    lora = uploadAdapter(model, peft);
    adapter = { rank: peft.rank, alpha: peft.alpha, rslora: peft.rslora, scale: peft.scale, modules: peft.modules.map((m) => m.base) };
  }
  const engine = new GpuEngine({
    modelId: opts.modelId ?? basename(resolve(adapterDir ?? modelDir)),
    model,
    lora,
    tokenizer: engineTokenizer(tokenizer, defaultStopTokenIds(modelDir, config, tokenizer)),
    chatTemplate,
    maxBatchSize: opts.maxBatchSize,
    maxContext: opts.maxContext,
  });
  return { engine, config, adapter };
}
