// Continuous batching through HTTP: many simultaneous streams, queue limits, client aborts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { CpuReferenceEngine } from "../src/cpu-engine.ts";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { JSON_HEADERS, GatedEngine, makeTinyModelDir, readSse, startServer, waitFor, type RunningServer } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let engine: CpuReferenceEngine;

beforeAll(() => {
  model = makeTinyModelDir();
  engine = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" }).engine;
});
afterAll(() => model.cleanup());

const prompts = Array.from({ length: 32 }, (_, i) => `Question ${i}: what is ${i} plus ${i % 7}?`);
const chatBody = (content: string, stream: boolean) => ({
  model: "tiny",
  messages: [{ role: "user", content }],
  max_tokens: 6,
  temperature: 0,
  stream,
});

describe("concurrency", () => {
  let running: RunningServer;
  beforeAll(() => {
    running = startServer({ engine, maxRunning: 32, maxQueued: 32 });
  });
  afterAll(() => running.stop());

  test("32 simultaneous streaming requests each equal the same request served alone", async () => {
    const client = new OpenAI({ baseURL: running.baseURL, apiKey: "x", maxRetries: 0 });
    const alone: string[] = [];
    for (const p of prompts) {
      const r = await client.chat.completions.create(chatBody(p, false) as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
      alone.push(r.choices[0]!.message.content!);
    }
    expect(new Set(alone).size).toBeGreaterThan(1); // the prompts really lead to different outputs
    const stepsBefore = engine.counters.steps;
    const together = await Promise.all(
      prompts.map(async (p) => {
        const stream = await client.chat.completions.create(chatBody(p, true) as OpenAI.Chat.ChatCompletionCreateParamsStreaming);
        let text = "";
        for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
        return text;
      }),
    );
    expect(together).toEqual(alone);
    // Batched: far fewer steps than 32 requests × 6 tokens would take one at a time.
    expect(engine.counters.steps - stepsBefore).toBeLessThan(32 * 6);
    expect(running.server.scheduler.stats()).toEqual({ queued: 0, running: 0, draining: false });
  });

  test("client abort cancels the generation in the engine and frees the slot", async () => {
    const abortedBefore = engine.counters.aborted;
    const controller = new AbortController();
    const res = await fetch(`${running.url}/v1/chat/completions`, {
      method: "POST",
      headers: JSON_HEADERS,
      body: JSON.stringify({ ...chatBody("Tell me a long story", true), max_tokens: 1500, ignore_eos: true }),
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    await reader.read(); // the role chunk: generation is under way
    await waitFor(() => engine.counters.active === 1, 5000, "the sequence to be active");
    controller.abort();
    await waitFor(() => engine.counters.aborted === abortedBefore + 1, 10_000, "the engine to see the abort");
    await waitFor(() => running.server.scheduler.stats().running === 0, 5000, "the slot to be released");
    expect(engine.counters.active).toBe(0);
  });

  test("a non-streaming request's abort also reaches the engine", async () => {
    const abortedBefore = engine.counters.aborted;
    const controller = new AbortController();
    const pending = fetch(`${running.url}/v1/completions`, {
      method: "POST",
      headers: JSON_HEADERS,
      body: JSON.stringify({ model: "tiny", prompt: "Once upon a time", max_tokens: 1500, ignore_eos: true }),
      signal: controller.signal,
    }).catch((e) => e);
    await waitFor(() => engine.counters.active === 1, 5000, "the sequence to be active");
    controller.abort();
    await pending;
    await waitFor(() => engine.counters.aborted === abortedBefore + 1, 10_000, "the engine to see the abort");
    await waitFor(() => running.server.scheduler.stats().running === 0, 5000, "the slot to be released");
  });
});

describe("admission", () => {
  test("429 with OpenAI's body when running and queue are full; queued ones complete", async () => {
    const gated = new GatedEngine(engine);
    const running = startServer({ engine: gated, maxRunning: 1, maxQueued: 1 });
    try {
      const send = () =>
        fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(chatBody("Hello", false)) });
      const first = send();
      await waitFor(() => gated.entered === 1, 5000, "the first request to run");
      const second = send();
      await waitFor(() => running.server.scheduler.stats().queued === 1, 5000, "the second to queue");
      const third = await send();
      expect(third.status).toBe(429);
      const body = await third.json() as any;
      expect(body.error.code).toBe("queue_full");
      expect(body.error.message).toMatch(/capacity/);
      const metrics = await (await fetch(`${running.url}/metrics`)).text();
      expect(metrics).toContain("tuneloom_queue_depth 1");
      expect(metrics).toContain("tuneloom_running_sequences 1");
      gated.release();
      expect((await first).status).toBe(200);
      expect((await second).status).toBe(200);
      const client = new OpenAI({ baseURL: running.baseURL, apiKey: "x", maxRetries: 0 });
      const err = await client.chat.completions.create(chatBody("Hello", false) as any).then(() => null, (e: unknown) => e);
      expect(err).toBeNull();
    } finally {
      await running.stop();
    }
  });

  test("a queued request whose client goes away leaves the queue without reaching the engine", async () => {
    const gated = new GatedEngine(engine);
    const running = startServer({ engine: gated, maxRunning: 1, maxQueued: 4 });
    try {
      const first = fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(chatBody("Hello", false)) });
      await waitFor(() => gated.entered === 1, 5000, "the first request to run");
      const controller = new AbortController();
      const second = fetch(`${running.url}/v1/chat/completions`, {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify(chatBody("Hello", true)),
        signal: controller.signal,
      }).catch((e) => e);
      await waitFor(() => running.server.scheduler.stats().queued === 1, 5000, "the second to queue");
      controller.abort();
      await second;
      await waitFor(() => running.server.scheduler.stats().queued === 0, 5000, "the queue to empty");
      gated.release();
      expect((await first).status).toBe(200);
      expect(gated.entered).toBe(1);
      expect(running.server.scheduler.stats()).toEqual({ queued: 0, running: 0, draining: false });
    } finally {
      await running.stop();
    }
  });

  test("draining: new requests get 503 and /health says so, in-flight ones finish", async () => {
    const gated = new GatedEngine(engine);
    const running = startServer({ engine: gated, maxRunning: 2, maxQueued: 2 });
    try {
      const inflight = fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(chatBody("Hello", true)) });
      await waitFor(() => gated.entered === 1, 5000, "the request to run");
      let drained = false;
      const drain = running.server.scheduler.drain().then(() => (drained = true));
      const refused = await fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(chatBody("Hello", false)) });
      expect(refused.status).toBe(503);
      expect((await refused.json() as any).error.code).toBe("server_draining");
      expect((await fetch(`${running.url}/health`)).status).toBe(503);
      await Bun.sleep(20);
      expect(drained).toBe(false);
      gated.release();
      const events = await readSse(await inflight);
      expect(events.at(-1)).toBe("[DONE]");
      await drain;
      expect(drained).toBe(true);
    } finally {
      await running.stop();
    }
  });
});
