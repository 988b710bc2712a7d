// Nothing a client sends, and no engine failure, takes the server down: a thrown error is a 500
// in OpenAI's body (or an in-band error event once a stream has started), and the next request
// is served.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, readSse, startServer, type RunningServer } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let running: RunningServer;
let failNext: "none" | "sync" | "midway" = "none";

/** Delegates to the real engine, failing on demand: at submit, or after the first token. */
function flakyEngine(inner: InferenceEngine): InferenceEngine {
  return {
    get modelId() { return inner.modelId; },
    get maxContext() { return inner.maxContext; },
    get maxBatchSize() { return inner.maxBatchSize; },
    get tokenizer() { return inner.tokenizer; },
    get chatTemplate() { return inner.chatTemplate; },
    close: () => inner.close(),
    submit(request: GenerationRequest, signal: AbortSignal): AsyncIterable<TokenEvent> {
      const mode = failNext;
      failNext = "none";
      if (mode === "sync") throw new Error("engine exploded at submit");
      return (async function* () {
        let n = 0;
        for await (const ev of inner.submit(request, signal)) {
          if (mode === "midway" && n++ === 1) throw new Error("engine exploded mid-generation");
          yield ev;
        }
      })();
    },
  };
}

beforeAll(() => {
  model = makeTinyModelDir();
  running = startServer({ engine: flakyEngine(loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" }).engine) });
});
afterAll(async () => {
  await running.stop();
  model.cleanup();
});

const body = (stream: boolean) => JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 4, temperature: 0, ignore_eos: true, stream });
const post = (b: string) => fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: b });

describe("robustness", () => {
  test("engine failure at submit → 500 with OpenAI's body; then a good request works", async () => {
    failNext = "sync";
    const res = await post(body(false));
    expect(res.status).toBe(500);
    const { error } = await res.json() as any;
    expect(error.type).toBe("server_error");
    expect(error.message).toContain("engine exploded at submit");
    expect((await post(body(false))).status).toBe(200);
    expect(running.server.scheduler.stats().running).toBe(0);
  });

  test("engine failure mid-generation, non-stream → 500; stream → in-band error then [DONE]", async () => {
    failNext = "midway";
    expect((await post(body(false))).status).toBe(500);
    failNext = "midway";
    const res = await post(body(true));
    expect(res.status).toBe(200);
    const events = await readSse(res);
    expect(events.at(-1)).toBe("[DONE]");
    const err = events.at(-2) as Record<string, any>;
    expect(err.error.message).toContain("engine exploded mid-generation");
    expect(running.server.scheduler.stats().running).toBe(0);
    const ok = await post(body(false));
    expect(ok.status).toBe(200);
    expect((await ok.json() as any).usage.completion_tokens).toBe(4);
  });

  test("odd but valid JSON values and headers do not break anything", async () => {
    for (const b of ["null", "42", '"str"', "true", "{}", '{"messages": null}', '{"messages": [null]}', '{"messages": [{"role": null}]}', '{"__proto__": {"x": 1}, "messages": []}']) {
      const res = await post(b);
      expect(res.status).toBe(400);
      expect(((await res.json()) as any).error.type).toBe("invalid_request_error");
    }
    const weird = await fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: new Uint8Array([0xff, 0xfe, 0x00]) });
    expect(weird.status).toBe(400);
    const huge = await post(JSON.stringify({ messages: [{ role: "user", content: "word ".repeat(5000) }], max_tokens: 1 }));
    expect(huge.status).toBe(400); // ~5000 tokens > 2048 context
    expect((await post(body(false))).status).toBe(200);
  });
});
