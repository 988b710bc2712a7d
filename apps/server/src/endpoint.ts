/**
 * What the generation endpoints share: their context, the model check, ids and timestamps, the
 * usage block, and draining a generation for a non-streamed answer.
 */
import type { EngineTokenizer, InferenceEngine, ServedModel } from "./engine.ts";
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

/** The models an engine serves, the default first (just its own when it has no `models`). */
export function servedModels(engine: InferenceEngine): readonly ServedModel[] {
  return engine.models?.() ?? [{ id: engine.modelId, parent: null, root: engine.modelId, adapter: null, tokenizer: engine.tokenizer, chatTemplate: engine.chatTemplate }];
}

/**
 * The served model a request's `model` names (absent: the default), or a 404 that lists the
 * names this server serves.
 */
export function resolveModel(engine: InferenceEngine, model: string | undefined): ServedModel {
  const models = servedModels(engine);
  const found = model === undefined ? models[0] : models.find((m) => m.id === model);
  if (found) return found;
  const names = models.map((m) => `'${m.id}'`).join(", ");
  throw new ApiError(404, `The model '${model}' does not exist; this server serves ${names} (see GET /v1/models)`, "invalid_request_error", "model", "model_not_found");
}

/** resolveModel for routes that only check the name. */
export function checkModel(engine: InferenceEngine, model: string | undefined): void {
  resolveModel(engine, model);
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
