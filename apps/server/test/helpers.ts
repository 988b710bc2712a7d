/** Shared fixtures: one tiny model per test file (no downloads) and a server on 127.0.0.1:random. */
import OpenAI from "openai";
import { loadCpuReferenceEngine, type LoadedModel } from "../src/load.ts";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gaussianSampler, openCheckpoint, writeSafetensors, writeTinyModel } from "@tuneloom/model";
import { createServer, type ServerOptions, type TuneloomServer } from "../src/app.ts";
import { listen } from "../src/listen.ts";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";

export function makeTinyModelDir(options: Parameters<typeof writeTinyModel>[1] = {}): { dir: string; cleanup: () => void } {
  const root = mkdtempSync(join(tmpdir(), "tuneloom-server-test-"));
  const dir = join(root, "tiny-model");
  writeTinyModel(dir, options);
  return { dir, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

/**
 * A copy of an untied (llama) F32 model directory whose config vocab_size is padded `padRows`
 * past the tokenizer's, as real checkpoints pad theirs (Qwen2.5: 151,936 rows for 151,665 ids).
 * Padded lm_head row V+i is 3× the row of `dominate[i]` (random beyond the list): wherever that
 * token's logit is the largest and positive, the padded row's is larger, so an engine that
 * looked at padded rows would pick them. The real rows are unchanged, so a correct engine
 * generates exactly what it generates on the unpadded model.
 */
export function padVocab(srcDir: string, dstDir: string, padRows: number, dominate: readonly number[]): void {
  cpSync(srcDir, dstDir, { recursive: true });
  const config = JSON.parse(readFileSync(join(srcDir, "config.json"), "utf8"));
  const V: number = config.vocab_size;
  config.vocab_size = V + padRows;
  writeFileSync(join(dstDir, "config.json"), JSON.stringify(config, null, 2));
  const store = openCheckpoint(srcDir);
  const gauss = gaussianSampler(12345);
  const tensors = store.names().map((name) => {
    const { shape } = store.info(name);
    let data = store.toFloat32(name);
    if (name === "model.embed_tokens.weight" || name === "lm_head.weight") {
      const C = shape[1]!;
      const padded = new Float32Array((V + padRows) * C);
      padded.set(data);
      for (let i = 0; i < padRows; i++) {
        const row = padded.subarray((V + i) * C, (V + i + 1) * C);
        const like = name === "lm_head.weight" ? dominate[i] : undefined;
        if (like === undefined) for (let c = 0; c < C; c++) row[c] = 0.1 * gauss();
        else for (let c = 0; c < C; c++) row[c] = 3 * data[like * C + c]!;
      }
      data = padded;
      return { name, dtype: "F32" as const, shape: [V + padRows, C], data };
    }
    return { name, dtype: "F32" as const, shape, data };
  });
  store.close();
  writeSafetensors(join(dstDir, "model.safetensors"), tensors, { format: "pt" });
}

/** What a JSON POST must carry (the server answers 415 without it). */
export const JSON_HEADERS = { "content-type": "application/json" } as const;

export interface RunningServer {
  server: TuneloomServer;
  url: string;
  baseURL: string;
  stop: () => Promise<void>;
}

export function startServer(options: ServerOptions): RunningServer {
  const server = createServer({ logError: () => {}, ...options });
  const http = listen(server, { hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${http.port}`;
  return { server, url, baseURL: `${url}/v1`, stop: () => http.stop(true) };
}

/** An engine whose sequences wait at a gate before reaching the real one: holds slots open on demand. */
export class GatedEngine implements InferenceEngine {
  private open!: () => void;
  private gate!: Promise<void>;
  entered = 0;
  constructor(private readonly inner: InferenceEngine) {
    this.close_();
  }
  get modelId() { return this.inner.modelId; }
  get maxContext() { return this.inner.maxContext; }
  get maxBatchSize() { return this.inner.maxBatchSize; }
  get tokenizer() { return this.inner.tokenizer; }
  get chatTemplate() { return this.inner.chatTemplate; }
  /** Let every waiting and future sequence through. */
  release(): void { this.open(); }
  /** Make future sequences wait again. */
  close_(): void { this.gate = new Promise((r) => (this.open = r)); }
  async *submit(request: GenerationRequest, signal: AbortSignal): AsyncGenerator<TokenEvent> {
    this.entered++;
    await this.gate;
    yield* this.inner.submit(request, signal);
  }
  close(): Promise<void> { return this.inner.close(); }
}

/** Parse an SSE body into its data payloads (JSON objects, and the final "[DONE]"). */
export async function readSse(response: Response): Promise<(Record<string, any> | "[DONE]")[]> {
  const text = await response.text();
  const out: (Record<string, any> | "[DONE]")[] = [];
  for (const block of text.split("\n\n")) {
    if (!block.trim()) continue;
    if (!block.startsWith("data: ")) throw new Error(`not an SSE data line: ${JSON.stringify(block)}`);
    const data = block.slice(6);
    out.push(data === "[DONE]" ? "[DONE]" : JSON.parse(data));
  }
  return out;
}

export async function waitFor(cond: () => boolean, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

/**
 * A raw TCP client for what fetch cannot do (a Host header of our choosing, a body that stalls,
 * a stream that is never read): sends `head` (and `body` if given), collects what comes back,
 * and reports when the server closes the connection.
 */
export function rawConnection(port: number, head: string, body?: string) {
  const socket = connect(port, "127.0.0.1");
  let received = "";
  let closedAt: number | null = null;
  const openedAt = Date.now();
  const closed = new Promise<void>((resolve) => socket.on("close", () => ((closedAt = Date.now()), resolve())));
  socket.on("data", (d) => (received += d.toString("latin1")));
  socket.on("error", () => {});
  socket.write(head + (body ?? ""));
  return {
    socket,
    closed,
    get received() { return received; },
    /** Milliseconds from connecting to the server's close; null while open. */
    get openMs() { return closedAt === null ? null : closedAt - openedAt; },
    /** Wait until `pattern` appears in the bytes received. */
    async until(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
      await waitFor(() => pattern.test(received) || closedAt !== null, timeoutMs, `${pattern} from the server`);
      if (!pattern.test(received)) throw new Error(`connection closed before ${pattern}; got ${JSON.stringify(received.slice(0, 300))}`);
      return received;
    },
    destroy: () => socket.destroy(),
  };
}

/** An HTTP/1.1 request head (keep-alive) for rawConnection. */
export function requestHead(method: string, path: string, headers: Record<string, string | number>): string {
  return `${method} ${path} HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`;
}

/** Reads stdout until `pattern` matches; returns everything read so far. */
export async function readUntil(reader: { read(): Promise<{ value?: Uint8Array; done: boolean }> }, pattern: RegExp, sofar = { text: "" }): Promise<string> {
  const decoder = new TextDecoder();
  while (!pattern.test(sofar.text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`stdout ended before ${pattern}: ${sofar.text}`);
    sofar.text += decoder.decode(value, { stream: true });
  }
  return sofar.text;
}

/** The tiny model on the CPU reference engine behind a real server, and an `openai` client for it. */
export interface TinyOpenAIServer {
  model: { dir: string; cleanup: () => void };
  loaded: LoadedModel;
  running: RunningServer;
  client: OpenAI;
}

export function startTinyOpenAIServer(): TinyOpenAIServer {
  const model = makeTinyModelDir();
  const loaded = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" });
  const running = startServer({ engine: loaded.engine });
  const client = new OpenAI({ baseURL: running.baseURL, apiKey: "unused", maxRetries: 0 });
  return { model, loaded, running, client };
}

export async function stopTinyOpenAIServer(s: Pick<TinyOpenAIServer, "model" | "running">): Promise<void> {
  await s.running.stop();
  s.model.cleanup();
}
