// Nothing a client does holds a connection or a batch slot forever: an idle keep-alive
// connection is closed, a stalled upload gets a 408, a streaming client that stops reading is
// dropped and its slot goes to the next request; while a generation is silent (queued, long
// prefill) for longer than the idle timeout, its connection stays open.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { GatedEngine, JSON_HEADERS, makeTinyModelDir, rawConnection, requestHead, startServer, waitFor, type RunningServer } from "./helpers.ts";

/** Tokens as fast as they are read, for as long as asked: fills a socket in moments. */
class FloodEngine implements InferenceEngine {
  readonly maxContext = 100_000_000;
  readonly maxBatchSize = 1;
  aborted = 0;
  constructor(private readonly inner: InferenceEngine, private readonly tokenId: number) {}
  get modelId() { return this.inner.modelId; }
  get tokenizer() { return this.inner.tokenizer; }
  get chatTemplate() { return this.inner.chatTemplate; }
  async *submit(request: GenerationRequest, signal: AbortSignal): AsyncGenerator<TokenEvent> {
    signal.addEventListener("abort", () => this.aborted++, { once: true });
    for (let i = 0; i < request.maxTokens && !signal.aborted; i++) {
      yield { tokenId: this.tokenId, logprob: null, topLogprobs: null, finishReason: i === request.maxTokens - 1 ? "length" : null };
    }
  }
  close(): Promise<void> { return this.inner.close(); }
}

let model: { dir: string; cleanup: () => void };
let gated: GatedEngine;
let slow: RunningServer;
let flood: FloodEngine;
let flooded: RunningServer;
beforeAll(() => {
  model = makeTinyModelDir();
  const cpu = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" }).engine;
  gated = new GatedEngine(cpu);
  gated.release();
  slow = startServer({ engine: gated, idleTimeoutSeconds: 1, bodyTimeoutMs: 500 });
  flood = new FloodEngine(cpu, cpu.tokenizer.encode("hello", { addSpecialTokens: false }).ids[0]!);
  flooded = startServer({ engine: flood, maxRunning: 1, maxQueued: 0, streamWriteTimeoutMs: 300 });
});
afterAll(async () => {
  await slow.stop();
  await flooded.stop();
  model.cleanup();
});

const portOf = (r: RunningServer) => Number(new URL(r.url).port);
const chatBody = (extra: object) => JSON.stringify({ messages: [{ role: "user", content: "Hi" }], temperature: 0, ...extra });
const chatHead = (body: string) => requestHead("POST", "/v1/chat/completions", { host: "127.0.0.1", "content-type": "application/json", "content-length": Buffer.byteLength(body) });

describe("connection timeouts", () => {
  test("an idle keep-alive connection is closed (idle timeout 1 s)", async () => {
    const c = rawConnection(portOf(slow), requestHead("GET", "/health", { host: "127.0.0.1" }));
    expect(await c.until(/\{"status":"ok"\}/)).toStartWith("HTTP/1.1 200");
    await Promise.race([c.closed, Bun.sleep(6000)]);
    expect(c.openMs).not.toBeNull();
    expect(c.openMs!).toBeLessThan(6000);
  });

  test("a stalled upload gets a 408 in OpenAI's body (body timeout 0.5 s)", async () => {
    const c = rawConnection(portOf(slow), requestHead("POST", "/v1/chat/completions", { host: "127.0.0.1", "content-type": "application/json", "content-length": 1000 }), '{"messages": [');
    const text = await c.until(/"request_timeout"/, 5000);
    expect(text).toStartWith("HTTP/1.1 408");
    expect(text).toContain("did not arrive within 0.5 s");
    await Promise.race([c.closed, Bun.sleep(6000)]);
    expect(c.openMs).not.toBeNull();
    c.destroy();
  });

  test("a generation silent for longer than the idle timeout keeps its connection; the idle clock runs again after it", async () => {
    gated.close_();
    const body = chatBody({ max_tokens: 2 });
    const plain = rawConnection(portOf(slow), chatHead(body), body);
    const streamBody = chatBody({ max_tokens: 2, stream: true });
    const streamed = rawConnection(portOf(slow), chatHead(streamBody), streamBody);
    await waitFor(() => gated.entered >= 2, 5000, "both requests to reach the engine");
    await Bun.sleep(3000); // > 2× the 1 s idle timeout
    expect(plain.openMs).toBeNull();
    expect(streamed.openMs).toBeNull();
    gated.release();
    expect(await plain.until(/"finish_reason"/)).toStartWith("HTTP/1.1 200");
    expect(await streamed.until(/data: \[DONE\]/)).toStartWith("HTTP/1.1 200");
    await Promise.race([Promise.all([plain.closed, streamed.closed]), Bun.sleep(6000)]);
    expect(plain.openMs).not.toBeNull();
    expect(streamed.openMs).not.toBeNull();
  }, 20_000);
});

describe("stream write timeout", () => {
  test("a streaming client that stops reading loses its slot; a 2-token request then completes", async () => {
    const body = chatBody({ max_tokens: 50_000_000, stream: true });
    const stalled = rawConnection(portOf(flooded), chatHead(body), body);
    stalled.socket.pause(); // reads nothing: the socket buffers fill, then the server's writes stall
    const phase = { endpoint: "/v1/chat/completions", phase: "stream_stalled" };
    await waitFor(() => flooded.server.metrics.clientAborts.get(phase) === 1, 30_000, "the stalled stream to be dropped");
    await waitFor(() => flooded.server.scheduler.stats().running === 0, 5000, "its slot to be freed");
    expect(flood.aborted).toBe(1);
    const res = await fetch(`${flooded.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: chatBody({ max_tokens: 2 }) });
    expect(res.status).toBe(200);
    expect(((await res.json()) as any).usage.completion_tokens).toBe(2);
    stalled.destroy();
  }, 40_000);
});
