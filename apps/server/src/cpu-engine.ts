/**
 * CpuReferenceEngine: the InferenceEngine over @tuneloom/model's float64 reference forward.
 * Exact and slow (a full forward over the whole sequence per generated token, no KV cache), so
 * it serves tiny models in tests and is the oracle the GPU engine's output is compared with.
 *
 * The loop (admission, continuous batching, stops, aborts) is BatchingEngine's; a decode step
 * here runs the sequences one after another, yielding to the event loop between them so the
 * HTTP server stays responsive.
 */
import { cpuReferenceForward, type ReferenceWeights } from "@tuneloom/model/cpu-reference.ts";
import type { ModelConfig } from "@tuneloom/model/config.ts";
// The same sampling semantics (temperature → top-k → top-p, inverse CDF in index order) as the
// GPU kernel, so a seeded request samples the same tokens on both engines.
import { logSoftmaxRef, type SampledRow, sampleRef, topLogprobsRef } from "@tuneloom/kernels/sampling.ts";
import { applyLogitPenaltiesRef } from "@tuneloom/kernels/logit-penalties.ts";
import { BatchingEngine, type LiveSequence } from "./batching-engine.ts";
import type { EngineChatTemplate, EngineTokenizer, GenerationRequest } from "./engine.ts";

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

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Per sequence: the prompt plus the tokens generated so far, the next forward's input. */
type Ids = number[];

export class CpuReferenceEngine extends BatchingEngine<Ids> {
  private readonly config: ModelConfig;
  private readonly weights: ReferenceWeights;
  /** Logit rows that are tokens: a checkpoint's vocab_size may pad past the tokenizer's. */
  private readonly validVocab: number;

  constructor(options: CpuReferenceEngineOptions) {
    super({
      ...options,
      maxBatchSize: options.maxBatchSize ?? 64,
      maxContext: options.maxContext ?? options.config.maxPositionEmbeddings,
    });
    this.config = options.config;
    this.weights = options.weights;
    this.validVocab = Math.min(options.config.vocabSize, options.tokenizer.vocabSize);
  }

  protected override admit(request: GenerationRequest): Ids {
    return [...request.promptIds];
  }

  protected override release(): void {}

  protected override prefill(seq: LiveSequence<Ids>, u: number): Promise<SampledRow> {
    return this.next(seq, u);
  }

  protected override async decode(batch: readonly LiveSequence<Ids>[], u: readonly number[]): Promise<SampledRow[]> {
    const rows: SampledRow[] = [];
    for (const [b, seq] of batch.entries()) rows.push(await this.next(seq, u[b]!));
    return rows;
  }

  /** Forward over the whole sequence, sample from the last row, append the token. */
  private async next(seq: LiveSequence<Ids>, u: number): Promise<SampledRow> {
    const ids = seq.state;
    const V = this.config.vocabSize;
    const all = cpuReferenceForward(this.config, this.weights, ids); // (T, V)
    // Rows a checkpoint pads its vocabulary with are not tokens: never sample or report them.
    const row = all.subarray((ids.length - 1) * V, (ids.length - 1) * V + this.validVocab); // (validVocab)
    // The token is drawn from the penalised logits; logprobs are of the raw ones (as the GPU engine, vLLM's default).
    const penalties = seq.penalties;
    const drawn = penalties ? row.slice() : row;
    if (penalties) applyLogitPenaltiesRef(drawn, penalties);
    const { token } = sampleRef(drawn, seq.sampling, u);
    const logprob = logSoftmaxRef(row)[token]!;
    ids.push(token);
    await yieldToEventLoop();
    return seq.topN > 0 ? { token, logprob, top: topLogprobsRef(row, seq.topN) } : { token, logprob };
  }
}
