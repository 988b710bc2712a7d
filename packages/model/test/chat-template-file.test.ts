import { afterAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { loadChatTemplate } from "../src/chat-template-file.ts";

const root = mkdtempSync(path.join(tmpdir(), "load-template-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
function modelDir(files: Record<string, string | Buffer>): string {
  const dir = path.join(root, `m${n++}`);
  mkdirSync(dir);
  for (const [name, body] of Object.entries(files)) writeFileSync(path.join(dir, name), body);
  return dir;
}
const sha = (bytes: string | Buffer) => createHash("sha256").update(bytes).digest("hex");

test("chat_template.jinja beside tokenizer_config.json wins; sha256 is over its exact bytes", () => {
  const bytes = Buffer.from("{{ bos_token }}é\r\n", "utf8");
  const dir = modelDir({
    "chat_template.jinja": bytes,
    "tokenizer_config.json": JSON.stringify({
      chat_template: "ignored",
      bos_token: { content: "<s>", lstrip: false },
      eos_token: "</s>",
      pad_token: null,
    }),
  });
  const t = loadChatTemplate(dir);
  expect(t.source).toBe("{{ bos_token }}é\r\n");
  expect(t.sha256).toBe(sha(bytes));
  expect(t.specialTokens).toEqual({ bos_token: "<s>", eos_token: "</s>" });
  expect(t.origin.endsWith("chat_template.jinja")).toBe(true);
});

test("the string form of chat_template in tokenizer_config.json", () => {
  const dir = modelDir({ "tokenizer_config.json": JSON.stringify({ chat_template: "T", unk_token: { content: "<unk>" } }) });
  expect(loadChatTemplate(dir)).toMatchObject({ source: "T", sha256: sha("T"), specialTokens: { unk_token: "<unk>" } });
});

test("the list form picks tool_use only when tools are given, else default", () => {
  const config = { chat_template: [{ name: "default", template: "D" }, { name: "tool_use", template: "U" }] };
  const dir = modelDir({ "tokenizer_config.json": JSON.stringify(config) });
  expect(loadChatTemplate(dir).source).toBe("D");
  expect(loadChatTemplate(dir, { tools: null }).source).toBe("D");
  expect(loadChatTemplate(dir, { tools: [] }).source).toBe("U");
  const onlyDefault = modelDir({ "tokenizer_config.json": JSON.stringify({ chat_template: [{ name: "default", template: "D" }] }) });
  expect(loadChatTemplate(onlyDefault, { tools: [{}] }).source).toBe("D");
  const onlyRag = modelDir({ "tokenizer_config.json": JSON.stringify({ chat_template: [{ name: "rag", template: "R" }] }) });
  expect(() => loadChatTemplate(onlyRag)).toThrow('no "default" entry (has: rag)');
});

test("a directory without any template says what to add", () => {
  expect(() => loadChatTemplate(modelDir({ "tokenizer_config.json": "{}" }))).toThrow("add chat_template.jinja");
});
