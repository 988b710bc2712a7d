/**
 * The sampling fields both generation endpoints share → a GenerationRequest, checked once here:
 * the context must hold prompt + max_tokens, stop ids must be tokens, min_tokens ≤ max_tokens,
 * and what cannot be honoured (n > 1, logit_bias) is refused with the reason. Penalties and
 * min_p are carried to the engine, which applies them to the logits before sampling
 * (@tuneloom/kernels' logit-penalties and sampling).
 */
import type { GenerationRequest, InferenceEngine, ServedModel } from "./engine.ts";
import { badRequest } from "./errors.ts";
import type { ChatCompletionRequest } from "./schemas.ts";

export type SamplingBody = Pick<
  ChatCompletionRequest,
  | "model" | "temperature" | "top_p" | "top_k" | "seed" | "stop" | "stop_token_ids" | "ignore_eos" | "n" | "presence_penalty" | "frequency_penalty"
  | "logit_bias" | "repetition_penalty" | "min_p" | "min_tokens"
>;

function refuseUnsupported(body: SamplingBody): void {
  if (body.n != null && body.n !== 1)
    throw badRequest(`n=${body.n} is not supported: this server returns exactly one choice per request (send ${body.n} requests, with different seeds, instead)`, "n", "unsupported_value");
  if (body.logit_bias && Object.keys(body.logit_bias).length > 0) throw badRequest("logit_bias is not supported", "logit_bias", "unsupported_value");
}

export function stopStrings(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return (typeof stop === "string" ? [stop] : stop).filter((s) => s.length > 0);
}

/**
 * Sampling fields → GenerationRequest, with the context check: prompt + max_tokens must fit.
 * `maxTokens` null means "as many as fit" (chat's default, as vLLM).
 */
export function generationRequest(
  engine: Pick<InferenceEngine, "maxContext">,
  served: Pick<ServedModel, "tokenizer" | "adapter">,
  body: SamplingBody,
  promptIds: number[],
  maxTokens: { value: number | null; param: string },
  promptParam: string,
  logprobs: { enabled: boolean; top: number },
): GenerationRequest {
  refuseUnsupported(body);
  const limit = engine.maxContext;
  if (promptIds.length === 0) throw badRequest("the prompt is empty; send at least one token", promptParam, "invalid_value");
  if (promptIds.length >= limit && maxTokens.value === null)
    throw badRequest(`This model's maximum context length is ${limit} tokens, but the prompt has ${promptIds.length} tokens, leaving no room to generate. Shorten the prompt.`, promptParam, "context_length_exceeded");
  const max = maxTokens.value ?? limit - promptIds.length;
  if (promptIds.length + max > limit)
    throw badRequest(
      `This model's maximum context length is ${limit} tokens. However, you requested ${promptIds.length + max} tokens (${promptIds.length} in the prompt, ${max} for the completion). Reduce the length of the prompt or ${maxTokens.param}.`,
      maxTokens.param,
      "context_length_exceeded",
    );
  if (body.min_tokens != null && body.min_tokens > max)
    throw badRequest(`min_tokens (${body.min_tokens}) is more than ${maxTokens.param} (${max})`, "min_tokens", "invalid_value");
  const vocab = served.tokenizer.vocabSize;
  const extraStops = body.stop_token_ids ?? [];
  const badStop = extraStops.find((id) => id >= vocab);
  if (badStop !== undefined) throw badRequest(`stop_token_ids: token id ${badStop} is outside the vocabulary (0..${vocab - 1})`, "stop_token_ids", "invalid_value");
  const stopTokenIds = [...new Set([...(body.ignore_eos ? [] : served.tokenizer.eosTokenIds), ...extraStops])];
  return {
    promptIds,
    maxTokens: max,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    topK: body.top_k == null || body.top_k < 0 ? 0 : body.top_k,
    seed: body.seed ?? null,
    stopTokenIds,
    repetitionPenalty: body.repetition_penalty ?? 1,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    minP: body.min_p ?? 0,
    minTokens: body.min_tokens ?? 0,
    adapter: served.adapter,
    logprobs: logprobs.enabled,
    topLogprobs: logprobs.top,
  };
}
