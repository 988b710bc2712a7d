/**
 * One request's generation, shared by both endpoints and by stream and non-stream: admission
 * through the scheduler, token events → text through the incremental detokenizer, stop strings
 * on that text, metrics. Yields text deltas with the tokens that produced them; the last delta
 * carries finish_reason. A stop string or a client disconnect aborts the sequence in the engine.
 * Special tokens are left out of the text unless `skipSpecialTokens: false` (a tool-call parser
 * whose marker is one, e.g. Mistral's [TOOL_CALLS]).
 */
import type { EngineTokenizer, GenerationRequest, TokenEvent, TokenLogprob } from "./engine.ts";
import type { ServerMetrics } from "./metrics.ts";
import type { RequestScheduler } from "./scheduler.ts";
import { StopStringMatcher } from "./stop-strings.ts";

export interface GeneratedToken {
  tokenId: number;
  logprob: number | null;
  topLogprobs: TokenLogprob[] | null;
}

export interface GenerationDelta {
  text: string;
  tokens: GeneratedToken[];
  finishReason: "stop" | "length" | null;
}

export interface GenerationContext {
  scheduler: RequestScheduler;
  tokenizer: EngineTokenizer;
  metrics: ServerMetrics;
  /** performance.now() when the request arrived, for latency histograms. */
  arrivedAt: number;
  endpoint: string;
}

export interface Generation {
  /** Deltas; iterate to the end (or abort the client signal). */
  deltas: AsyncIterable<GenerationDelta>;
  /** Counts, final once `deltas` is exhausted. */
  usage: { promptTokens: number; completionTokens: number };
  /** Give up on it (client gone before iterating): the engine and the scheduler let it go. */
  cancel(): void;
}

/**
 * Admit the request now (throws SchedulerRejection for 429/503 before any response is sent)
 * and return the lazily-run generation.
 */
export function startGeneration(
  ctx: GenerationContext,
  request: GenerationRequest,
  stopStrings: readonly string[],
  clientSignal: AbortSignal,
  options: { skipSpecialTokens?: boolean } = {},
): Generation {
  const stopper = new AbortController();
  const signal = AbortSignal.any([clientSignal, stopper.signal]);
  const events = ctx.scheduler.submit(request, signal);
  const usage = { promptTokens: request.promptIds.length, completionTokens: 0 };
  ctx.metrics.promptTokens.inc({}, request.promptIds.length);
  const stopIds = new Set(request.stopTokenIds);

  async function* run(): AsyncGenerator<GenerationDelta> {
    const detok = ctx.tokenizer.createDetokenizer({ skipSpecialTokens: options.skipSpecialTokens ?? true, contextIds: request.promptIds });
    const matcher = new StopStringMatcher(stopStrings);
    let first = true;
    try {
      for await (const ev of events as AsyncIterable<TokenEvent>) {
        if (first) {
          first = false;
          ctx.metrics.timeToFirstToken.observe((performance.now() - ctx.arrivedAt) / 1000, { endpoint: ctx.endpoint });
        }
        usage.completionTokens++;
        ctx.metrics.generatedTokens.inc();
        // The stop token ends the turn; it is not part of the text (vLLM's default).
        let text = ev.finishReason === "stop" && stopIds.has(ev.tokenId) ? "" : detok.push(ev.tokenId);
        if (ev.finishReason) text += detok.flush();
        const released = matcher.push(text);
        const token: GeneratedToken = { tokenId: ev.tokenId, logprob: ev.logprob, topLogprobs: ev.topLogprobs };
        if (released.stopped) {
          stopper.abort(); // the engine drops the sequence at its next step
          yield { text: released.text, tokens: [token], finishReason: "stop" };
          return;
        }
        if (ev.finishReason) {
          yield { text: released.text + matcher.flush(), tokens: [token], finishReason: ev.finishReason };
          return;
        }
        yield { text: released.text, tokens: [token], finishReason: null };
      }
    } finally {
      if (!clientSignal.aborted) ctx.metrics.requestLatency.observe((performance.now() - ctx.arrivedAt) / 1000, { endpoint: ctx.endpoint });
      // Whatever ended the iteration early (consumer gone, error), the engine must stop too.
      stopper.abort();
    }
  }
  return { deltas: run(), usage, cancel: () => stopper.abort() };
}
