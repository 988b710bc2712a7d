/**
 * Messages → the prompt string, rendered exactly as training rendered the same conversation:
 * the validated messages go to the template as sent (as the trainer passes training rows and
 * transformers' apply_chat_template passes its input), with the variables built by the one
 * prompt rule (@tuneloom/model's chat-prompt.ts) the trainer also uses; the result is
 * tokenized with engine.tokenizer.encodeChat (the same rule's encodeChatText).
 */
import { TemplateError } from "@tuneloom/chat-template";
import { type ChatPromptOptions, renderChatPrompt as renderPrompt } from "@tuneloom/model";
import type { EngineChatTemplate } from "./engine.ts";
import { badRequest } from "./errors.ts";

/** Render with the served template; a template error (e.g. raise_exception on role order) is the client's 400. */
export function renderChatPrompt(template: EngineChatTemplate, messages: readonly Record<string, unknown>[], options: ChatPromptOptions = {}): string {
  try {
    return renderPrompt(template, messages, options);
  } catch (err) {
    if (!(err instanceof TemplateError)) throw err;
    const hasParts = messages.some((m) => Array.isArray(m.content));
    const hint = hasParts ? " (this template may expect string content: send each message's content as a string instead of an array of parts)" : "";
    throw badRequest(`the chat template rejected the conversation: ${err.message}${hint}`, "messages", "template_error");
  }
}
