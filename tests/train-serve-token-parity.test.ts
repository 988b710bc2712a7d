// Train/serve parity at the level of token ids, through the real trainer and the real server:
// for every fixture template, on tiny models with and without `add_bos_token`,
//  - the ids the trainer builds for a conversation begin with exactly the ids the server feeds
//    the model for the same messages minus the final assistant turn (add_generation_prompt), and
//    the trainer's first target token is the first token the server asks the model for;
//  - the trainer's full ids equal what the server's /tokenize returns for the conversation.
// Both sides go through @tuneloom/model's serving-files.ts and chat-prompt.ts; this test is what
// keeps them from drifting apart again.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadServingTokenizer, resolveServingTemplate, writeTinyModel } from "@tuneloom/model";
import { createServer, loadCpuReferenceEngine, type GenerationRequest, type InferenceEngine, type TokenEvent } from "@tuneloom/server";
import { IGNORE_INDEX, TokenizeError, parseJsonl, tokenizeRow } from "@tuneloom/trainer";
import { templateFiles, templateSource, trainingCases, type GoldenCase } from "./golden-fixtures.ts";

const root = mkdtempSync(join(tmpdir(), "token-parity-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** The tiny models: llama with add_bos_token true and false, qwen2 with no BOS token at all. */
const VARIANTS = [
  { name: "llama, add_bos_token: true", arch: "llama", addBos: true },
  { name: "llama, add_bos_token: false", arch: "llama", addBos: false },
  { name: "qwen2, no BOS token", arch: "qwen2", addBos: null },
] as const;

function makeModel(variant: (typeof VARIANTS)[number]): string {
  const dir = join(root, variant.name.replace(/\W+/g, "-"));
  writeTinyModel(dir, { arch: variant.arch, seed: 3 });
  if (variant.addBos !== null) {
    const file = join(dir, "tokenizer_config.json");
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, "utf8")), add_bos_token: variant.addBos }));
  }
  return dir;
}

/** Records the prompt ids the server submits and ends each sequence at once. */
class RecordingEngine implements InferenceEngine {
  submitted: number[][] = [];
  constructor(private readonly inner: InferenceEngine) {}
  get modelId() { return this.inner.modelId; }
  get maxContext() { return 1 << 20; }
  get maxBatchSize() { return 1; }
  get tokenizer() { return this.inner.tokenizer; }
  get chatTemplate() { return this.inner.chatTemplate; }
  async *submit(request: GenerationRequest): AsyncGenerator<TokenEvent> {
    this.submitted.push([...request.promptIds]);
    yield { tokenId: this.inner.tokenizer.eosTokenIds[0]!, logprob: null, topLogprobs: null, finishReason: "stop" };
  }
  close(): Promise<void> { return this.inner.close(); }
}

async function post(server: ReturnType<typeof createServer>, path: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await server.fetch(new Request(`http://local${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }));
  return { status: res.status, json: await res.json() };
}

/** The trainer's ids and labels for a conversation, as `train` builds them (prompt turns masked). */
function trainerIds(c: GoldenCase, modelDir: string, kwargs: Record<string, unknown>) {
  const template = resolveServingTemplate(modelDir);
  const row = { prompt: c.messages.slice(0, -1), completion: c.messages.slice(-1), ...(c.tools ? { tools: c.tools } : {}) };
  const parsed = parseJsonl(JSON.stringify(row), "parity.jsonl");
  if (parsed.rows.length !== 1) return null;
  let result;
  try {
    result = tokenizeRow(parsed.rows[0]!, {
      template: template.source, specialTokens: template.specialTokens, tokenizer: loadServingTokenizer(modelDir),
      maxLength: 1 << 20, templateKwargs: kwargs,
    });
  } catch (e) {
    if (e instanceof TokenizeError) return null; // the template refuses this model (e.g. no bos_token) or conversation
    throw e;
  }
  if (!result.ok || result.skippedTurns.length > 0) return null; // not prefix-stable: training leaves the turn out
  return { ids: [...result.example.inputIds], labels: [...result.example.labels] };
}

for (const variant of VARIANTS) {
  describe(`train/serve token parity: ${variant.name}`, () => {
    const modelDir = makeModel(variant);
    const comparedPerTemplate = new Map<string, number>();
    for (const file of templateFiles) {
      test(file, async () => {
        writeFileSync(join(modelDir, "chat_template.jinja"), templateSource(file));
        const engine = new RecordingEngine(loadCpuReferenceEngine({ modelDir }).engine);
        const server = createServer({ engine, logError: () => {} });
        let compared = 0;
        for (const c of trainingCases().filter((t) => t.template_file === file)) {
          if (c.messages.length < 2 || c.messages.at(-1)!.role !== "assistant") continue;
          const kwargs = { ...c.extra, ...(c.documents ? { documents: c.documents } : {}) };
          const trained = trainerIds(c, modelDir, kwargs);
          if (!trained) continue;
          const request = { model: engine.modelId, tools: c.tools ?? undefined, chat_template_kwargs: kwargs };
          const chat = await post(server, "/v1/chat/completions", { ...request, messages: c.messages.slice(0, -1), max_tokens: 1 });
          if (chat.status === 400) continue; // not expressible as an OpenAI request (the schema or the template refused it)
          expect(chat.status).toBe(200);
          const served = engine.submitted.at(-1)!;
          // The serve-time prompt is the trainer's sequence up to its first target token.
          const firstTarget = trained.labels.findIndex((l, t) => t > 0 && l !== IGNORE_INDEX);
          expect({ case: c.id, ids: trained.ids.slice(0, firstTarget) }).toEqual({ case: c.id, ids: served });
          const tokenized = await post(server, "/tokenize", { ...request, messages: c.messages, add_generation_prompt: false });
          expect(tokenized.status).toBe(200);
          expect({ case: c.id, ids: trained.ids }).toEqual({ case: c.id, ids: tokenized.json.tokens });
          compared++;
        }
        comparedPerTemplate.set(file, compared);
      });
    }
    test("most templates and conversations were compared, not skipped", () => {
      const total = [...comparedPerTemplate.values()].reduce((a, b) => a + b, 0);
      expect(total).toBeGreaterThan(20);
      // Up to 4 templates compare nothing: DeepSeek-R1 drops earlier reasoning (not prefix-stable),
      // Command R and Hermes-3 tool_use have only tool cases the server's tool-call parser does not
      // cover or the schema refuses, and Functionary's tool format is refused by the server (400).
      expect([...comparedPerTemplate.values()].filter((n) => n > 0).length).toBeGreaterThanOrEqual(templateFiles.length - 4);
    });
  });
}


// One role rule for both sides: `developer` (OpenAI's newer name for `system`) is rendered as
// `system` in training rows and in requests, so a request can never build a prompt shape that
// no adapter was trained on.
describe("train/serve parity: the developer role", () => {
  const modelDir = makeModel(VARIANTS[1]);
  const template = "meta-llama-Llama-3.1-8B-Instruct.jinja";
  const conversation = (role: string) => [
    { role, content: "Answer in one word." },
    { role: "user", content: "Capital of France?" },
    { role: "assistant", content: "Paris" },
  ];
  const trainerRow = (role: string) => {
    const row = { prompt: conversation(role).slice(0, -1), completion: conversation(role).slice(-1) };
    const t = resolveServingTemplate(modelDir);
    const result = tokenizeRow(parseJsonl(JSON.stringify(row), "roles.jsonl").rows[0]!, {
      template: t.source, specialTokens: t.specialTokens, tokenizer: loadServingTokenizer(modelDir), maxLength: 1 << 20,
    });
    if (!result.ok) throw new Error("the row did not tokenize");
    return [...result.example.inputIds];
  };

  test("training: a developer row gives exactly the ids of the same row with system", () => {
    writeFileSync(join(modelDir, "chat_template.jinja"), templateSource(template));
    expect(trainerRow("developer")).toEqual(trainerRow("system"));
  });

  test("serving: /tokenize and the prompt fed to the model treat developer as system, and match training", async () => {
    writeFileSync(join(modelDir, "chat_template.jinja"), templateSource(template));
    const engine = new RecordingEngine(loadCpuReferenceEngine({ modelDir }).engine);
    const server = createServer({ engine, logError: () => {} });
    const tok = async (role: string) => (await post(server, "/tokenize", { model: engine.modelId, messages: conversation(role), add_generation_prompt: false })).json.tokens;
    expect(await tok("developer")).toEqual(await tok("system"));
    expect(await tok("developer")).toEqual(trainerRow("developer"));
    const chat = await post(server, "/v1/chat/completions", { model: engine.modelId, messages: conversation("developer").slice(0, -1), max_tokens: 1 });
    expect(chat.status).toBe(200);
    const served = engine.submitted.at(-1)!;
    expect(trainerRow("developer").slice(0, served.length)).toEqual(served);
  });
});
