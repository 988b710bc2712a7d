// Hostile and malformed input: each gets the right status and OpenAI's error body, and the
// server answers a good request afterwards.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, startServer, type RunningServer } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let running: RunningServer;
let keyed: RunningServer;

beforeAll(() => {
  model = makeTinyModelDir();
  const { engine } = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" });
  running = startServer({ engine });
  keyed = startServer({ engine, apiKey: "sekret" });
});
afterAll(async () => {
  await running.stop();
  await keyed.stop();
  model.cleanup();
});

const good = { model: "tiny", messages: [{ role: "user", content: "Hello" }], max_tokens: 2, temperature: 0 };

async function post(path: string, body: string | object, headers: Record<string, string> = {}) {
  return fetch(`${running.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

async function expectError(res: Response, status: number, param?: string | null, messageLike?: RegExp) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toContain("application/json");
  const body = await res.json() as any;
  expect(Object.keys(body)).toEqual(["error"]);
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(typeof body.error.message).toBe("string");
  expect(body.error.message.length).toBeGreaterThan(0);
  if (status === 400) expect(body.error.type).toBe("invalid_request_error");
  if (param !== undefined) expect(body.error.param).toBe(param);
  if (messageLike) expect(body.error.message).toMatch(messageLike);
  return body.error;
}

let goodAnswer: string | undefined;
/** The server still answers a good request right after a bad one, with the same (greedy) answer every time. */
async function expectGoodRequestServed() {
  const res = await post("/v1/chat/completions", good);
  expect(res.status).toBe(200);
  const body = await res.json() as any;
  expect(body.choices[0].message.role).toBe("assistant");
  expect(body.usage.completion_tokens).toBeGreaterThan(0);
  goodAnswer ??= body.choices[0].message.content as string;
  expect(body.choices[0].message.content).toBe(goodAnswer);
}

describe("bad requests", () => {
  const cases: [string, string, string | object, number, string | null | undefined, RegExp?][] = [
    ["invalid JSON", "/v1/chat/completions", '{"model": "tiny", "messages": [', 400, null, /not valid JSON/],
    ["empty body", "/v1/chat/completions", "", 400, null],
    ["JSON that is not an object", "/v1/chat/completions", "[1,2,3]", 400, null, /JSON object/],
    ["missing messages", "/v1/chat/completions", { model: "tiny" }, 400, "messages", /required/],
    ["empty messages", "/v1/chat/completions", { model: "tiny", messages: [] }, 400, "messages"],
    ["messages of the wrong type", "/v1/chat/completions", { model: "tiny", messages: "hi" }, 400, "messages"],
    ["unknown role", "/v1/chat/completions", { model: "tiny", messages: [{ role: "wizard", content: "x" }] }, 400, "messages[0].role", /role/],
    ["content of the wrong type", "/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: 5 }] }, 400, "messages[0].content"],
    ["image content part", "/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }, 400, "messages[0].content", /text/],
    ["model of the wrong type", "/v1/chat/completions", { ...good, model: 5 }, 400, "model"],
    ["role of the wrong type", "/v1/chat/completions", { model: "tiny", messages: [{ role: 1, content: "x" }] }, 400, "messages[0].role"],
    ["max_tokens as a string", "/v1/chat/completions", { ...good, max_tokens: "5" }, 400, "max_tokens"],
    ["max_tokens not an integer", "/v1/chat/completions", { ...good, max_tokens: 1.5 }, 400, "max_tokens"],
    ["max_tokens negative", "/v1/chat/completions", { ...good, max_tokens: -3 }, 400, "max_tokens"],
    ["temperature as a string", "/v1/chat/completions", { ...good, temperature: "hot" }, 400, "temperature"],
    ["max_tokens zero", "/v1/chat/completions", { ...good, max_tokens: 0 }, 400, "max_tokens"],
    ["huge max_tokens", "/v1/chat/completions", { ...good, max_tokens: 1e9 }, 400, "max_tokens", /context length/],
    ["temperature out of range", "/v1/chat/completions", { ...good, temperature: 7 }, 400, "temperature"],
    ["top_p zero", "/v1/chat/completions", { ...good, top_p: 0 }, 400, "top_p"],
    ["stop of the wrong type", "/v1/chat/completions", { ...good, stop: 5 }, 400, "stop"],
    ["n > 1", "/v1/chat/completions", { ...good, n: 3 }, 400, "n", /one choice/],
    ["top_logprobs without logprobs", "/v1/chat/completions", { ...good, top_logprobs: 2 }, 400, "top_logprobs"],
    ["top_logprobs too many", "/v1/chat/completions", { ...good, logprobs: true, top_logprobs: 50 }, 400, "top_logprobs"],
    ["stream not a boolean", "/v1/chat/completions", { ...good, stream: "yes" }, 400, "stream"],
    ["unknown model", "/v1/chat/completions", { ...good, model: "gpt-9" }, 404, "model", /gpt-9/],
    ["template raises on a lone assistant turn? no: tool without content", "/v1/chat/completions", { model: "tiny", messages: [{ role: "tool" }] }, 400, "messages[0].content"],
    ["completions: missing prompt", "/v1/completions", { model: "tiny" }, 400, "prompt", /required/],
    ["completions: token id out of vocabulary", "/v1/completions", { model: "tiny", prompt: [1, 2, 99999999] }, 400, "prompt", /vocabulary/],
    ["completions: more prompts than one request may hold", "/v1/completions", { model: "tiny", prompt: Array.from({ length: 65 }, () => "a") }, 400, "prompt"],
    ["completions: a bad token id in the second prompt", "/v1/completions", { model: "tiny", prompt: [[1], [1e6]] }, 400, "prompt[1]", /outside the vocabulary/],
    ["chat: unknown field", "/v1/chat/completions", { ...good, bogus_field: 1 }, 400, "bogus_field", /Unrecognized request argument supplied: bogus_field/],
    ["completions: unknown field", "/v1/completions", { model: "tiny", prompt: "a", bogus_field: 1 }, 400, "bogus_field", /bogus_field/],
    ["chat: unknown nested field", "/v1/chat/completions", { ...good, stream_options: { include_usage: true, bogus: 1 } }, 400, "stream_options.bogus"],
    ["chat: guided_json", "/v1/chat/completions", { ...good, guided_json: { type: "object" } }, 400, "guided_json", /not supported/],
    ["chat: response_format json_schema", "/v1/chat/completions", { ...good, response_format: { type: "json_schema", json_schema: {} } }, 400, "response_format", /not supported/],
    ["chat: min_tokens above max_tokens", "/v1/chat/completions", { ...good, max_tokens: 2, min_tokens: 3 }, 400, "min_tokens"],
    ["chat: repetition_penalty 0", "/v1/chat/completions", { ...good, repetition_penalty: 0 }, 400, "repetition_penalty"],
    ["chat: tool_choice required without tools", "/v1/chat/completions", { ...good, tool_choice: "required" }, 400, "tool_choice", /needs tools/],
    ["chat: tools on a template that renders none", "/v1/chat/completions", { ...good, tools: [{ type: "function", function: { name: "f", parameters: {} } }] }, 400, "tools", /does not render tools/],
    ["completions: logprobs bool", "/v1/completions", { model: "tiny", prompt: "a", logprobs: true }, 400, "logprobs"],
    ["completions: huge max_tokens", "/v1/completions", { model: "tiny", prompt: "a", max_tokens: 5000 }, 400, "max_tokens", /context length/],
    ["completions: empty token prompt", "/v1/completions", { model: "tiny", prompt: [] }, 400, "prompt"],
    ["tokenize: neither prompt nor messages", "/tokenize", { model: "tiny" }, 400, undefined],
    ["detokenize: bad id", "/detokenize", { tokens: [-1] }, 400, undefined],
    ["detokenize: wrong type", "/detokenize", { tokens: "abc" }, 400, "tokens"],
    ["apply-template: no messages", "/apply-template", {}, 400, "messages"],
  ];
  for (const [name, path, body, status, param, like] of cases) {
    test(`${name}, then a good request`, async () => {
      await expectError(await post(path, body), status, param, like);
      await expectGoodRequestServed();
    });
  }

  test("a 10 MB body is refused with 413 (Content-Length), then a good request", async () => {
    const big = JSON.stringify({ ...good, messages: [{ role: "user", content: "x".repeat(10 * 1024 * 1024) }] });
    const err = await expectError(await post("/v1/chat/completions", big), 413);
    expect(err.message).toMatch(/limit/);
    await expectGoodRequestServed();
  });

  test("a chunked body without Content-Length is cut off at the limit with 413", async () => {
    const chunk = new TextEncoder().encode("x".repeat(1024 * 1024));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 10) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const res = await fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: JSON_HEADERS, body: stream });
    await expectError(res, 413);
    await expectGoodRequestServed();
  });

  test("unknown route → 404 in OpenAI's body", async () => {
    await expectError(await fetch(`${running.url}/v1/nope`), 404);
  });

  test("API key: missing or wrong → 401, right → 200; /health stays open", async () => {
    const url = `${keyed.url}/v1/chat/completions`;
    const body = JSON.stringify(good);
    await expectError(await fetch(url, { method: "POST", headers: JSON_HEADERS, body }), 401);
    await expectError(await fetch(url, { method: "POST", body, headers: { ...JSON_HEADERS, authorization: "Bearer wrong" } }), 401);
    await expectError(await fetch(`${keyed.url}/v1/models`, { headers: { authorization: "Bearer sekretX" } }), 401);
    const ok = await fetch(url, { method: "POST", body, headers: { ...JSON_HEADERS, authorization: "Bearer sekret" } });
    expect(ok.status).toBe(200);
    expect((await fetch(`${keyed.url}/health`)).status).toBe(200);
    const client = new OpenAI({ baseURL: keyed.baseURL, apiKey: "wrong", maxRetries: 0 });
    const error = await client.models.list().then(
      () => null,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
  });

  test("the openai client raises BadRequestError with the message", async () => {
    const client = new OpenAI({ baseURL: running.baseURL, apiKey: "x", maxRetries: 0 });
    try {
      await client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "hi" }], n: 2 });
      throw new Error("expected a 400");
    } catch (err) {
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("n");
    }
  });

  test("after all of that, a good request is served", async () => {
    const res = await post("/v1/chat/completions", good);
    expect(res.status).toBe(200);
    const body = await res.json() as any;
    expect(body.choices[0].message.role).toBe("assistant");
    const metrics = await (await fetch(`${running.url}/metrics`)).text();
    expect(metrics).toMatch(/tuneloom_requests_total\{endpoint="\/v1\/chat\/completions",method="POST",status="400"\} \d+/);
  });
});
