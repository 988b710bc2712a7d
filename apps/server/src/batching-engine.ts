/**
 * BatchingEngine: the generation loop every InferenceEngine shares; an engine supplies only how
 * to run a prompt (`prefill`), how to advance a batch by one token (`decode`), and what a running
 * sequence holds (`admit`/`release`, e.g. a KV slot).
 *
 * One loop iteration = one step boundary:
 *   1. drop aborted sequences (waiting or running) and release what they hold;
 *   2. admit waiting sequences while fewer than maxBatchSize run and `admit` finds room, then
 *      prefill them, which samples each one's first token: all of this round's newcomers in ONE
 *      `prefillMany` where the engine has it (else one `prefill` each); those that arrive during
 *      it are admitted next round;
 *   3. ONE `decode` over every running sequence: continuous batching, sequences join after their
 *      prefill and leave the moment they finish, without waiting for the rest of the batch.
 *
 * Each sampled token is an event; it ends the sequence with finishReason "stop" when it is one
 * of the request's stop ids, else "length" at maxTokens. Sampling is reproducible per sequence:
 * one draw from its own `uniformStream(seed)` per generated token (greedy or not), so a seeded
 * request yields the same tokens alone or batched, on any engine that samples as the kernels do.
 * Penalties and min_tokens depend on what the sequence has seen: `penalties` is that state, for
 * the next token, which the engine applies to the logits before sampling (null: nothing to do).
 */
import { type LogitPenalties, penaltiesActive, type SampledRow, type SamplingParams } from "@tuneloom/kernels";
import { uniformStream } from "@tuneloom/model/gpu/generator.ts";
import { AsyncQueue } from "./async-queue.ts";
import type { EngineChatTemplate, EngineTokenizer, GenerationRequest, InferenceEngine, TokenEvent } from "./engine.ts";

/** Counts for tests and logs: how sequences left the engine. */
export interface EngineCounters {
  submitted: number;
  finished: number;
  aborted: number;
  failed: number;
  active: number;
  /** Batched decode steps. */
  steps: number;
}

/** A running sequence as the engine's prefill/decode see it. */
export interface LiveSequence<S> {
  readonly request: GenerationRequest;
  readonly sampling: SamplingParams;
  /** Most likely alternatives to report per token (0 unless logprobs were asked for). */
  readonly topN: number;
  /** Tokens generated so far; the last one is the next decode's input. */
  readonly generated: readonly number[];
  /** Penalties and masks for the next token's logits; null when they would change nothing. */
  readonly penalties: LogitPenalties | null;
  /** What `admit` reserved for it. */
  readonly state: S;
}

export interface BatchingEngineOptions {
  modelId: string;
  tokenizer: EngineTokenizer;
  chatTemplate: EngineChatTemplate;
  maxBatchSize: number;
  maxContext: number;
}

class Sequence<S> implements LiveSequence<S> {
  readonly generated: number[] = [];
  readonly topN: number;
  readonly sampling: SamplingParams;
  readonly draw: () => number;
  readonly stopIds: Set<number>;
  readonly events = new AsyncQueue<TokenEvent>();
  /** Token → times generated, for presence/frequency penalties. */
  private readonly counts = new Map<number, number>();
  private readonly promptTokens: ReadonlySet<number>;
  /** Set on admission; a sequence without it is waiting. */
  admitted: { state: S } | null = null;
  constructor(readonly request: GenerationRequest, readonly signal: AbortSignal) {
    this.topN = request.logprobs ? request.topLogprobs : 0;
    this.sampling = { temperature: request.temperature, topK: request.topK, topP: request.topP, minP: request.minP ?? 0 };
    this.draw = uniformStream(request.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]!);
    this.stopIds = new Set(request.stopTokenIds);
    this.promptTokens = (request.repetitionPenalty ?? 1) !== 1 ? new Set(request.promptIds) : new Set();
  }
  get penalties(): LogitPenalties | null {
    const r = this.request;
    const p: LogitPenalties = {
      repetition: r.repetitionPenalty ?? 1,
      presence: r.presencePenalty ?? 0,
      frequency: r.frequencyPenalty ?? 0,
      promptTokens: this.promptTokens,
      generated: this.counts,
      masked: this.generated.length < (r.minTokens ?? 0) ? r.stopTokenIds : [],
    };
    return penaltiesActive(p) ? p : null;
  }
  record(token: number): void {
    this.generated.push(token);
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
  }
  get state(): S {
    if (!this.admitted) throw new Error("sequence is not running");
    return this.admitted.state;
  }
}

export abstract class BatchingEngine<S> implements InferenceEngine {
  readonly modelId: string;
  readonly maxContext: number;
  readonly maxBatchSize: number;
  readonly tokenizer: EngineTokenizer;
  readonly chatTemplate: EngineChatTemplate;
  readonly counters: EngineCounters = { submitted: 0, finished: 0, aborted: 0, failed: 0, active: 0, steps: 0 };
  private readonly waiting: Sequence<S>[] = [];
  private readonly running: Sequence<S>[] = [];
  private loopDone: Promise<void> | null = null;
  private closed = false;

  constructor(options: BatchingEngineOptions) {
    this.modelId = options.modelId;
    this.tokenizer = options.tokenizer;
    this.chatTemplate = options.chatTemplate;
    this.maxBatchSize = options.maxBatchSize;
    this.maxContext = options.maxContext;
    if (!Number.isInteger(this.maxBatchSize) || this.maxBatchSize < 1) throw new RangeError(`maxBatchSize must be an integer ≥ 1, got ${this.maxBatchSize}`);
    if (!Number.isInteger(this.maxContext) || this.maxContext < 2) throw new RangeError(`maxContext must be an integer ≥ 2, got ${this.maxContext}`);
  }

  /** Reserve what a sequence needs to run (a KV slot, its token list); null: nothing free now, it waits. */
  protected abstract admit(request: GenerationRequest): S | null;
  /** Give back what `admit` reserved; the sequence has left (finished, aborted or failed). */
  protected abstract release(seq: LiveSequence<S>): void;
  /** Run the prompt and sample the first token with the uniform draw `u`. A throw fails this sequence. */
  protected abstract prefill(seq: LiveSequence<S>, u: number): Promise<SampledRow>;
  /**
   * Optional: the first token of every sequence in `batch` (row i sampled with draw u[i]), all
   * prompts run together; for sequences admitted in the same round (two or more). A throw falls
   * back to one `prefill` per sequence, so that only the sequence that causes it fails.
   */
  protected prefillMany?(batch: readonly LiveSequence<S>[], u: readonly number[]): Promise<SampledRow[]>;
  /**
   * The next token of every sequence in `batch` (row b sampled with draw u[b]; `top` holding at
   * least each sequence's topN alternatives). A throw fails the whole batch.
   */
  protected abstract decode(batch: readonly LiveSequence<S>[], u: readonly number[]): Promise<SampledRow[]>;
  /** Free the engine's own resources; called once by close(), after the loop has stopped. */
  protected dispose(): void {}

  submit(request: GenerationRequest, signal: AbortSignal): AsyncIterable<TokenEvent> {
    if (this.closed) {
      const events = new AsyncQueue<TokenEvent>();
      events.fail(new Error("engine is closed"));
      return events;
    }
    if (request.promptIds.length === 0) throw new RangeError("promptIds is empty");
    if (request.promptIds.length + request.maxTokens > this.maxContext)
      throw new RangeError(`prompt (${request.promptIds.length}) + maxTokens (${request.maxTokens}) exceeds maxContext ${this.maxContext}`);
    const seq = new Sequence<S>(request, signal);
    this.counters.submitted++;
    this.counters.active++;
    this.waiting.push(seq);
    if (!this.loopDone)
      this.loopDone = this.loop()
        .catch((err) => {
          // The loop itself broke (not one sequence): fail everyone rather than hang or crash the process.
          for (const s of [...this.waiting, ...this.running]) this.leave(s, "failed", err);
        })
        .finally(() => (this.loopDone = null));
    return seq.events;
  }

  /** Ends every sequence as aborted, waits for the step in flight, then disposes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const seq of [...this.waiting, ...this.running]) this.leave(seq, "aborted");
    await this.loopDone;
    this.dispose();
  }

  private leave(seq: Sequence<S>, how: "finished" | "aborted" | "failed", err?: unknown): void {
    const list = seq.admitted ? this.running : this.waiting;
    const i = list.indexOf(seq);
    if (i < 0) return; // already gone (close() raced a step)
    list.splice(i, 1);
    if (seq.admitted) this.release(seq);
    this.counters[how]++;
    this.counters.active--;
    if (how === "failed") seq.events.fail(err);
    else seq.events.end();
  }

  /** Emits the sampled token, or drops the sequence if it was aborted meanwhile; ends it on a stop token or at maxTokens. */
  private emit(seq: Sequence<S>, row: SampledRow): void {
    if (!this.running.includes(seq)) return; // closed during the step
    if (seq.signal.aborted) return this.leave(seq, "aborted");
    const { request } = seq;
    seq.record(row.token);
    const finishReason = seq.stopIds.has(row.token) ? "stop" : seq.generated.length >= request.maxTokens ? "length" : null;
    seq.events.push({
      tokenId: row.token,
      logprob: request.logprobs ? row.logprob : null,
      topLogprobs: seq.topN > 0 ? row.top!.slice(0, seq.topN).map(({ token, logprob }) => ({ tokenId: token, logprob })) : null,
      finishReason,
    });
    if (finishReason) this.leave(seq, "finished");
  }

  private dropAborted(): void {
    for (const seq of [...this.waiting, ...this.running]) if (seq.signal.aborted) this.leave(seq, "aborted");
  }

  /** Prefills sequences just admitted and emits each one's first token (or fails it). */
  private async prefillAdmitted(batch: readonly Sequence<S>[]): Promise<void> {
    const u = batch.map((seq) => seq.draw());
    if (batch.length > 1 && this.prefillMany) {
      let rows: SampledRow[] | null = null;
      try {
        rows = await this.prefillMany(batch, u);
      } catch {
        // One at a time below: the error fails only the sequence that causes it.
      }
      if (rows) {
        batch.forEach((seq, i) => this.emit(seq, rows[i]!));
        return;
      }
    }
    for (const [i, seq] of batch.entries()) {
      if (!this.running.includes(seq)) continue; // closed, or aborted and dropped, meanwhile
      try {
        this.emit(seq, await this.prefill(seq, u[i]!));
      } catch (err) {
        this.leave(seq, "failed", err);
      }
      this.dropAborted();
    }
  }

  private async loop(): Promise<void> {
    // Requests submitted in the same turn of the event loop are admitted, and prefilled, together.
    await new Promise<void>((resolve) => setImmediate(resolve));
    while (!this.closed && (this.waiting.length > 0 || this.running.length > 0)) {
      this.dropAborted();
      // Admit every newcomer there is room for and prefill them together. Those that arrive
      // meanwhile wait for the next round, one decode step later: a prefill holds back the
      // running sequences' next tokens, so one per step.
      const admitted: Sequence<S>[] = [];
      while (!this.closed && this.waiting.length > 0 && this.running.length < this.maxBatchSize) {
        const seq = this.waiting[0]!;
        const state = this.admit(seq.request);
        if (state === null) break;
        this.waiting.shift();
        seq.admitted = { state };
        this.running.push(seq);
        admitted.push(seq);
      }
      if (admitted.length > 0) {
        await this.prefillAdmitted(admitted);
        this.dropAborted();
      }
      // Step: one decode over every running sequence.
      const batch = this.running.slice();
      if (batch.length === 0 || this.closed) continue;
      this.counters.steps++;
      let rows: SampledRow[];
      try {
        rows = await this.decode(batch, batch.map((seq) => seq.draw()));
      } catch (err) {
        for (const seq of batch) this.leave(seq, "failed", err);
        continue;
      }
      batch.forEach((seq, b) => this.emit(seq, rows[b]!));
    }
  }
}
