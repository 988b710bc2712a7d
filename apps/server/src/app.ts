/**
 * The Hono app: OpenAI-compatible generation endpoints plus vLLM's /tokenize and /detokenize,
 * llama.cpp's /apply-template, /health and Prometheus /metrics. `createServer` wires an engine
 * to a scheduler and metrics and returns a web-standard `fetch(request)`; the CLI hands that to
 * Bun.serve, tests can too. Whatever a client sends, the answer is a response: validation
 * errors are 400s in OpenAI's body, anything unexpected a 500, and the server keeps serving.
 */
import { Hono, type Context } from "hono";
import { timingSafeEqual } from "node:crypto";
import { DEFAULT_MAX_BODY_BYTES, readJsonBody } from "./body.ts";
import { chatCompletion, checkModel, completion, type EndpointContext } from "./completions.ts";
import type { InferenceEngine } from "./engine.ts";
import { ApiError, badRequest, errorResponse } from "./errors.ts";
import { ServerMetrics } from "./metrics.ts";
import { renderChatPrompt } from "./prompt.ts";
import { RequestScheduler, SchedulerRejection, type SchedulerOptions } from "./scheduler.ts";
import { applyTemplateSchema, chatCompletionSchema, completionSchema, detokenizeSchema, parseRequest, tokenizeSchema } from "./schemas.ts";

export interface ServerOptions extends SchedulerOptions {
  engine: InferenceEngine;
  /** When set, every /v1 and tokenizer route needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Request bodies larger than this are refused with 413 (default 4 MiB). */
  maxBodyBytes?: number;
  /** Where unexpected errors are reported; default console.error. */
  logError?: (message: string) => void;
}

export interface TuneloomServer {
  app: Hono;
  fetch: (request: Request) => Promise<Response>;
  scheduler: RequestScheduler;
  metrics: ServerMetrics;
  engine: InferenceEngine;
}

/** Route label for metrics: known paths only, so random URLs cannot blow up label cardinality. */
const KNOWN_PATHS = new Set(["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize", "/apply-template"]);

export function createServer(options: ServerOptions): TuneloomServer {
  const { engine } = options;
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const logError = options.logError ?? ((m: string) => console.error(m));
  const scheduler = new RequestScheduler(engine, options);
  const metrics = new ServerMetrics(() => scheduler.stats());
  const systemFingerprint = `fp_${engine.chatTemplate.sha256.slice(0, 12)}`;
  const apiKey = options.apiKey ? new TextEncoder().encode(options.apiKey) : null;
  const created = Math.floor(Date.now() / 1000);
  const app = new Hono();

  const toResponse = (err: unknown): Response => {
    if (err instanceof ApiError) return errorResponse(err);
    if (err instanceof SchedulerRejection) {
      const type = err.status === 429 ? "rate_limit_error" : "server_error";
      return errorResponse(new ApiError(err.status, err.message, type, null, err.code), { "retry-after": "1" });
    }
    logError(`internal error: ${(err as Error)?.stack ?? String(err)}`);
    return errorResponse(new ApiError(500, `internal server error: ${(err as Error)?.message ?? String(err)}`, "server_error"));
  };

  // Outermost: count every request by route and status, whatever happened inside.
  app.use("*", async (c, next) => {
    await next();
    const endpoint = KNOWN_PATHS.has(c.req.path) ? c.req.path : "other";
    metrics.requests.inc({ endpoint, method: c.req.method, status: String(c.res.status) });
  });

  const authorized = (c: Context): boolean => {
    if (!apiKey) return true;
    const header = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m) return false;
    const given = new TextEncoder().encode(m[1]!.trim());
    return given.length === apiKey.length && timingSafeEqual(given, apiKey);
  };
  for (const path of ["/v1/*", "/tokenize", "/detokenize", "/apply-template"]) {
    app.use(path, async (c, next) => {
      if (!authorized(c))
        return errorResponse(
          new ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' with the key the server was started with", "authentication_error", null, "invalid_api_key"),
        );
      await next();
    });
  }

  const endpointContext = (c: Context): EndpointContext => ({
    engine,
    scheduler,
    tokenizer: engine.tokenizer,
    metrics,
    arrivedAt: performance.now(),
    endpoint: c.req.path,
    systemFingerprint,
    signal: c.req.raw.signal,
    logError,
  });
  const body = (c: Context) => readJsonBody(c.req.raw, maxBodyBytes);

  app.post("/v1/chat/completions", async (c) => {
    const ctx = endpointContext(c);
    return chatCompletion(ctx, parseRequest(chatCompletionSchema, await body(c)));
  });

  app.post("/v1/completions", async (c) => {
    const ctx = endpointContext(c);
    return completion(ctx, parseRequest(completionSchema, await body(c)));
  });

  app.get("/v1/models", (c) =>
    c.json({
      object: "list",
      data: [{ id: engine.modelId, object: "model", created, owned_by: "tuneloom", root: engine.modelId, parent: null, max_model_len: engine.maxContext }],
    }),
  );

  app.get("/v1/models/:id", (c) => {
    checkModel(engine, c.req.param("id"));
    return c.json({ id: engine.modelId, object: "model", created, owned_by: "tuneloom", root: engine.modelId, parent: null, max_model_len: engine.maxContext });
  });

  app.get("/health", (c) => {
    if (scheduler.isDraining) return c.json({ status: "draining" }, 503);
    return c.json({ status: "ok" });
  });

  app.get("/metrics", (c) => c.body(metrics.render(), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }));

  // vLLM's /tokenize: {prompt} or {messages, add_generation_prompt} → {count, max_model_len, tokens}.
  app.post("/tokenize", async (c) => {
    const req = parseRequest(tokenizeSchema, await body(c));
    checkModel(engine, req.model);
    let ids: number[];
    if ("messages" in req) {
      const prompt = renderChatPrompt(engine.chatTemplate, req.messages, {
        tools: req.tools ?? null,
        addGenerationPrompt: req.add_generation_prompt ?? true,
        kwargs: req.chat_template_kwargs,
      });
      ids = req.add_special_tokens ? engine.tokenizer.encode(prompt, { addSpecialTokens: true }).ids : engine.tokenizer.encodeChat(prompt).ids;
    } else {
      ids = engine.tokenizer.encode(req.prompt, { addSpecialTokens: req.add_special_tokens ?? true }).ids;
    }
    return c.json({ count: ids.length, max_model_len: engine.maxContext, tokens: ids, token_strs: null });
  });

  // vLLM's /detokenize: {tokens} → {prompt}.
  app.post("/detokenize", async (c) => {
    const req = parseRequest(detokenizeSchema, await body(c));
    checkModel(engine, req.model);
    const vocab = engine.tokenizer.vocabSize;
    const bad = req.tokens.findIndex((id) => id < 0 || id >= vocab);
    if (bad >= 0) throw badRequest(`tokens[${bad}]: token id ${req.tokens[bad]} is outside the vocabulary (0..${vocab - 1})`, `tokens[${bad}]`, "invalid_value");
    return c.json({ prompt: engine.tokenizer.decode(req.tokens) });
  });

  // llama.cpp's /apply-template: {messages} → {prompt}, the exact string generation would tokenize.
  app.post("/apply-template", async (c) => {
    const req = parseRequest(applyTemplateSchema, await body(c));
    const prompt = renderChatPrompt(engine.chatTemplate, req.messages, {
      tools: req.tools ?? null,
      addGenerationPrompt: req.add_generation_prompt ?? true,
      kwargs: req.chat_template_kwargs,
    });
    return c.json({ prompt });
  });

  app.notFound((c) =>
    errorResponse(new ApiError(404, `no route ${c.req.method} ${c.req.path}; see the README for the endpoints this server has`, "invalid_request_error", null, "unknown_url")),
  );
  app.onError((err) => toResponse(err));

  // Belt and braces: even an error Hono itself lets through becomes a 500, never a crash.
  const fetch = async (request: Request): Promise<Response> => {
    try {
      return await app.fetch(request);
    } catch (err) {
      return toResponse(err);
    }
  };
  return { app, fetch, scheduler, metrics, engine };
}
