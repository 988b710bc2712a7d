/** Shared fixtures: one tiny model per test file (no downloads) and a server on 127.0.0.1:random. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyModel } from "@tuneloom/model/tiny-model.ts";
import { createServer, type ServerOptions, type TuneloomServer } from "../src/app.ts";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";

export function makeTinyModelDir(options: Parameters<typeof writeTinyModel>[1] = {}): { dir: string; cleanup: () => void } {
  const root = mkdtempSync(join(tmpdir(), "tuneloom-server-test-"));
  const dir = join(root, "tiny-model");
  writeTinyModel(dir, options);
  return { dir, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

export interface RunningServer {
  server: TuneloomServer;
  url: string;
  baseURL: string;
  stop: () => Promise<void>;
}

export function startServer(options: ServerOptions): RunningServer {
  const server = createServer({ logError: () => {}, ...options });
  const http = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: server.fetch, idleTimeout: 0 });
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
