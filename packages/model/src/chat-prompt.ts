/**
 * The prompt rule: conversation → template variables → rendered text → token ids, one way for
 * the trainer (tokenize-conversation.ts), the server and the cli, so a model is prompted with
 * exactly the ids it trained on.
 *
 *   variables = {...kwargs, ...specialTokens, messages, tools (only when given)}   // transformers' order
 *   messages  = as given, except role "developer" → "system"                     // OpenAI's newer name for it
 *   ids       = tokenizer.encode(text, {addSpecialTokens: false})                 // the template wrote BOS
 *               minus the first of two leading BOS                                // a tokenizer that adds one anyway
 */
import { renderChatTemplate, type ChatMessage } from "@tuneloom/chat-template";
import type { SpecialTokens } from "./chat-template-file.ts";

/** What encoding needs from a tokenizer; ModelTokenizer has this shape. */
export interface ChatTextTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): { ids: number[]; offsets?: [number, number][] };
  readonly bosId: number | null;
}

/**
 * The one role rule for training and serving: OpenAI's `developer` role is its newer name for
 * `system` (instructions from the application), and the chat templates of open models know only
 * `system`; so a `developer` message is rendered as a `system` one, in training data and in
 * requests alike. Every other role goes to the template as given.
 */
export function normalizeRoles(messages: readonly Record<string, unknown>[]): Record<string, unknown>[] {
  return messages.map((m) => (m.role === "developer" ? { ...m, role: "system" } : m));
}

/**
 * Template variables for a conversation. `kwargs` (enable_thinking, documents, ...) cannot
 * replace messages, tools or the special tokens; `add_generation_prompt` is the caller's.
 */
export function chatTemplateVariables(
  messages: readonly Record<string, unknown>[],
  options: { tools?: unknown[] | null; specialTokens?: SpecialTokens; kwargs?: Record<string, unknown> | null } = {},
): Record<string, unknown> & { messages: ChatMessage[] } {
  const { tools: _ignored, ...kwargs } = options.kwargs ?? {};
  return {
    ...kwargs,
    ...options.specialTokens,
    messages: normalizeRoles(messages) as ChatMessage[],
    ...(options.tools ? { tools: options.tools } : {}),
  };
}

export interface ChatPromptOptions {
  tools?: unknown[] | null;
  /** Extra template variables (enable_thinking, documents, ...). */
  kwargs?: Record<string, unknown> | null;
  /** Default true: the serve-time prompt, ending where the assistant's reply begins. */
  addGenerationPrompt?: boolean;
}

/** The prompt text for `messages` under `template` (its source and special tokens); throws TemplateError. */
export function renderChatPrompt(
  template: { source: string; specialTokens: SpecialTokens },
  messages: readonly Record<string, unknown>[],
  options: ChatPromptOptions = {},
): string {
  return renderChatTemplate(template.source, {
    ...chatTemplateVariables(messages, { tools: options.tools, specialTokens: template.specialTokens, kwargs: options.kwargs }),
    add_generation_prompt: options.addGenerationPrompt ?? true,
  });
}

/**
 * Encodes rendered chat text the one way trainer and server both must: no special tokens added
 * (the template wrote BOS if the model wants one), and never two BOS in a row.
 */
export function encodeChatText(tokenizer: ChatTextTokenizer, text: string): { ids: number[]; offsets?: [number, number][] } {
  const encoded = tokenizer.encode(text, { addSpecialTokens: false });
  const { ids, offsets } = encoded;
  if (tokenizer.bosId !== null && ids.length >= 2 && ids[0] === tokenizer.bosId && ids[1] === tokenizer.bosId) {
    return { ids: ids.slice(1), offsets: offsets?.slice(1) };
  }
  return encoded;
}
