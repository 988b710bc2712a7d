/**
 * OpenAI messages → the template's `messages` → the prompt string → token ids, the way vLLM
 * does it: text parts are joined with "\n", tool-call arguments sent as JSON strings are parsed
 * into objects (templates write them with `tojson`), and the rendered prompt is tokenized
 * without adding special tokens, since the template already wrote them.
 */
import { TemplateError, renderChatTemplate, type ChatMessage } from "@tuneloom/chat-template";
import type { EngineChatTemplate } from "./engine.ts";
import { badRequest } from "./errors.ts";
import type { ChatMessageInput } from "./schemas.ts";

function contentText(content: string | { type: "text"; text: string }[]): string {
  return typeof content === "string" ? content : content.map((p) => p.text).join("\n");
}

export function toTemplateMessages(messages: readonly ChatMessageInput[]): ChatMessage[] {
  return messages.map((m) => {
    const out: ChatMessage = { role: m.role };
    if (m.role === "assistant") {
      const hasToolCalls = !!m.tool_calls && m.tool_calls.length > 0;
      out.content = m.content == null ? (hasToolCalls ? null : "") : contentText(m.content);
      if (hasToolCalls) {
        out.tool_calls = m.tool_calls!.map((call) => {
          let args: unknown = call.function.arguments;
          if (typeof args === "string") {
            try {
              const parsed = JSON.parse(args);
              if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) args = parsed;
            } catch {
              // Not JSON: pass the string through; the template decides what to do with it.
            }
          }
          return { ...(call.id !== undefined && { id: call.id }), type: "function", function: { name: call.function.name, arguments: args } };
        });
      }
      if (m.reasoning_content != null) out.reasoning_content = m.reasoning_content;
    } else {
      out.content = contentText(m.content);
    }
    if (m.name !== undefined) out.name = m.name;
    if (m.role === "tool" && m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
    return out;
  });
}

export interface RenderChatOptions {
  tools?: unknown[] | null;
  addGenerationPrompt?: boolean;
  /** Extra template variables (enable_thinking, ...); cannot replace messages/tools/special tokens. */
  kwargs?: Record<string, unknown> | null;
}

/** Render with the served template; a template error (e.g. raise_exception on role order) is the client's 400. */
export function renderChatPrompt(template: EngineChatTemplate, messages: readonly ChatMessageInput[], options: RenderChatOptions = {}): string {
  try {
    return renderChatTemplate(template.source, {
      ...(options.kwargs ?? {}),
      ...template.specialTokens,
      messages: toTemplateMessages(messages),
      tools: options.tools ?? undefined,
      add_generation_prompt: options.addGenerationPrompt ?? true,
    });
  } catch (err) {
    if (err instanceof TemplateError) throw badRequest(`the chat template rejected the conversation: ${err.message}`, "messages", "template_error");
    throw err;
  }
}
