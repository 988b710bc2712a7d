// Tool calls: the parsers of each fixture template's format (whole text and every chunking, markers
// split across chunks), then the round trip through the official `openai` client with the model's
// output forced by a scripted engine: non-streamed message.tool_calls, streamed delta.tool_calls,
// tool_choice required/named, refusals.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import OpenAI from "openai";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { loadCpuReferenceEngine, type LoadedModel } from "../src/load.ts";
import { detectToolFormat } from "../src/tool-format.ts";
import type { ToolParseEvent } from "../src/tool-parser.ts";
import { makeTinyModelDir, startServer, type RunningServer } from "./helpers.ts";

const templateOf = (name: string) => readFileSync(join(import.meta.dir, "fixtures/tool-templates", `${name}.jinja`), "utf8");
const TEMPLATES = {
  hermes: templateOf("Qwen-Qwen2.5-7B-Instruct"),
  llama3_json: templateOf("meta-llama-Llama-3.1-8B-Instruct"),
  mistral: templateOf("mistralai-Mistral-Nemo-Instruct-2407"),
} as const;

/** Runs a parser over `chunks` and merges adjacent content, as a client would see it. */
function parseChunks(format: keyof typeof TEMPLATES, chunks: string[]): ToolParseEvent[] {
  const parser = detectToolFormat(TEMPLATES[format])!.parser();
  const events = [...chunks.flatMap((c) => parser.push(c)), ...parser.finish()];
  const out: ToolParseEvent[] = [];
  for (const ev of events) {
    const last = out.at(-1);
    if (ev.type === "content" && last?.type === "content") last.text += ev.text;
    else out.push({ ...ev });
  }
  return out;
}

/** Every way of cutting `text` in two, and one character at a time. */
function chunkings(text: string): string[][] {
  const cuts = Array.from({ length: text.length - 1 }, (_, i) => [text.slice(0, i + 1), text.slice(i + 1)]);
  return [[text], [...text], ...cuts];
}

const weather = { type: "tool_call", name: "get_weather", arguments: '{"city":"Paris","unit":"C"}' } as const;
const time = { type: "tool_call", name: "get_time", arguments: '{"tz":"UTC"}' } as const;

describe("tool-call parsers", () => {
  const cases: [keyof typeof TEMPLATES, string, ToolParseEvent[]][] = [
    ["hermes", 'Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>', [{ type: "content", text: "Let me check." }, weather]],
    ["hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>', [weather, time]],
    ["hermes", "No tools needed: 2 < 3 and <tool is not a tag.", [{ type: "content", text: "No tools needed: 2 < 3 and <tool is not a tag." }]],
    ["hermes", "<tool_call>\n{not json}\n</tool_call>", [{ type: "content", text: "<tool_call>\n{not json}\n</tool_call>" }]],
    ["hermes", '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}', [time]], // ended without </tool_call>
    ["llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}', [weather]],
    ["llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}; {"name": "get_time", "parameters": {"tz": "UTC"}}', [weather, time]],
    ["llama3_json", "The weather is {sunny}.", [{ type: "content", text: "The weather is {sunny}." }]],
    ["llama3_json", '{"answer": 42}', [{ type: "content", text: '{"answer": 42}' }]],
    ["mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, {"name": "get_time", "arguments": {"tz": "UTC"}}]', [weather, time]],
    ["mistral", "Plain [answer] here.", [{ type: "content", text: "Plain [answer] here." }]],
  ];
  for (const [format, text, want] of cases)
    test(`${format}: ${JSON.stringify(text).slice(0, 60)}: same result for every chunking`, () => {
      for (const chunks of chunkings(text)) expect(parseChunks(format, chunks)).toEqual(want);
    });

  test("the format comes from the template text; templates without one have none", () => {
    expect(detectToolFormat(TEMPLATES.hermes)!.name).toBe("hermes");
    expect(detectToolFormat(TEMPLATES.llama3_json)!.name).toBe("llama3_json");
    expect(detectToolFormat(TEMPLATES.mistral)!.name).toBe("mistral");
    expect(detectToolFormat("{% for m in messages %}{{ m.content }}{% endfor %}")).toBeNull();
  });
});

/** Emits whatever `script` returns for the rendered prompt, token by token, then EOS. */
class ScriptedEngine implements InferenceEngine {
  requests: { request: GenerationRequest; prompt: string }[] = [];
  script: (prompt: string) => string = () => "";
  chatTemplate: InferenceEngine["chatTemplate"];
  constructor(private readonly inner: InferenceEngine, template: string) {
    this.chatTemplate = { source: template, sha256: "0".repeat(64), origin: "test", specialTokens: { bos_token: "<s>", eos_token: "</s>" } };
  }
  get modelId() { return this.inner.modelId; }
  get maxContext() { return this.inner.maxContext; }
  get maxBatchSize() { return this.inner.maxBatchSize; }
  get tokenizer() { return this.inner.tokenizer; }
  async *submit(request: GenerationRequest): AsyncGenerator<TokenEvent> {
    const prompt = this.tokenizer.decode(request.promptIds);
    this.requests.push({ request, prompt });
    const ids = this.tokenizer.encode(this.script(prompt), { addSpecialTokens: false }).ids.slice(0, request.maxTokens - 1);
    for (const tokenId of ids) yield { tokenId, logprob: null, topLogprobs: null, finishReason: null };
    yield { tokenId: this.tokenizer.eosTokenIds[0]!, logprob: null, topLogprobs: null, finishReason: "stop" };
  }
  close() { return Promise.resolve(); }
}

let model: { dir: string; cleanup: () => void };
let loaded: LoadedModel;
beforeAll(() => {
  model = makeTinyModelDir();
  loaded = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" });
});
afterAll(() => model.cleanup());

const tools: OpenAI.Chat.ChatCompletionTool[] = [
  { type: "function", function: { name: "get_weather", description: "Weather in a city", parameters: { type: "object", properties: { city: { type: "string" }, unit: { type: "string" } } } } },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: { tz: { type: "string" } } } } },
];
const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: "user", content: "Weather in Paris?" }];

/** Streams a chat completion and assembles it the way SDK users do. */
async function streamed(client: OpenAI, params: Omit<OpenAI.Chat.ChatCompletionCreateParamsStreaming, "stream">) {
  const stream = await client.chat.completions.create({ ...params, stream: true });
  let content = "";
  const calls: { id?: string; type?: string; name: string; arguments: string }[] = [];
  let finish: string | null = null;
  const order: string[] = [];
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.delta.content) content += choice.delta.content;
    for (const tc of choice.delta.tool_calls ?? []) {
      const call = (calls[tc.index] ??= { name: "", arguments: "" });
      if (tc.id) call.id = tc.id;
      if (tc.type) call.type = tc.type;
      if (tc.function?.name) (call.name += tc.function.name), order.push(`name${tc.index}`);
      if (tc.function?.arguments) (call.arguments += tc.function.arguments), order.push(`args${tc.index}`);
    }
    finish = choice.finish_reason ?? finish;
  }
  return { content, calls, finish, order };
}

const OUTPUTS = {
  hermes: 'Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>',
  llama3_json: '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}; {"name": "get_time", "parameters": {"tz": "UTC"}}',
  mistral: 'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, {"name": "get_time", "arguments": {"tz": "UTC"}}]',
};

for (const format of ["hermes", "llama3_json", "mistral"] as const) {
  describe(`openai client, ${format} template`, () => {
    let engine: ScriptedEngine;
    let running: RunningServer;
    let client: OpenAI;
    beforeAll(() => {
      engine = new ScriptedEngine(loaded.engine, TEMPLATES[format]);
      running = startServer({ engine });
      client = new OpenAI({ baseURL: running.baseURL, apiKey: "unused", maxRetries: 0 });
    });
    afterAll(() => running.stop());

    test("non-streamed: message.tool_calls, content before the call, finish_reason tool_calls; streamed: the same calls, no markup", async () => {
      engine.script = () => OUTPUTS[format];
      const res = await client.chat.completions.create({ model: "tiny", messages, tools });
      const choice = res.choices[0]!;
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.content).toBe(format === "llama3_json" ? null : "Let me check.");
      const calls = choice.message.tool_calls!.map((c) => (c.type === "function" ? c : null)!);
      expect(calls.map((c) => [c.type, c.function.name, JSON.parse(c.function.arguments)])).toEqual([
        ["function", "get_weather", { city: "Paris", unit: "C" }],
        ["function", "get_time", { tz: "UTC" }],
      ]);
      for (const c of calls) expect(c.id).toMatch(format === "mistral" ? /^[A-Za-z0-9]{9}$/ : /^call_[A-Za-z0-9]+$/);
      expect(engine.requests.at(-1)!.prompt).toContain("get_weather"); // the tools were rendered

      const s = await streamed(client, { model: "tiny", messages, tools });
      expect(s.finish).toBe("tool_calls");
      expect(s.content).toBe(choice.message.content ?? "");
      expect(s.calls.map((c) => [c.type, c.name, c.arguments])).toEqual(calls.map((c) => ["function", c.function.name, c.function.arguments]));
      expect(s.order).toEqual(["name0", "args0", "name1", "args1"]);
    });

    test("plain text stays text: finish_reason stop, no tool_calls", async () => {
      engine.script = () => "It is sunny in Paris.";
      const res = await client.chat.completions.create({ model: "tiny", messages, tools });
      expect(res.choices[0]!.finish_reason).toBe("stop");
      expect(res.choices[0]!.message.content).toBe("It is sunny in Paris.");
      expect(res.choices[0]!.message.tool_calls).toBeUndefined();
      const s = await streamed(client, { model: "tiny", messages, tools });
      expect([s.content, s.finish, s.calls.length]).toEqual(["It is sunny in Paris.", "stop", 0]);
    });

    test("tool_choice named: the prompt ends inside that call; the model writes only the arguments", async () => {
      const prefix = detectToolFormat(TEMPLATES[format])!.forcedPrefix("get_time");
      engine.script = () => ({ hermes: '{"tz": "UTC"}}\n</tool_call>', llama3_json: '{"tz": "UTC"}}', mistral: '{"tz": "UTC"}}]' })[format];
      const res = await client.chat.completions.create({ model: "tiny", messages, tools, tool_choice: { type: "function", function: { name: "get_time" } } });
      expect(engine.requests.at(-1)!.prompt.endsWith(prefix)).toBe(true);
      expect(res.choices[0]!.finish_reason).toBe("tool_calls");
      const call = res.choices[0]!.message.tool_calls![0]!;
      expect(call.type === "function" && [call.function.name, JSON.parse(call.function.arguments)]).toEqual(["get_time", { tz: "UTC" }]);
    });

    test("tool_choice required: forced opening; output that does not parse comes back as text with finish_reason stop", async () => {
      engine.script = () => "nonsense";
      const res = await client.chat.completions.create({ model: "tiny", messages, tools, tool_choice: "required" });
      expect(res.choices[0]!.finish_reason).toBe("stop");
      expect(res.choices[0]!.message.content).toContain("nonsense");
      expect(res.choices[0]!.message.tool_calls).toBeUndefined();
    });

    test("tool_choice none: tools not rendered, output not parsed; an unknown named tool is a 400", async () => {
      engine.script = () => OUTPUTS[format];
      const res = await client.chat.completions.create({ model: "tiny", messages, tools, tool_choice: "none" });
      expect(res.choices[0]!.finish_reason).toBe("stop");
      expect(engine.requests.at(-1)!.prompt).not.toContain("get_weather");
      const err = await client.chat.completions.create({ model: "tiny", messages, tools, tool_choice: { type: "function", function: { name: "nope" } } }).catch((e) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.param).toBe("tool_choice.function.name");
    });

    test("parallel_tool_calls false keeps the first call", async () => {
      engine.script = () => OUTPUTS[format];
      const res = await client.chat.completions.create({ model: "tiny", messages, tools, parallel_tool_calls: false });
      expect(res.choices[0]!.message.tool_calls!.length).toBe(1);
    });
  });
}
