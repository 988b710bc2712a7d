/**
 * `bun run serve -- --model DIR [--adapter DIR] [--port N] [--host H] [--api-key K]`: the
 * OpenAI-compatible HTTP server. Every flag is checked against the model and the device before
 * it listens (a context past max_position_embeddings, or a KV cache the GPU cannot bind, is
 * refused with the reason). Prints the chat template it renders with and its sha256 at start
 * (and refuses to start when the adapter was trained with another), then the URL once it is
 * listening. SIGTERM/SIGINT drain: new requests get 503, running ones finish for up to
 * --drain-timeout, then end with a 503; a second signal exits at once.
 *
 * Several adapters (vLLM's spelling): --lora-modules name=DIR [name=DIR ...] serves each under
 * its name beside the base (--served-model-name, default the model directory's name); --adapter
 * DIR is the one-adapter form, named after its run directory. --max-loras N caps them (8: the
 * adapter slots), --max-lora-rank R the largest rank a slot takes (16, or the largest given);
 * --enable-lora-runtime-updates opens POST /v1/load_lora_adapter and /v1/unload_lora_adapter.
 *
 * Extra flags (docs/serving.md has them all with their defaults): --served-model-name NAME,
 * --max-running N (sequences in the batch), --max-queued N (waiting beyond that, then 429),
 * --max-body-bytes N (then 413), --engine gpu|cpu (default gpu: WebGPU with a KV cache and
 * continuous batching; cpu: the float64 reference, exact and slow), --max-context N (GPU: KV
 * rows per sequence, default min(model's, 4096)), --allowed-hosts H1,H2|'*' (default when
 * key-less on loopback: localhost, 127.0.0.1, [::1] and --host), --idle-timeout S (15),
 * --body-timeout S (30), --stream-write-timeout S (30), --drain-timeout S (30).
 */
import { type AdapterSummary, createServer, loadCpuReferenceEngine, type InferenceEngine } from "@tuneloom/server";
import { DEFAULT_MAX_LORAS, loadGpuEngine } from "@tuneloom/server/gpu-engine.ts";
import { drainAndStop, onShutdownSignals } from "@tuneloom/server/drain.ts";
import { defaultAllowedHosts, parseAllowedHosts } from "@tuneloom/server/host-check.ts";
import { listen } from "@tuneloom/server/listen.ts";
import { checkIntegerFlag, checkModelDirectory, secondsFlagMs } from "@tuneloom/server/startup-checks.ts";
import { MAX_IDLE_TIMEOUT_S } from "@tuneloom/server/timeouts.ts";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";
import { ADAPTER_FLAG, MODEL_FLAG } from "../model-flags.ts";
import { resolveModelDir } from "@tuneloom/model";

const DEFAULT_DRAIN_TIMEOUT_S = 30;

const SPEC = {
  name: "serve",
  usage: "--model DIR [--adapter DIR | --lora-modules name=DIR [name=DIR ...]] [--port N] [--host H] [--api-key K]",
  description: "The OpenAI-compatible HTTP server (docs/serving.md). Every flag is checked against the model and the device before it listens.",
  flags: {
    model: MODEL_FLAG,
    adapter: ADAPTER_FLAG,
    "lora-modules": { type: "list", arg: "name=DIR ...", help: "GPU: serve each PEFT adapter under its name beside the base (vLLM's flag)" },
    "max-loras": { type: "number", help: "GPU: most adapters loaded at once, at startup and at runtime", default: DEFAULT_MAX_LORAS },
    "max-lora-rank": { type: "number", help: "GPU: largest adapter rank the adapter slots take (default: 16, or the largest --lora-modules rank)" },
    "lora-dtype": { type: "string", arg: "DTYPE", help: "GPU: adapter slot storage: auto (f16 with f16 weights, else f32), float32, float16 or bfloat16", default: "auto" },
    "enable-lora-runtime-updates": { type: "boolean", help: "GPU: allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter", default: false },
    port: { type: "number", help: "TCP port (0: any free port)", default: 8000 },
    host: { type: "string", arg: "H", help: "address to listen on", default: "127.0.0.1" },
    "api-key": { type: "string", arg: "K", help: "require Authorization: Bearer K (default: $TUNELOOM_API_KEY, else none)" },
    "served-model-name": { type: "string", arg: "NAME", help: "the base model's id in /v1/models and responses (default: the model directory's name)" },
    "max-running": { type: "number", help: "sequences decoded together in one batch (default: as the engine sizes it)" },
    "max-queued": { type: "number", help: "requests waiting beyond --max-running before 429 (default: the server's)" },
    "max-body-bytes": { type: "number", help: "largest request body, then 413 (default: the server's)" },
    engine: { type: "string", arg: "gpu|cpu", help: "gpu: WebGPU, KV cache, continuous batching; cpu: float64 reference, exact and slow", default: "gpu" },
    "max-context": { type: "number", help: "GPU: KV rows per sequence (default min(model's, 4096))" },
    "allowed-hosts": { type: "string", arg: "H1,H2|'*'", help: "Host headers accepted (default when key-less on loopback: localhost, 127.0.0.1, [::1], --host)" },
    "idle-timeout": { type: "number", arg: "S", help: "seconds a connection may idle", default: 15 },
    "body-timeout": { type: "number", arg: "S", help: "seconds to receive a request body", default: 30 },
    "stream-write-timeout": { type: "number", arg: "S", help: "seconds a streamed write may wait on a slow client", default: 30 },
    "drain-timeout": { type: "number", arg: "S", help: "on SIGTERM/SIGINT, seconds running requests may finish", default: DEFAULT_DRAIN_TIMEOUT_S },
  },
} as const satisfies CommandSpec;

/**
 * vLLM writes `--lora-modules a=DIR b=DIR`: every bare `name=DIR` after the flag's value is one
 * more value of it (our parser takes one value per flag occurrence).
 */
export function expandLoraModules(argv: readonly string[]): string[] {
  const out: string[] = [];
  let inList = false;
  for (const arg of argv) {
    if (arg.startsWith("-")) inList = arg === "--lora-modules" || arg === "--lora_modules";
    else if (inList && out.at(-1) !== "--lora-modules" && out.at(-1) !== "--lora_modules" && arg.includes("=")) out.push("--lora-modules");
    out.push(arg);
  }
  return out;
}

/** `name=DIR` values of --lora-modules, each name once. */
export function parseLoraModules(values: readonly string[]): { name: string; dir: string }[] {
  const seen = new Set<string>();
  return values.map((v) => {
    const i = v.indexOf("=");
    const name = i > 0 ? v.slice(0, i) : "", dir = i > 0 ? v.slice(i + 1) : "";
    if (!name || !dir) throw new UsageError(`--lora-modules takes name=DIR, got '${v}'`);
    if (seen.has(name)) throw new UsageError(`--lora-modules names '${name}' twice`);
    seen.add(name);
    return { name, dir };
  });
}

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(expandLoraModules(argv), SPEC);
  if (!flags.model) throw new UsageError(`usage: serve ${SPEC.usage}`);
  // Every flag first, before any file is read.
  const host = flags.host ?? "127.0.0.1";
  const port = flags.port ?? 8000;
  checkIntegerFlag("--port", port, 0, 65535);
  const apiKey = flags["api-key"] ?? process.env.TUNELOOM_API_KEY;
  const kind = flags.engine ?? "gpu";
  if (kind !== "gpu" && kind !== "cpu") throw new Error(`--engine must be gpu or cpu, got '${kind}'`);
  if (kind === "cpu" && flags["max-context"] !== undefined)
    throw new Error("--max-context applies to --engine gpu only (the CPU reference serves the model's max_position_embeddings)");
  checkIntegerFlag("--max-running", flags["max-running"], 1);
  checkIntegerFlag("--max-queued", flags["max-queued"], 0);
  checkIntegerFlag("--max-body-bytes", flags["max-body-bytes"], 1);
  checkIntegerFlag("--max-context", flags["max-context"], 2);
  checkIntegerFlag("--idle-timeout", flags["idle-timeout"], 1, MAX_IDLE_TIMEOUT_S);
  const bodyTimeoutMs = secondsFlagMs("--body-timeout", flags["body-timeout"]);
  const streamWriteTimeoutMs = secondsFlagMs("--stream-write-timeout", flags["stream-write-timeout"]);
  const drainTimeoutMs = secondsFlagMs("--drain-timeout", flags["drain-timeout"], true) ?? DEFAULT_DRAIN_TIMEOUT_S * 1000;
  const allowedHosts = flags["allowed-hosts"] !== undefined ? parseAllowedHosts(flags["allowed-hosts"]) : defaultAllowedHosts(host, apiKey);
  // A Hub repo id is looked up in the local HF cache; a path that does not exist is reported below.
  if (!flags.model.startsWith("/") && !flags.model.startsWith(".")) flags.model = resolveModelDir(flags.model);
  checkModelDirectory(flags.model, flags.adapter);
  const loraModules = parseLoraModules(flags["lora-modules"] ?? []);
  if (loraModules.length > 0 && flags.adapter !== undefined) throw new UsageError("--adapter and --lora-modules do not go together: name the adapter in --lora-modules");
  for (const m of loraModules) checkModelDirectory(flags.model, m.dir);
  const maxLoras = flags["max-loras"] ?? DEFAULT_MAX_LORAS;
  checkIntegerFlag("--max-loras", maxLoras, 1);
  if (loraModules.length > maxLoras) throw new Error(`--lora-modules names ${loraModules.length} adapters, more than --max-loras ${maxLoras}; raise --max-loras`);
  if (kind === "cpu" && (loraModules.length > 0 || flags["enable-lora-runtime-updates"]))
    throw new Error("--lora-modules and --enable-lora-runtime-updates need --engine gpu (the CPU reference folds one adapter into the weights)");

  let engine: InferenceEngine;
  let adapters: { name: string; summary: AdapterSummary }[];
  let adapterHow: string;
  let engineLine: string;
  if (kind === "cpu") {
    const loaded = loadCpuReferenceEngine({
      modelDir: flags.model,
      adapterDir: flags.adapter,
      modelId: flags["served-model-name"],
      maxBatchSize: flags["max-running"],
    });
    engine = loaded.engine;
    adapters = loaded.adapter ? [{ name: engine.modelId, summary: loaded.adapter }] : [];
    adapterHow = "merged";
    engineLine = `engine: CPU reference (float64, exact, slow); model '${engine.modelId}', context ${engine.maxContext}`;
  } else {
    const loaded = await loadGpuEngine(flags.model, flags.adapter ?? loraModules, {
      modelId: flags["served-model-name"],
      maxLoras,
      maxLoraRank: flags["max-lora-rank"],
      loraDtype: flags["lora-dtype"],
      maxBatchSize: flags["max-running"],
      maxContext: flags["max-context"],
    });
    ({ engine, adapters } = loaded);
    adapterHow = "on the GPU";
    engineLine = `engine: GPU (${loaded.engine.model.rt.caps.description}); model '${engine.modelId}', ${engine.maxBatchSize} sequences of context ${engine.maxContext}`;
  }
  const t = engine.chatTemplate;
  console.log(`chat template (${t.origin}), sha256 ${t.sha256}:`);
  console.log(t.source);
  console.log(`--- end of chat template (sha256 ${t.sha256})`);
  for (const { name, summary: adapter } of adapters)
    console.log(`adapter '${name}' ${adapterHow}: r=${adapter.rank}, alpha=${adapter.alpha}${adapter.rslora ? " (rsLoRA)" : ""}, scale=${adapter.scale}, ${adapter.modules.length} projection(s)`);
  console.log(engineLine);
  const models = engine.models?.() ?? [];
  if (models.length > 1)
    for (const m of models) console.log(`serving '${m.id}'${m.parent ? ` (adapter of '${m.parent}', ${m.root})` : " (base)"}: chat template ${m.chatTemplate.origin}, sha256 ${m.chatTemplate.sha256}`);

  const server = createServer({
    engine,
    apiKey,
    maxRunning: flags["max-running"],
    maxQueued: flags["max-queued"],
    maxBodyBytes: flags["max-body-bytes"],
    bodyTimeoutMs,
    streamWriteTimeoutMs,
    idleTimeoutSeconds: flags["idle-timeout"],
    allowedHosts,
    enableLoraRuntimeUpdates: flags["enable-lora-runtime-updates"] ?? false,
  });
  const http = listen(server, { hostname: host, port });
  console.log(`listening on http://${http.hostname}:${http.port} (OpenAI base URL http://${http.hostname}:${http.port}/v1)${apiKey ? ", API key required" : ""}`);
  console.log(`allowed hosts: ${allowedHosts === null ? "any" : allowedHosts.join(", ")}`);

  return await new Promise<number>((resolve) => {
    onShutdownSignals(async (signal) => {
      const { queued, running } = server.scheduler.stats();
      console.log(`${signal}: draining (${running} running, ${queued} queued, up to ${drainTimeoutMs / 1000} s); new requests get 503`);
      await drainAndStop(server, http, drainTimeoutMs, (line) => console.log(line));
      await engine.close();
      console.log("drained; exiting");
      resolve(0);
    });
  });
}
