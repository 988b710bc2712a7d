/**
 * POST /v1/chat/completions and POST /v1/completions in OpenAI's shapes, stream and not.
 * Both turn the request into token ids plus a GenerationRequest, run it through
 * `startGeneration`, and only differ in how deltas are wrapped.
 */
import type { EngineTokenizer, GenerationRequest, InferenceEngine, TokenLogprob } from "./engine.ts";
import { ApiError, badRequest } from "./errors.ts";
import { startGeneration, type GenerationContext, type GenerationDelta, type GeneratedToken } from "./generate.ts";
import { renderChatPrompt } from "./prompt.ts";
import type { ChatCompletionRequest, CompletionRequest } from "./schemas.ts";
import { sseResponse, type StreamContext } from "./sse.ts";

export interface EndpointContext extends GenerationContext, StreamContext {
  engine: InferenceEngine;
  systemFingerprint: string;
  /** Aborts when the client goes away or a shutdown ends in-flight work. */
  signal: AbortSignal;
  /** Why `signal` aborted: ClientGone, or the shutdown's 503. */
  abortReason: () => Error;
}

type SamplingBody = Pick<
  ChatCompletionRequest,
  "model" | "temperature" | "top_p" | "top_k" | "seed" | "stop" | "stop_token_ids" | "ignore_eos" | "n" | "presence_penalty" | "frequency_penalty" | "logit_bias"
>;

export function checkModel(engine: InferenceEngine, model: string | undefined): void {
  if (model !== undefined && model !== engine.modelId)
    throw new ApiError(404, `The model '${model}' does not exist; this server serves '${engine.modelId}' (see GET /v1/models)`, "invalid_request_error", "model", "model_not_found");
}

function refuseUnsupported(body: SamplingBody): void {
  if (body.n != null && body.n !== 1)
    throw badRequest(`n=${body.n} is not supported: this server returns exactly one choice per request (send ${body.n} requests, with different seeds, instead)`, "n", "unsupported_value");
  if (body.presence_penalty) throw badRequest("presence_penalty is not supported (only 0)", "presence_penalty", "unsupported_value");
  if (body.frequency_penalty) throw badRequest("frequency_penalty is not supported (only 0)", "frequency_penalty", "unsupported_value");
  if (body.logit_bias && Object.keys(body.logit_bias).length > 0) throw badRequest("logit_bias is not supported", "logit_bias", "unsupported_value");
}

function stopStrings(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return (typeof stop === "string" ? [stop] : stop).filter((s) => s.length > 0);
}

/**
 * Sampling fields → GenerationRequest, with the context check: prompt + max_tokens must fit.
 * `maxTokens` null means "as many as fit" (chat's default, as vLLM).
 */
function generationRequest(
  engine: InferenceEngine,
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
  const vocab = engine.tokenizer.vocabSize;
  const extraStops = body.stop_token_ids ?? [];
  const badStop = extraStops.find((id) => id >= vocab);
  if (badStop !== undefined) throw badRequest(`stop_token_ids: token id ${badStop} is outside the vocabulary (0..${vocab - 1})`, "stop_token_ids", "invalid_value");
  const stopTokenIds = [...new Set([...(body.ignore_eos ? [] : engine.tokenizer.eosTokenIds), ...extraStops])];
  return {
    promptIds,
    maxTokens: max,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    topK: body.top_k == null || body.top_k < 0 ? 0 : body.top_k,
    seed: body.seed ?? null,
    stopTokenIds,
    logprobs: logprobs.enabled,
    topLogprobs: logprobs.top,
  };
}

function tokenText(tokenizer: EngineTokenizer, id: number): string {
  return tokenizer.decode([id]);
}

function chatLogprobEntry(tokenizer: EngineTokenizer, t: { tokenId: number; logprob: number | null }, top: TokenLogprob[] | null) {
  const token = tokenText(tokenizer, t.tokenId);
  return {
    token,
    logprob: t.logprob ?? 0,
    bytes: [...new TextEncoder().encode(token)],
    top_logprobs: (top ?? []).map((alt) => {
      const s = tokenText(tokenizer, alt.tokenId);
      return { token: s, logprob: alt.logprob, bytes: [...new TextEncoder().encode(s)] };
    }),
  };
}

function chatLogprobs(tokenizer: EngineTokenizer, tokens: GeneratedToken[]) {
  return { content: tokens.map((t) => chatLogprobEntry(tokenizer, t, t.topLogprobs)), refusal: null };
}

const newId = (prefix: string) => `${prefix}-${crypto.randomUUID().replace(/-/g, "")}`;
const nowSeconds = () => Math.floor(Date.now() / 1000);

function usageOf(u: { promptTokens: number; completionTokens: number }) {
  return { prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens };
}

export async function chatCompletion(ctx: EndpointContext, body: ChatCompletionRequest): Promise<Response> {
  const { engine } = ctx;
  checkModel(engine, body.model);
  if (body.top_logprobs != null && body.top_logprobs > 0 && !body.logprobs)
    throw badRequest("top_logprobs requires logprobs to be true", "top_logprobs", "invalid_value");
  if (body.response_format && body.response_format.type !== "text")
    throw badRequest(`response_format type '${body.response_format.type}' is not supported (only 'text')`, "response_format", "unsupported_value");
  if (body.tool_choice != null && typeof body.tool_choice === "object")
    throw badRequest("forcing a specific tool with tool_choice is not supported (use 'auto' or 'none')", "tool_choice", "unsupported_value");
  if (body.max_tokens != null && body.max_completion_tokens != null && body.max_tokens !== body.max_completion_tokens)
    throw badRequest("max_tokens and max_completion_tokens disagree; send one of them", "max_completion_tokens", "invalid_value");

  const tools = body.tool_choice === "none" ? null : (body.tools ?? null);
  const prompt = renderChatPrompt(engine.chatTemplate, body.messages, {
    tools,
    addGenerationPrompt: body.add_generation_prompt ?? true,
    kwargs: body.chat_template_kwargs,
  });
  const promptIds = engine.tokenizer.encodeChat(prompt).ids;
  const maxParam = body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const request = generationRequest(
    engine,
    body,
    promptIds,
    { value: body.max_completion_tokens ?? body.max_tokens ?? null, param: maxParam },
    "messages",
    { enabled: body.logprobs === true, top: body.logprobs ? (body.top_logprobs ?? 0) : 0 },
  );
  const generation = startGeneration(ctx, request, stopStrings(body.stop), ctx.signal);
  const id = newId("chatcmpl");
  const created = nowSeconds();
  const base = { id, created, model: engine.modelId, system_fingerprint: ctx.systemFingerprint };
  const wantLogprobs = request.logprobs;

  if (!body.stream) {
    let text = "";
    const tokens: GeneratedToken[] = [];
    let finishReason: GenerationDelta["finishReason"] = null;
    for await (const delta of generation.deltas) {
      text += delta.text;
      tokens.push(...delta.tokens);
      finishReason = delta.finishReason ?? finishReason;
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    return Response.json({
      ...base,
      object: "chat.completion",
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: text, refusal: null },
          logprobs: wantLogprobs ? chatLogprobs(engine.tokenizer, tokens) : null,
          finish_reason: finishReason ?? "stop",
        },
      ],
      usage: usageOf(generation.usage),
    });
  }

  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[], usage: unknown = null) => ({
    ...base,
    object: "chat.completion.chunk",
    choices,
    ...(includeUsage && { usage }),
  });
  async function* chunks() {
    yield chunk([{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]);
    for await (const delta of generation.deltas) {
      if (delta.text || (wantLogprobs && delta.tokens.length > 0))
        yield chunk([
          { index: 0, delta: { content: delta.text }, logprobs: wantLogprobs ? chatLogprobs(engine.tokenizer, delta.tokens) : null, finish_reason: null },
        ]);
      if (delta.finishReason) yield chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: delta.finishReason }]);
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    if (includeUsage) yield chunk([], usageOf(generation.usage));
  }
  return sseResponse(chunks(), generation.cancel, ctx);
}

export async function completion(ctx: EndpointContext, body: CompletionRequest): Promise<Response> {
  const { engine } = ctx;
  checkModel(engine, body.model);
  if (body.suffix) throw badRequest("suffix is not supported", "suffix", "unsupported_value");
  if (body.best_of != null && body.best_of !== 1) throw badRequest("best_of > 1 is not supported", "best_of", "unsupported_value");
  if (body.echo && body.logprobs != null) throw badRequest("echo together with logprobs is not supported (prompt logprobs are not computed)", "echo", "unsupported_value");

  const tokenizer = engine.tokenizer;
  let promptIds: number[];
  let promptText: string;
  const prompt = Array.isArray(body.prompt) && body.prompt.length === 1 && typeof body.prompt[0] !== "number" ? body.prompt[0]! : body.prompt;
  if (typeof prompt === "string") {
    promptIds = tokenizer.encode(prompt, { addSpecialTokens: body.add_special_tokens ?? true }).ids;
    promptText = prompt;
  } else {
    promptIds = prompt as number[];
    const bad = promptIds.find((id) => id < 0 || id >= tokenizer.vocabSize);
    if (bad !== undefined) throw badRequest(`prompt: token id ${bad} is outside the vocabulary (0..${tokenizer.vocabSize - 1})`, "prompt", "invalid_value");
    promptText = body.echo ? tokenizer.decode(promptIds) : "";
  }
  const request = generationRequest(engine, body, promptIds, { value: body.max_tokens ?? 16, param: "max_tokens" }, "prompt", {
    enabled: body.logprobs != null,
    top: body.logprobs ?? 0,
  });
  const generation = startGeneration(ctx, request, stopStrings(body.stop), ctx.signal);
  const id = newId("cmpl");
  const created = nowSeconds();
  const base = { id, created, model: engine.modelId, system_fingerprint: ctx.systemFingerprint, object: "text_completion" };
  const wantLogprobs = request.logprobs;

  // Legacy logprobs: parallel arrays; text_offset counts from the start of the returned text.
  let offset = body.echo ? promptText.length : 0;
  const legacyLogprobs = (tokens: GeneratedToken[], text: string) => {
    const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
    for (const t of tokens) {
      const s = tokenText(tokenizer, t.tokenId);
      out.tokens.push(s);
      out.token_logprobs.push(t.logprob ?? 0);
      out.top_logprobs.push(Object.fromEntries((t.topLogprobs ?? []).map((alt) => [tokenText(tokenizer, alt.tokenId), alt.logprob])));
      out.text_offset.push(offset);
    }
    offset += text.length;
    return out;
  };

  if (!body.stream) {
    let text = body.echo ? promptText : "";
    const tokens: GeneratedToken[] = [];
    let finishReason: GenerationDelta["finishReason"] = null;
    for await (const delta of generation.deltas) {
      text += delta.text;
      tokens.push(...delta.tokens);
      finishReason = delta.finishReason ?? finishReason;
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    return Response.json({
      ...base,
      choices: [{ index: 0, text, logprobs: wantLogprobs ? legacyLogprobs(tokens, text) : null, finish_reason: finishReason ?? "stop" }],
      usage: usageOf(generation.usage),
    });
  }

  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[], usage: unknown = null) => ({ ...base, choices, ...(includeUsage && { usage }) });
  async function* chunks() {
    if (body.echo && promptText) yield chunk([{ index: 0, text: promptText, logprobs: null, finish_reason: null }]);
    for await (const delta of generation.deltas) {
      if (delta.text || delta.finishReason || (wantLogprobs && delta.tokens.length > 0))
        yield chunk([
          { index: 0, text: delta.text, logprobs: wantLogprobs ? legacyLogprobs(delta.tokens, delta.text) : null, finish_reason: delta.finishReason },
        ]);
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    if (includeUsage) yield chunk([], usageOf(generation.usage));
  }
  return sseResponse(chunks(), generation.cancel, ctx);
}
