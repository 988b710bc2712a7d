/**
 * Messages → the prompt string, rendered exactly as training rendered the same conversation:
 * the validated messages go to the template as sent (as the trainer passes training rows and
 * transformers' apply_chat_template passes its input), with the variables built by the one
 * prompt rule (@tuneloom/model's chat-prompt.ts) the trainer also uses; the result is
 * tokenized with engine.tokenizer.encodeChat (the same rule's encodeChatText).
 */
import { TemplateError, renderChatTemplate } from "@tuneloom/chat-template";
import { chatTemplateVariables } from "@tuneloom/model";
import type { EngineChatTemplate } from "./engine.ts";
import { badRequest } from "./errors.ts";

export interface RenderChatOptions {
  tools?: unknown[] | null;
  addGenerationPrompt?: boolean;
  /** Extra template variables (enable_thinking, documents, ...); cannot replace messages, tools or special tokens. */
  kwargs?: Record<string, unknown> | null;
}

/** Render with the served template; a template error (e.g. raise_exception on role order) is the client's 400. */
export function renderChatPrompt(template: EngineChatTemplate, messages: readonly Record<string, unknown>[], options: RenderChatOptions = {}): string {
  try {
    return renderChatTemplate(template.source, {
      ...chatTemplateVariables(messages, { tools: options.tools, specialTokens: template.specialTokens, kwargs: options.kwargs }),
      add_generation_prompt: options.addGenerationPrompt ?? true,
    });
  } catch (err) {
    if (!(err instanceof TemplateError)) throw err;
    const hasParts = messages.some((m) => Array.isArray(m.content));
    const hint = hasParts ? " (this template may expect string content: send each message's content as a string instead of an array of parts)" : "";
    throw badRequest(`the chat template rejected the conversation: ${err.message}${hint}`, "messages", "template_error");
  }
}
