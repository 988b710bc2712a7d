/**
 * CpuReferenceEngine: the InferenceEngine over @tuneloom/model's float64 reference forward.
 * Exact and slow (a full forward over the whole sequence per generated token, no KV cache), so
 * it serves tiny models in tests and is the oracle the GPU engine's output is compared with.
 *
 * Its loop has the shape of continuous batching: every step takes one token for each active
 * sequence; sequences join the moment they are submitted and leave the moment they finish or
 * their signal aborts, without waiting for the rest of the batch. The loop yields to the event
 * loop between sequences so the HTTP server stays responsive.
 */
import { cpuReferenceForward, type ReferenceWeights } from "@tuneloom/model/cpu-reference.ts";
import type { ModelConfig } from "@tuneloom/model/config.ts";
import { AsyncQueue } from "./async-queue.ts";
import type { EngineChatTemplate, EngineTokenizer, GenerationRequest, InferenceEngine, TokenEvent } from "./engine.ts";
// The same sampling semantics (temperature → top-k → top-p, inverse CDF in index order) and the same
// seeded uniform stream as the GPU generator, so a seeded request samples the same tokens on both.
import { sampleRef, topLogprobsRef } from "@tuneloom/kernels/sampling.ts";
import { uniformStream } from "@tuneloom/model/gpu/generator.ts";

interface Sequence {
  request: GenerationRequest;
  ids: number[];
  generated: number;
  uniform: () => number;
  stopIds: Set<number>;
  signal: AbortSignal;
  events: AsyncQueue<TokenEvent>;
}

export interface CpuReferenceEngineOptions {
  modelId: string;
  config: ModelConfig;
  weights: ReferenceWeights;
  tokenizer: EngineTokenizer;
  chatTemplate: EngineChatTemplate;
  /** Most sequences stepped together; default 64. */
  maxBatchSize?: number;
  /** Context limit; default config.maxPositionEmbeddings. */
  maxContext?: number;
}

/** Counts for tests and logs: how sequences left the engine. */
export interface EngineCounters {
  submitted: number;
  finished: number;
  aborted: number;
  failed: number;
  active: number;
  steps: number;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export class CpuReferenceEngine implements InferenceEngine {
  readonly modelId: string;
  readonly maxContext: number;
  readonly maxBatchSize: number;
  readonly tokenizer: EngineTokenizer;
  readonly chatTemplate: EngineChatTemplate;
  readonly counters: EngineCounters = { submitted: 0, finished: 0, aborted: 0, failed: 0, active: 0, steps: 0 };
  private readonly config: ModelConfig;
  private readonly weights: ReferenceWeights;
  private readonly active: Sequence[] = [];
  private looping = false;
  private closed = false;

  constructor(options: CpuReferenceEngineOptions) {
    this.modelId = options.modelId;
    this.config = options.config;
    this.weights = options.weights;
    this.tokenizer = options.tokenizer;
    this.chatTemplate = options.chatTemplate;
    this.maxBatchSize = options.maxBatchSize ?? 64;
    this.maxContext = options.maxContext ?? options.config.maxPositionEmbeddings;
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
    this.active.push({
      request,
      ids: [...request.promptIds],
      generated: 0,
      uniform: uniformStream(seed),
      stopIds: new Set(request.stopTokenIds),
      signal,
      events,
    });
    if (!this.looping)
      this.loop().catch((err) => {
        // The loop itself broke (not one sequence): fail everyone rather than hang or crash the process.
        for (const seq of this.active.slice()) this.leave(seq, "failed", err);
      });
    return events;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const seq of this.active.splice(0)) this.leave(seq, "aborted");
  }

  private leave(seq: Sequence, how: "finished" | "aborted" | "failed", err?: unknown): void {
    const i = this.active.indexOf(seq);
    if (i >= 0) this.active.splice(i, 1);
    this.counters[how]++;
    this.counters.active--;
    if (how === "failed") seq.events.fail(err);
    else seq.events.end();
  }

  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.active.length > 0) {
        this.counters.steps++;
        // One step: a token for every sequence active now. Newcomers join the next step.
        for (const seq of this.active.slice(0, this.maxBatchSize)) {
          if (seq.signal.aborted) {
            this.leave(seq, "aborted");
            continue;
          }
          try {
            this.stepSequence(seq);
          } catch (err) {
            this.leave(seq, "failed", err);
          }
          await yieldToEventLoop();
        }
        // Aborts that happened during the step are seen before the next one starts.
        for (const seq of this.active.slice()) if (seq.signal.aborted) this.leave(seq, "aborted");
      }
    } finally {
      this.looping = false;
    }
  }

  private stepSequence(seq: Sequence): void {
    const { request } = seq;
    const V = this.config.vocabSize;
    const all = cpuReferenceForward(this.config, this.weights, seq.ids); // (T, V)
    const logits = all.subarray((seq.ids.length - 1) * V, seq.ids.length * V); // (V)
    // Rows a checkpoint pads its vocabulary with are not tokens: never sample them.
    const row = logits.subarray(0, Math.min(V, this.tokenizer.vocabSize));
    // One draw per token, greedy or not, as the GPU generator does, so streams stay aligned.
    const u = seq.uniform();
    const { token: tokenId, logprob } = sampleRef(row, { temperature: request.temperature, topK: request.topK, topP: request.topP }, u);
    seq.ids.push(tokenId);
    seq.generated++;
    const finishReason = seq.stopIds.has(tokenId) ? "stop" : seq.generated >= request.maxTokens ? "length" : null;
    seq.events.push({
      tokenId,
      logprob: request.logprobs ? logprob : null,
      topLogprobs:
        request.logprobs && request.topLogprobs > 0
          ? topLogprobsRef(row, request.topLogprobs).map(({ token, logprob }) => ({ tokenId: token, logprob }))
          : null,
      finishReason,
    });
    if (finishReason) this.leave(seq, "finished");
  }
}
