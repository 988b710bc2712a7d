// The server through the official `openai` client over a tiny model: shapes, determinism,
// stream/non-stream equality, exactness against the CPU reference, template parity.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { renderChatTemplate } from "@tuneloom/chat-template";
import { cpuReferenceGreedy } from "@tuneloom/model";
import { loadCpuReferenceEngine, type LoadedModel } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, startServer, type RunningServer, startTinyOpenAIServer, stopTinyOpenAIServer, type TinyOpenAIServer } from "./helpers.ts";

let { model, loaded, running, client } = {} as TinyOpenAIServer;
beforeAll(() => void ({ model, loaded, running, client } = startTinyOpenAIServer()));
afterAll(() => stopTinyOpenAIServer({ model, running }));

const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "What is the capital of France?" },
];

describe("openai client", () => {
  test("GET /v1/models lists the served model", async () => {
    const page = await client.models.list();
    expect(page.data.map((m) => m.id)).toEqual(["tiny"]);
    expect(page.data[0]!.object).toBe("model");
    const one = await client.models.retrieve("tiny");
    expect(one.id).toBe("tiny");
  });

  test("chat, greedy: deterministic, usage adds up, equals the CPU reference's greedy continuation", async () => {
    const a = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 12, temperature: 0 });
    const b = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 12, temperature: 0 });
    expect(a.object).toBe("chat.completion");
    expect(a.id).toMatch(/^chatcmpl-/);
    expect(a.model).toBe("tiny");
    expect(typeof a.created).toBe("number");
    expect(a.choices).toHaveLength(1);
    expect(a.choices[0]!.message.role).toBe("assistant");
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
    expect(["stop", "length"]).toContain(a.choices[0]!.finish_reason);
    expect(a.usage!.total_tokens).toBe(a.usage!.prompt_tokens + a.usage!.completion_tokens);

    // Exactness: the same prompt ids through the reference forward give the same tokens.
    const tok = await (await fetch(`${running.url}/tokenize`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ messages, add_generation_prompt: true }) })).json() as any;
    expect(tok.count).toBe(a.usage!.prompt_tokens);
    const { config, engine } = loaded;
    const weights = (engine as any).weights;
    const ids = cpuReferenceGreedy(config, weights, tok.tokens, a.usage!.completion_tokens);
    const eos = new Set(engine.tokenizer.eosTokenIds);
    const cut = ids.findIndex((id) => eos.has(id));
    const text = engine.tokenizer.decode(cut >= 0 ? ids.slice(0, cut) : ids, { skipSpecialTokens: true });
    expect(a.choices[0]!.message.content).toBe(text);
    expect(a.choices[0]!.finish_reason).toBe(cut >= 0 ? "stop" : "length");
  });

  test("chat stream equals non-stream (greedy) and ends with a usage chunk when asked", async () => {
    const whole = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 10, temperature: 0 });
    const stream = await client.chat.completions.create({
      model: "tiny",
      messages,
      max_tokens: 10,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined = null;
    let first = true;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      if (first) expect(chunk.choices[0]!.delta.role).toBe("assistant");
      first = false;
      if (chunk.choices.length) {
        text += chunk.choices[0]!.delta.content ?? "";
        finish = chunk.choices[0]!.finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(whole.choices[0]!.message.content!);
    expect(finish).toBe(whole.choices[0]!.finish_reason);
    expect(usage).toEqual(whole.usage!);
  });

  test("raw SSE framing: data lines, [DONE] last", async () => {
    const res = await fetch(`${running.baseURL}/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", messages, max_tokens: 3, temperature: 0, stream: true }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const body = await res.text();
    expect(body.endsWith("data: [DONE]\n\n")).toBe(true);
    for (const block of body.split("\n\n").filter(Boolean)) expect(block.startsWith("data: ")).toBe(true);
  });

  test("seeded sampling is reproducible; logprobs are well formed", async () => {
    const req = { model: "tiny", messages, max_tokens: 8, temperature: 1, top_p: 0.9, top_k: 20, seed: 1234, logprobs: true, top_logprobs: 3 } as const;
    const a = await client.chat.completions.create(req as any);
    const b = await client.chat.completions.create(req as any);
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
    const lp = a.choices[0]!.logprobs!.content!;
    expect(lp.length).toBe(a.usage!.completion_tokens);
    for (const entry of lp) {
      expect(entry.logprob).toBeLessThanOrEqual(0);
      expect(entry.top_logprobs).toHaveLength(3);
      const tops = entry.top_logprobs.map((t) => t.logprob);
      expect([...tops].sort((x, y) => y - x)).toEqual(tops);
      expect(entry.logprob).toBeLessThanOrEqual(tops[0]! + 1e-12);
    }
  });

  test("completions: string prompt and token-id prompt, stream equals non-stream", async () => {
    const a = await client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
    expect(a.object).toBe("text_completion");
    expect(a.choices[0]!.finish_reason).toBe("length");
    expect(a.usage!.completion_tokens).toBe(8);
    const tok = await (await fetch(`${running.url}/tokenize`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ prompt: "Once upon a time" }) })).json() as any;
    const b = await client.completions.create({ model: "tiny", prompt: tok.tokens, max_tokens: 8, temperature: 0 });
    expect(b.choices[0]!.text).toBe(a.choices[0]!.text);
    const stream = await client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 8, temperature: 0, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(a.choices[0]!.text);
    const withLogprobs = await client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 4, temperature: 0, logprobs: 2 });
    const lp = withLogprobs.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(4);
    expect(lp.token_logprobs).toHaveLength(4);
    expect(Object.keys(lp.top_logprobs![0]!).length).toBeGreaterThanOrEqual(1);
  });

  test("stop strings: output cut before the stop string, finish_reason stop, stream and not", async () => {
    const full = await client.completions.create({ model: "tiny", prompt: "Hello! How are you", max_tokens: 16, temperature: 0 });
    const text = full.choices[0]!.text;
    expect(text.length).toBeGreaterThan(4);
    const stop = text.slice(3, 5);
    const expected = text.slice(0, text.indexOf(stop));
    const cut = await client.completions.create({ model: "tiny", prompt: "Hello! How are you", max_tokens: 16, temperature: 0, stop: [stop, "\u0000never"] });
    expect(cut.choices[0]!.text).toBe(expected);
    expect(cut.choices[0]!.finish_reason).toBe("stop");
    const stream = await client.completions.create({ model: "tiny", prompt: "Hello! How are you", max_tokens: 16, temperature: 0, stop, stream: true });
    let streamed = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.text ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(streamed).toBe(expected);
    expect(finish).toBe("stop");
  });

  test("/apply-template equals chat-template's render of the same messages", async () => {
    const conversation = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi there" },
      { role: "assistant", content: "Hello." },
      { role: "user", content: "Bye" },
    ];
    const res = await fetch(`${running.url}/apply-template`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ messages: conversation }) });
    expect(res.status).toBe(200);
    const { prompt } = await res.json() as any;
    const t = loaded.engine.chatTemplate;
    expect(prompt).toBe(renderChatTemplate(t.source, { ...t.specialTokens, messages: conversation, add_generation_prompt: true }));
    expect(prompt.endsWith("<|im_start|>assistant\n")).toBe(true);
    const noGen = await fetch(`${running.url}/apply-template`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ messages: conversation, add_generation_prompt: false }) });
    expect((await noGen.json() as any).prompt).toBe(renderChatTemplate(t.source, { ...t.specialTokens, messages: conversation, add_generation_prompt: false }));
  });

  test("content parts reach the template as sent; a template that needs strings says so", async () => {
    const res = await fetch(`${running.url}/apply-template`, {
      method: "POST",
      headers: JSON_HEADERS,
      body: JSON.stringify({ messages: [{ role: "user", content: [{ type: "text", text: "Hi" }] }] }),
    });
    expect(res.status).toBe(400);
    const { error } = await res.json() as any;
    expect(error.param).toBe("messages");
    expect(error.message).toMatch(/string content/);
  });

  test("/tokenize and /detokenize round-trip (vLLM shapes)", async () => {
    const res = await fetch(`${running.url}/tokenize`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ model: "tiny", prompt: "The quick brown fox" }) });
    const tok = await res.json() as any;
    expect(tok.count).toBe(tok.tokens.length);
    expect(tok.max_model_len).toBe(loaded.engine.maxContext);
    const de = await (await fetch(`${running.url}/detokenize`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ tokens: tok.tokens }) })).json() as any;
    expect(de.prompt).toBe("The quick brown fox");
  });

  test("/health and /metrics", async () => {
    const health = await fetch(`${running.url}/health`);
    expect(health.status).toBe(200);
    const metrics = await (await fetch(`${running.url}/metrics`)).text();
    expect(metrics).toContain('tuneloom_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}');
    expect(metrics).toMatch(/tuneloom_generation_tokens_total \d+/);
    expect(metrics).toMatch(/tuneloom_prompt_tokens_total \d+/);
    expect(metrics).toContain("tuneloom_time_to_first_token_seconds_bucket");
    expect(metrics).toContain("tuneloom_e2e_request_latency_seconds_count");
    expect(metrics).toContain("tuneloom_queue_depth 0");
    expect(metrics).toContain("tuneloom_running_sequences 0");
  });
});
