/**
 * POST /v1/chat/completions in OpenAI's shape, stream and not. The conversation (and its tools)
 * becomes a prompt (./tool-request.ts), the sampling fields a GenerationRequest
 * (./sampling-request.ts); the output is read back as text and tool calls (./tool-stream.ts).
 * Streamed calls follow OpenAI's chunks: per call one delta with index, id, type and
 * function.name (arguments ""), then one with its arguments; text before a call is content.
 */
import type { EngineTokenizer, TokenLogprob } from "./engine.ts";
import { resolveModel, newId, nowSeconds, tokenText, usageOf, type EndpointContext } from "./endpoint.ts";
import { badRequest } from "./errors.ts";
import { startGeneration, type GeneratedToken } from "./generate.ts";
import { generationRequest, stopStrings } from "./sampling-request.ts";
import type { ChatCompletionRequest } from "./schemas.ts";
import { sseResponse } from "./sse.ts";
import { chatDeltas, type ParsedCall } from "./tool-stream.ts";
import { planChatPrompt } from "./tool-request.ts";

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

const toolCallOf = (c: ParsedCall) => ({ id: c.id, type: "function" as const, function: { name: c.name, arguments: c.arguments } });

export async function chatCompletion(ctx: EndpointContext, body: ChatCompletionRequest): Promise<Response> {
  const { engine } = ctx;
  const served = resolveModel(engine, body.model);
  const genCtx = { ...ctx, tokenizer: served.tokenizer }; // detokenized by the model's own tokenizer
  if (body.top_logprobs != null && body.top_logprobs > 0 && !body.logprobs)
    throw badRequest("top_logprobs requires logprobs to be true", "top_logprobs", "invalid_value");
  if (body.response_format && body.response_format.type !== "text")
    throw badRequest(`response_format type '${body.response_format.type}' is not supported (only 'text'; structured outputs are not implemented)`, "response_format", "unsupported_value");
  if (body.max_tokens != null && body.max_completion_tokens != null && body.max_tokens !== body.max_completion_tokens)
    throw badRequest("max_tokens and max_completion_tokens disagree; send one of them", "max_completion_tokens", "invalid_value");

  const plan = planChatPrompt(served.chatTemplate, body);
  const promptIds = served.tokenizer.encodeChat(plan.prompt).ids;
  const maxParam = body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const request = generationRequest(
    engine,
    served,
    body,
    promptIds,
    { value: body.max_completion_tokens ?? body.max_tokens ?? null, param: maxParam },
    "messages",
    { enabled: body.logprobs === true, top: body.logprobs ? (body.top_logprobs ?? 0) : 0 },
  );
  // A call marker may be a special token (Mistral's [TOOL_CALLS]): the parser must see it.
  const generation = startGeneration(genCtx, request, stopStrings(body.stop), ctx.signal, { skipSpecialTokens: plan.format === null });
  const deltas = chatDeltas(generation.deltas, plan);
  const base = { id: newId("chatcmpl"), created: nowSeconds(), model: served.id, system_fingerprint: ctx.systemFingerprint };
  const wantLogprobs = request.logprobs;

  if (!body.stream) {
    let text = "";
    const tokens: GeneratedToken[] = [];
    const calls: ParsedCall[] = [];
    let finishReason: string | null = null;
    for await (const d of deltas) {
      text += d.content;
      tokens.push(...d.tokens);
      calls.push(...d.calls);
      finishReason = d.finishReason ?? finishReason;
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    const message = calls.length > 0
      ? { role: "assistant", content: text || null, refusal: null, tool_calls: calls.map(toolCallOf) }
      : { role: "assistant", content: text, refusal: null };
    return Response.json({
      ...base,
      object: "chat.completion",
      choices: [{ index: 0, message, logprobs: wantLogprobs ? chatLogprobs(served.tokenizer, tokens) : null, finish_reason: finishReason ?? "stop" }],
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
  const choice = (delta: unknown, logprobs: unknown = null, finish_reason: string | null = null) => chunk([{ index: 0, delta, logprobs, finish_reason }]);
  async function* chunks() {
    yield choice({ role: "assistant", content: "" });
    for await (const d of deltas) {
      if (d.content || (wantLogprobs && d.tokens.length > 0))
        yield choice({ content: d.content }, wantLogprobs ? chatLogprobs(served.tokenizer, d.tokens) : null);
      for (const c of d.calls) {
        yield choice({ tool_calls: [{ index: c.index, id: c.id, type: "function", function: { name: c.name, arguments: "" } }] });
        yield choice({ tool_calls: [{ index: c.index, function: { arguments: c.arguments } }] });
      }
      if (d.finishReason) yield choice({}, null, d.finishReason);
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    if (includeUsage) yield chunk([], usageOf(generation.usage));
  }
  return sseResponse(chunks(), generation.cancel, ctx);
}
