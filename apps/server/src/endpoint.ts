/**
 * What the generation endpoints share: their context, the model check, ids and timestamps, the
 * usage block, and draining a generation for a non-streamed answer.
 */
import type { EngineTokenizer, InferenceEngine } from "./engine.ts";
import { ApiError } from "./errors.ts";
import type { Generation, GenerationContext, GenerationDelta, GeneratedToken } from "./generate.ts";
import type { StreamContext } from "./sse.ts";

export interface EndpointContext extends GenerationContext, StreamContext {
  engine: InferenceEngine;
  systemFingerprint: string;
  /** Aborts when the client goes away or a shutdown ends in-flight work. */
  signal: AbortSignal;
  /** Why `signal` aborted: ClientGone, or the shutdown's 503. */
  abortReason: () => Error;
}

export function checkModel(engine: InferenceEngine, model: string | undefined): void {
  if (model !== undefined && model !== engine.modelId)
    throw new ApiError(404, `The model '${model}' does not exist; this server serves '${engine.modelId}' (see GET /v1/models)`, "invalid_request_error", "model", "model_not_found");
}

export const newId = (prefix: string) => `${prefix}-${crypto.randomUUID().replace(/-/g, "")}`;
export const nowSeconds = () => Math.floor(Date.now() / 1000);

export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

export function usageOf(u: Usage) {
  return { prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens };
}

export function tokenText(tokenizer: EngineTokenizer, id: number): string {
  return tokenizer.decode([id]);
}

/** A whole generation: its text, tokens and finish reason (for a non-streamed answer). */
export async function collect(ctx: EndpointContext, generation: Generation): Promise<{ text: string; tokens: GeneratedToken[]; finishReason: "stop" | "length" }> {
  let text = "";
  const tokens: GeneratedToken[] = [];
  let finishReason: GenerationDelta["finishReason"] = null;
  for await (const delta of generation.deltas) {
    text += delta.text;
    tokens.push(...delta.tokens);
    finishReason = delta.finishReason ?? finishReason;
  }
  if (ctx.signal.aborted) throw ctx.abortReason();
  return { text, tokens, finishReason: finishReason ?? "stop" };
}
