/**
 * `bun run serve -- --model DIR [--adapter DIR] [--port N] [--host H] [--api-key K]`: the
 * OpenAI-compatible HTTP server. Prints the chat template it renders with and its sha256 at
 * start (and refuses to start when the adapter was trained with another), then the URL once
 * it is listening. SIGTERM/SIGINT drain: new requests get 503, running ones finish, then exit.
 *
 * Extra flags: --served-model-name NAME, --max-running N (sequences in the batch),
 * --max-queued N (waiting beyond that, then 429), --max-body-bytes N (then 413),
 * --engine gpu|cpu (default gpu: WebGPU with a KV cache and continuous batching; cpu: the float64
 * reference, exact and slow), --max-context N (GPU: KV rows per sequence, default min(model's, 4096)).
 */
import { type AdapterSummary, createServer, loadCpuReferenceEngine, type InferenceEngine } from "@tuneloom/server";
import { loadGpuEngine } from "@tuneloom/server/gpu-engine.ts";
import { parseFlags } from "../args.ts";

const FLAGS = {
  model: "string",
  adapter: "string",
  port: "number",
  host: "string",
  "api-key": "string",
  "served-model-name": "string",
  "max-running": "number",
  "max-queued": "number",
  "max-body-bytes": "number",
  engine: "string",
  "max-context": "number",
} as const;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, FLAGS, "serve");
  if (!flags.model) throw new Error("usage: serve --model DIR [--adapter DIR] [--port N] [--host H] [--api-key K]");
  const host = flags.host ?? "127.0.0.1";
  const port = flags.port ?? 8000;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be an integer in 0..65535, got ${port}`);
  const apiKey = flags["api-key"] ?? process.env.TUNELOOM_API_KEY;

  const kind = flags.engine ?? "gpu";
  if (kind !== "gpu" && kind !== "cpu") throw new Error(`--engine must be gpu or cpu, got '${kind}'`);
  let engine: InferenceEngine;
  let adapter: AdapterSummary | null;
  let adapterHow: string;
  let engineLine: string;
  if (kind === "cpu") {
    const loaded = loadCpuReferenceEngine({
      modelDir: flags.model,
      adapterDir: flags.adapter,
      modelId: flags["served-model-name"],
      maxBatchSize: flags["max-running"],
    });
    ({ engine, adapter } = loaded);
    adapterHow = "merged";
    engineLine = `engine: CPU reference (float64, exact, slow); model '${engine.modelId}', context ${engine.maxContext}`;
  } else {
    const loaded = await loadGpuEngine(flags.model, flags.adapter, {
      modelId: flags["served-model-name"],
      maxBatchSize: flags["max-running"],
      maxContext: flags["max-context"],
    });
    ({ engine, adapter } = loaded);
    adapterHow = "on the GPU";
    engineLine = `engine: GPU (${loaded.engine.model.rt.caps.description}); model '${engine.modelId}', ${engine.maxBatchSize} sequences of context ${engine.maxContext}`;
  }
  const t = engine.chatTemplate;
  console.log(`chat template (${t.origin}), sha256 ${t.sha256}:`);
  console.log(t.source);
  console.log(`--- end of chat template (sha256 ${t.sha256})`);
  if (adapter)
    console.log(`adapter ${adapterHow}: r=${adapter.rank}, alpha=${adapter.alpha}${adapter.rslora ? " (rsLoRA)" : ""}, scale=${adapter.scale}, ${adapter.modules.length} projection(s)`);
  console.log(engineLine);

  const server = createServer({
    engine,
    apiKey,
    maxRunning: flags["max-running"],
    maxQueued: flags["max-queued"],
    maxBodyBytes: flags["max-body-bytes"],
  });
  const http = Bun.serve({
    hostname: host,
    port,
    fetch: server.fetch,
    // Generation can be silent for a long time before the first token; the server, not the socket, decides when a request ends.
    idleTimeout: 0,
    // Our own limit answers 413 in OpenAI's shape; Bun's is only the hard backstop above it.
    maxRequestBodySize: Math.max((flags["max-body-bytes"] ?? 4 * 1024 * 1024) * 2, 16 * 1024 * 1024),
  });
  console.log(`listening on http://${http.hostname}:${http.port} (OpenAI base URL http://${http.hostname}:${http.port}/v1)${apiKey ? ", API key required" : ""}`);

  const exitCode = await new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      const { queued, running } = server.scheduler.stats();
      console.log(`${signal}: draining (${running} running, ${queued} queued); new requests get 503`);
      await server.scheduler.drain();
      await http.stop();
      await engine.close();
      console.log("drained; exiting");
      resolve(0);
    };
    process.on("SIGTERM", () => void stop("SIGTERM"));
    process.on("SIGINT", () => void stop("SIGINT"));
  });
  return exitCode;
}
