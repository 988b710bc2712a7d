/**
 * Reads the golden fixtures in tests/fixtures/chat-templates (the repo's own copy; its README says how
 * the expected strings were made) and
 * turns each case into the variables transformers passed, so every test builds them one way.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import type { ChatMessage, ChatTemplateVariables } from "@tuneloom/chat-template";

export const FIXTURES_DIR = path.join(import.meta.dir, "fixtures/chat-templates");

export interface GoldenCase {
  id: string;
  template_file: string;
  conversation_id: string;
  bos_token: string | null;
  eos_token: string | null;
  extra: Record<string, unknown>;
  messages: ChatMessage[];
  tools: unknown[] | null;
  documents: unknown[] | null;
  add_generation_prompt: boolean;
  now: string;
  expected?: string;
  expected_error?: boolean;
  error_type?: string;
  error_message?: string;
}

export const goldenCases: GoldenCase[] = JSON.parse(readFileSync(path.join(FIXTURES_DIR, "cases.json"), "utf8"));

const sources = new Map<string, string>();
export function templateSource(file: string): string {
  let source = sources.get(file);
  if (source === undefined) sources.set(file, (source = readFileSync(path.join(FIXTURES_DIR, file), "utf8")));
  return source;
}

/** Variables in the README's order; a null special token is left out (Undefined in the template). */
export function caseVariables(c: GoldenCase): ChatTemplateVariables {
  const vars: ChatTemplateVariables = {
    messages: c.messages,
    tools: c.tools,
    documents: c.documents,
    add_generation_prompt: c.add_generation_prompt,
  };
  if (c.bos_token !== null) vars.bos_token = c.bos_token;
  if (c.eos_token !== null) vars.eos_token = c.eos_token;
  return { ...vars, ...c.extra };
}

export const templateFiles = [...new Set(goldenCases.map((c) => c.template_file))].sort();

/**
 * Conversations a template renders successfully without the generation prompt and that end
 * with an assistant turn: the training samples masks and parity are checked on.
 */
export function trainingCases(): GoldenCase[] {
  return goldenCases.filter(
    (c) => !c.expected_error && !c.add_generation_prompt && c.messages.at(-1)?.role === "assistant",
  );
}
