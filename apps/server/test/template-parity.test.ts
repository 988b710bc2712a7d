// The server's prompt path (schema → template variables → render) against the golden fixtures:
// for every fixture conversation an OpenAI client can send, the prompt the server renders is
// byte-identical to transformers' apply_chat_template (and so to what the trainer rendered).
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { renderChatPrompt } from "../src/prompt.ts";
import { messageSchema } from "../src/schemas.ts";

const FIXTURES = join(import.meta.dir, "../../../tests/fixtures/chat-templates");

interface Case {
  id: string;
  template_file: string;
  bos_token: string | null;
  eos_token: string | null;
  extra: Record<string, unknown>;
  messages: Record<string, unknown>[];
  tools: unknown[] | null;
  documents: unknown[] | null;
  add_generation_prompt: boolean;
  expected?: string;
}

describe("template parity with transformers (golden fixtures)", () => {
  test("every OpenAI-expressible fixture conversation renders byte-identically", () => {
    const raw = JSON.parse(readFileSync(join(FIXTURES, "cases.json"), "utf8"));
    const cases: Case[] = Array.isArray(raw) ? raw : raw.cases;
    let compared = 0;
    const mismatches: string[] = [];
    for (const c of cases) {
      if (c.expected === undefined) continue;
      const source = readFileSync(join(FIXTURES, c.template_file), "utf8");
      // The server renders with the wall clock; the fixtures pin `now`.
      if (source.includes("strftime_now")) continue;
      // transformers always passes tools (None when absent); the trainer and the server pass them only when given.
      if (c.tools === null && /tools\s+is\s+(not\s+)?none|tools\s+is\s+defined|tools\s+is\s+not\s+defined/.test(source)) continue;
      if (!z.array(messageSchema).safeParse(c.messages).success) continue;
      const specialTokens: Record<string, string> = {};
      if (c.bos_token !== null) specialTokens.bos_token = c.bos_token;
      if (c.eos_token !== null) specialTokens.eos_token = c.eos_token;
      const prompt = renderChatPrompt({ source, sha256: "", origin: c.template_file, specialTokens }, c.messages, {
        tools: c.tools,
        addGenerationPrompt: c.add_generation_prompt,
        kwargs: { ...c.extra, documents: c.documents },
      });
      compared++;
      if (prompt !== c.expected) mismatches.push(c.id);
    }
    expect(mismatches).toEqual([]);
    expect(compared).toBeGreaterThan(100);
  });
});
