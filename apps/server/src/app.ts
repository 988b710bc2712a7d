/**
 * The Hono app: OpenAI-compatible generation endpoints plus vLLM's /tokenize and /detokenize,
 * llama.cpp's /apply-template, /health and Prometheus /metrics. `createServer` wires an engine
 * to a scheduler and metrics and returns a web-standard `fetch(request, server?)` (Bun.serve
 * passes its server, whose per-request idle clock ./timeouts.ts drives); `listen` (./listen.ts)
 * serves it. Whatever a client sends, the answer is a response: validation errors are 400s in
 * OpenAI's body, a client that went away is counted (not logged), anything unexpected a 500,
 * and the server keeps serving.
 */
import { Hono, type Context } from "hono";
import { apiKeyGuard } from "./auth.ts";
import { readJsonBody } from "./body.ts";
import { chatCompletion } from "./chat-completions.ts";
import { completion } from "./completions.ts";
import { type EndpointContext, resolveModel, servedModels } from "./endpoint.ts";
import { checkJsonContentType } from "./content-type.ts";
import type { InferenceEngine, ServedModel } from "./engine.ts";
import { ApiError, badRequest, ClientGone, errorResponse, shutdownError } from "./errors.ts";
import { checkHost } from "./host-check.ts";
import { ServerMetrics } from "./metrics.ts";
import { renderChatPrompt } from "./prompt.ts";
import { RequestScheduler, SchedulerRejection } from "./scheduler.ts";
import { applyTemplateSchema, chatCompletionSchema, completionSchema, detokenizeSchema, parseRequest, tokenizeSchema } from "./schemas.ts";
import { resolveServerOptions, type ServerOptions } from "./server-options.ts";
import { requestIdOf, withRequestId } from "./request-id.ts";
import { ConnectionClock, type IdleClockServer } from "./timeouts.ts";

export type { ServerOptions };

export interface TuneloomServer {
  app: Hono<AppEnv>;
  fetch: (request: Request, server?: IdleClockServer) => Promise<Response>;
  scheduler: RequestScheduler;
  metrics: ServerMetrics;
  engine: InferenceEngine;
  /** Seconds for Bun.serve's idleTimeout. */
  idleTimeoutSeconds: number;
  /** Bodies past this are 413s. */
  maxBodyBytes: number;
  /** Shutdown past its drain timeout: every in-flight generation ends now with a 503 (in-band for streams). */
  abortInFlight: () => void;
}

type AppEnv = { Bindings: { clock?: ConnectionClock } };

/** Route label for metrics: known paths only, so random URLs cannot blow up label cardinality. */
const KNOWN_PATHS = new Set(["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/health", "/metrics", "/tokenize", "/detokenize", "/apply-template"]);
const endpointOf = (path: string) => (KNOWN_PATHS.has(path) ? path : "other");

export function createServer(options: ServerOptions): TuneloomServer {
  const { engine } = options;
  const { limits, streamWriteTimeoutMs, idleTimeoutSeconds, allowedHosts, logError } = resolveServerOptions(options);
  const shutdown = new AbortController();
  const scheduler = new RequestScheduler(engine, options);
  const metrics = new ServerMetrics(() => scheduler.stats());
  const systemFingerprint = `fp_${engine.chatTemplate.sha256.slice(0, 12)}`;
  const created = Math.floor(Date.now() / 1000);
  const app = new Hono<AppEnv>();

  const toResponse = (err: unknown, endpoint = "other"): Response => {
    if (err instanceof ClientGone) {
      metrics.clientAborts.inc({ endpoint, phase: err.phase });
      return new Response(null, { status: 499 });
    }
    if (err instanceof ApiError) return errorResponse(err);
    if (err instanceof SchedulerRejection) {
      const type = err.status === 429 ? "rate_limit_error" : "server_error";
      return errorResponse(new ApiError(err.status, err.message, type, null, err.code), { "retry-after": "1" });
    }
    logError(`internal error: ${(err as Error)?.stack || String(err)}`);
    return errorResponse(new ApiError(500, `internal server error: ${(err as Error)?.message ?? String(err)}`, "server_error"));
  };

  // Outermost: count every request by route and status, whatever happened inside.
  app.use("*", async (c, next) => {
    await next();
    metrics.requests.inc({ endpoint: endpointOf(c.req.path), method: c.req.method, status: String(c.res.status) });
  });

  // Every route, /health included: a rebinding page must learn nothing.
  app.use("*", async (c, next) => {
    const refused = checkHost(c.req.header("host") ?? null, allowedHosts);
    if (refused) return errorResponse(refused);
    await next();
  });

  for (const path of ["/v1/*", "/tokenize", "/detokenize", "/apply-template"]) app.use(path, apiKeyGuard(options.apiKey));

  const endpointContext = (c: Context<AppEnv>): EndpointContext => ({
    engine,
    scheduler,
    tokenizer: engine.tokenizer,
    metrics,
    arrivedAt: performance.now(),
    endpoint: c.req.path,
    systemFingerprint,
    signal: AbortSignal.any([c.req.raw.signal, shutdown.signal]),
    abortReason: () => (shutdown.signal.aborted ? shutdownError() : new ClientGone("generation")),
    logError,
    streamWriteTimeoutMs,
    clientGone: (phase) => metrics.clientAborts.inc({ endpoint: endpointOf(c.req.path), phase }),
    streamEnded: () => c.env?.clock?.release(),
  });
  // JSON routes: the type is checked before a byte is read; once the body is in, generation may be silent for long.
  const body = async (c: Context<AppEnv>) => {
    const unsupported = checkJsonContentType(c.req.header("content-type") ?? null);
    if (unsupported) throw unsupported;
    const json = await readJsonBody(c.req.raw, limits);
    c.env?.clock?.hold();
    return json;
  };

  app.post("/v1/chat/completions", async (c) => {
    const ctx = endpointContext(c);
    return chatCompletion(ctx, parseRequest(chatCompletionSchema, await body(c)));
  });

  app.post("/v1/completions", async (c) => {
    const ctx = endpointContext(c);
    return completion(ctx, parseRequest(completionSchema, await body(c)));
  });

  // vLLM's shape: an adapter's `parent` is the base's id, its `root` the directory it was loaded from.
  const modelCard = (m: ServedModel) => ({ id: m.id, object: "model", created, owned_by: "tuneloom", root: m.root, parent: m.parent, max_model_len: engine.maxContext });
  app.get("/v1/models", (c) => c.json({ object: "list", data: servedModels(engine).map(modelCard) }));

  app.get("/v1/models/:id", (c) => c.json(modelCard(resolveModel(engine, c.req.param("id")))));

  // vLLM's runtime LoRA routes, only with enableLoraRuntimeUpdates (--enable-lora-runtime-updates).
  const runtimeUpdates = (c: Context<AppEnv>, what: "loadAdapter" | "unloadAdapter") => {
    if (!options.enableLoraRuntimeUpdates)
      throw new ApiError(403, `${c.req.path} is disabled; start the server with --enable-lora-runtime-updates to load and unload adapters while serving`, "permission_error", null, "lora_runtime_updates_disabled");
    if (!engine[what]) throw new ApiError(501, `this engine (${engine.modelId}) cannot ${what === "loadAdapter" ? "load" : "unload"} adapters while serving (the GPU engine can)`, "server_error");
  };
  const stringField = (json: unknown, name: string): string => {
    const v = (json as Record<string, unknown> | null)?.[name];
    if (typeof v !== "string" || v === "") throw badRequest(`${name} is required (a non-empty string)`, name, "invalid_value");
    return v;
  };
  app.post("/v1/load_lora_adapter", async (c) => {
    runtimeUpdates(c, "loadAdapter");
    const json = await body(c);
    const name = stringField(json, "lora_name"), path = stringField(json, "lora_path");
    await engine.loadAdapter!(name, path);
    return c.text(`Success: LoRA adapter '${name}' added successfully.`);
  });
  app.post("/v1/unload_lora_adapter", async (c) => {
    runtimeUpdates(c, "unloadAdapter");
    const name = stringField(await body(c), "lora_name");
    await engine.unloadAdapter!(name);
    return c.text(`Success: LoRA adapter '${name}' removed successfully.`);
  });

  app.get("/health", (c) => {
    if (scheduler.isDraining) return c.json({ status: "draining" }, 503);
    return c.json({ status: "ok" });
  });

  app.get("/metrics", (c) => c.body(metrics.render(), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }));

  // vLLM's /tokenize: {prompt} or {messages, add_generation_prompt} → {count, max_model_len, tokens}.
  app.post("/tokenize", async (c) => {
    const req = parseRequest(tokenizeSchema, await body(c));
    const served = resolveModel(engine, req.model);
    let ids: number[];
    if ("messages" in req) {
      const prompt = renderChatPrompt(served.chatTemplate, req.messages, {
        tools: req.tools ?? null,
        addGenerationPrompt: req.add_generation_prompt ?? true,
        kwargs: req.chat_template_kwargs,
      });
      ids = req.add_special_tokens ? served.tokenizer.encode(prompt, { addSpecialTokens: true }).ids : served.tokenizer.encodeChat(prompt).ids;
    } else {
      ids = served.tokenizer.encode(req.prompt, { addSpecialTokens: req.add_special_tokens ?? true }).ids;
    }
    return c.json({ count: ids.length, max_model_len: engine.maxContext, tokens: ids, token_strs: null });
  });

  // vLLM's /detokenize: {tokens} → {prompt}.
  app.post("/detokenize", async (c) => {
    const req = parseRequest(detokenizeSchema, await body(c));
    const { tokenizer } = resolveModel(engine, req.model);
    const vocab = tokenizer.vocabSize;
    const bad = req.tokens.findIndex((id) => id < 0 || id >= vocab);
    if (bad >= 0) throw badRequest(`tokens[${bad}]: token id ${req.tokens[bad]} is outside the vocabulary (0..${vocab - 1})`, `tokens[${bad}]`, "invalid_value");
    return c.json({ prompt: tokenizer.decode(req.tokens) });
  });

  // llama.cpp's /apply-template: {messages} → {prompt}, the exact string generation would tokenize.
  app.post("/apply-template", async (c) => {
    const req = parseRequest(applyTemplateSchema, await body(c));
    const prompt = renderChatPrompt(resolveModel(engine, req.model).chatTemplate, req.messages, {
      tools: req.tools ?? null,
      addGenerationPrompt: req.add_generation_prompt ?? true,
      kwargs: req.chat_template_kwargs,
    });
    return c.json({ prompt });
  });

  app.notFound((c) =>
    errorResponse(new ApiError(404, `no route ${c.req.method} ${c.req.path}; see the README for the endpoints this server has`, "invalid_request_error", null, "unknown_url")),
  );
  app.onError((err, c) => toResponse(err, endpointOf(c.req.path)));

  // Belt and braces: even an error Hono itself lets through becomes a 500, never a crash. A
  // response other than a stream ends the request's silence: the idle clock runs again. Every
  // response, errors included, carries x-request-id.
  const fetch = async (request: Request, server?: IdleClockServer): Promise<Response> => {
    const clock = new ConnectionClock(server, request, idleTimeoutSeconds);
    let response: Response;
    try {
      response = await app.fetch(request, { clock });
    } catch (err) {
      response = toResponse(err);
    }
    if (!response.headers.get("content-type")?.startsWith("text/event-stream")) clock.release();
    return withRequestId(response, requestIdOf(request));
  };
  return { app, fetch, scheduler, metrics, engine, idleTimeoutSeconds, maxBodyBytes: limits.maxBytes, abortInFlight: () => shutdown.abort() };
}
