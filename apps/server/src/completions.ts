/**
 * POST /v1/completions in OpenAI's legacy shape, stream and not. `prompt` is one prompt (a string
 * or a list of token ids) or a list of them, as vLLM accepts: each prompt is its own generation
 * (scheduled and batched like a request of its own) and its own choice, `index` = its position in
 * the list; usage is summed over them. Every prompt is checked before any generation starts, and
 * if one cannot be admitted (429/503) the others are cancelled: the request fails as a whole.
 * Streamed, the prompts' chunks interleave as they are generated, each carrying its choice index.
 */
import type { GenerationRequest } from "./engine.ts";
import { resolveModel, collect, newId, nowSeconds, tokenText, usageOf, type EndpointContext, type Usage } from "./endpoint.ts";
import { badRequest } from "./errors.ts";
import { startGeneration, type Generation, type GeneratedToken } from "./generate.ts";
import { merge } from "./merge-streams.ts";
import { generationRequest, stopStrings } from "./sampling-request.ts";
import type { CompletionRequest } from "./schemas.ts";
import { sseResponse } from "./sse.ts";

/** The request's prompts: one for a string or a token list, else one per element. */
function promptsOf(prompt: CompletionRequest["prompt"]): (string | number[])[] {
  if (typeof prompt === "string") return [prompt];
  if (prompt.length > 0 && typeof prompt[0] === "number") return [prompt as number[]];
  return prompt as (string | number[])[];
}

export async function completion(ctx: EndpointContext, body: CompletionRequest): Promise<Response> {
  const { engine } = ctx;
  const served = resolveModel(engine, body.model);
  const genCtx = { ...ctx, tokenizer: served.tokenizer }; // detokenized by the model's own tokenizer
  if (body.suffix) throw badRequest("suffix is not supported", "suffix", "unsupported_value");
  if (body.best_of != null && body.best_of !== 1) throw badRequest("best_of > 1 is not supported", "best_of", "unsupported_value");
  if (body.echo && body.logprobs != null) throw badRequest("echo together with logprobs is not supported (prompt logprobs are not computed)", "echo", "unsupported_value");

  const tokenizer = served.tokenizer;
  const prompts = promptsOf(body.prompt);
  const batch = prompts.length > 1 || Array.isArray(body.prompt[0]) || typeof body.prompt[0] === "string";
  const planned = prompts.map((prompt, i): { request: GenerationRequest; promptText: string } => {
    const param = batch ? `prompt[${i}]` : "prompt";
    let promptIds: number[];
    let promptText: string;
    if (typeof prompt === "string") {
      promptIds = tokenizer.encode(prompt, { addSpecialTokens: body.add_special_tokens ?? true }).ids;
      promptText = prompt;
    } else {
      promptIds = prompt;
      const bad = promptIds.find((id) => id < 0 || id >= tokenizer.vocabSize);
      if (bad !== undefined) throw badRequest(`${param}: token id ${bad} is outside the vocabulary (0..${tokenizer.vocabSize - 1})`, param, "invalid_value");
      promptText = body.echo ? tokenizer.decode(promptIds) : "";
    }
    const request = generationRequest(engine, served, body, promptIds, { value: body.max_tokens ?? 16, param: "max_tokens" }, param, {
      enabled: body.logprobs != null,
      top: body.logprobs ?? 0,
    });
    return { request, promptText };
  });
  const generations: Generation[] = [];
  try {
    for (const { request } of planned) generations.push(startGeneration(genCtx, request, stopStrings(body.stop), ctx.signal));
  } catch (err) {
    for (const g of generations) g.cancel();
    throw err;
  }
  const cancelAll = () => generations.forEach((g) => g.cancel());
  const usage = (): Usage => ({
    promptTokens: generations.reduce((n, g) => n + g.usage.promptTokens, 0),
    completionTokens: generations.reduce((n, g) => n + g.usage.completionTokens, 0),
  });
  const base = { id: newId("cmpl"), created: nowSeconds(), model: served.id, system_fingerprint: ctx.systemFingerprint, object: "text_completion" };
  const wantLogprobs = body.logprobs != null;

  // Legacy logprobs: parallel arrays; text_offset counts from the start of the choice's returned text.
  const offsets = planned.map((p) => (body.echo ? p.promptText.length : 0));
  const legacyLogprobs = (index: number, tokens: GeneratedToken[], text: string) => {
    const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
    for (const t of tokens) {
      const s = tokenText(tokenizer, t.tokenId);
      out.tokens.push(s);
      out.token_logprobs.push(t.logprob ?? 0);
      out.top_logprobs.push(Object.fromEntries((t.topLogprobs ?? []).map((alt) => [tokenText(tokenizer, alt.tokenId), alt.logprob])));
      out.text_offset.push(offsets[index]!);
    }
    offsets[index]! += text.length;
    return out;
  };

  if (!body.stream) {
    let results;
    try {
      results = await Promise.all(generations.map((g) => collect(ctx, g)));
    } catch (err) {
      cancelAll();
      throw err;
    }
    const choices = results.map((r, index) => {
      const text = (body.echo ? planned[index]!.promptText : "") + r.text;
      return { index, text, logprobs: wantLogprobs ? legacyLogprobs(index, r.tokens, text) : null, finish_reason: r.finishReason };
    });
    return Response.json({ ...base, choices, usage: usageOf(usage()) });
  }

  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[], usage: unknown = null) => ({ ...base, choices, ...(includeUsage && { usage }) });
  async function* chunks() {
    if (body.echo)
      for (const [index, p] of planned.entries()) if (p.promptText) yield chunk([{ index, text: p.promptText, logprobs: null, finish_reason: null }]);
    for await (const [index, delta] of merge(generations.map((g) => g.deltas))) {
      if (delta.text || delta.finishReason || (wantLogprobs && delta.tokens.length > 0))
        yield chunk([
          { index, text: delta.text, logprobs: wantLogprobs ? legacyLogprobs(index, delta.tokens, delta.text) : null, finish_reason: delta.finishReason },
        ]);
    }
    if (ctx.signal.aborted) throw ctx.abortReason();
    if (includeUsage) yield chunk([], usageOf(usage()));
  }
  return sseResponse(chunks(), cancelAll, ctx);
}
