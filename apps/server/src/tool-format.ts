/**
 * Which tool-call format the served chat template trains, read from the template's own text:
 * the one place that decides how a request's tools are handled.
 *   - `<tool_call>` in the template → hermes (Hermes 3, Qwen2.5, Qwen3, SmolLM3)
 *   - `[TOOL_CALLS]` → mistral (Mistral Nemo; its template wants 9-character alphanumeric ids)
 *   - `<|python_tag|>` or Llama's "Respond in the format {"name": function name, "parameters": ...}"
 *     → llama3 JSON (Llama 3.1, 3.2)
 *   - anything else → none: a request with tools is refused (./tool-request.ts), since their
 *     calls could not be parsed and the client would get raw text.
 * `forcedPrefix` is what tool_choice "required" or a named tool appends to the prompt: the
 * opening of a call exactly as the template renders past calls, so the model continues inside
 * a call (and, named, inside that function's arguments).
 */
import { JsonToolCallParser, MarkerToolCallParser, type ToolCallParser } from "./tool-parser.ts";

export interface ToolFormat {
  readonly name: "hermes" | "mistral" | "llama3_json";
  parser(): ToolCallParser;
  /** Text appended after the generation prompt to force a call (of `name`, when given). */
  forcedPrefix(name: string | null): string;
  /** A fresh id for a parsed call, in the shape the template accepts back. */
  newCallId(): string;
}

const ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
function randomAlnum(n: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(bytes, (b) => ALNUM[b % ALNUM.length]).join("");
}
const openAiCallId = () => `call_${randomAlnum(24)}`;

const HERMES: ToolFormat = {
  name: "hermes",
  parser: () => new MarkerToolCallParser("<tool_call>", "</tool_call>"),
  forcedPrefix: (name) => `<tool_call>\n{"name": ${name === null ? "" : `${JSON.stringify(name)}, "arguments": `}`,
  newCallId: openAiCallId,
};

const MISTRAL: ToolFormat = {
  name: "mistral",
  parser: () => new MarkerToolCallParser("[TOOL_CALLS]", null),
  forcedPrefix: (name) => `[TOOL_CALLS][{"name": ${name === null ? "" : `${JSON.stringify(name)}, "arguments": `}`,
  newCallId: () => randomAlnum(9),
};

const PYTHON_TAG = "<|python_tag|>";
const LLAMA3_JSON: ToolFormat = {
  name: "llama3_json",
  parser: () => new JsonToolCallParser(PYTHON_TAG),
  forcedPrefix: (name) => `{"name": ${name === null ? "" : `${JSON.stringify(name)}, "parameters": `}`,
  newCallId: openAiCallId,
};

export function detectToolFormat(templateSource: string): ToolFormat | null {
  if (templateSource.includes("<tool_call>")) return HERMES;
  if (templateSource.includes("[TOOL_CALLS]")) return MISTRAL;
  if (templateSource.includes(PYTHON_TAG) || /\{"name": function name, "parameters"/.test(templateSource)) return LLAMA3_JSON;
  return null;
}
