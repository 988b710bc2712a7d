/**
 * A chat request's tools and tool_choice → the prompt to generate from and how to read the
 * output. Decided here, once:
 *   - no tools, or tool_choice "none": the prompt without tools, output is plain text;
 *   - tools with "auto" (the default): the prompt with tools, output parsed in the template's
 *     format (./tool-format.ts) into tool calls;
 *   - "required" / a named function: as "auto", and the prompt also ends with the opening of a
 *     call as the template renders one (for a named function, up to its arguments), so the model
 *     continues inside a call. If what follows does not parse, the answer is the raw text
 *     (opening included) with finish_reason "stop"/"length", never an invented call.
 * Tools the template would not render (it has no tools variable) or whose call format this server
 * cannot parse are refused with a 400: the client would otherwise get raw text where it expects calls.
 */
import type { EngineChatTemplate } from "./engine.ts";
import { badRequest } from "./errors.ts";
import { renderChatPrompt } from "./prompt.ts";
import type { ChatCompletionRequest } from "./schemas.ts";
import { detectToolFormat, type ToolFormat } from "./tool-format.ts";

export interface ChatPromptPlan {
  prompt: string;
  /** The format to parse the output in; null: plain text. */
  format: ToolFormat | null;
  /** The forced call opening at the end of `prompt` (""), which the parser reads before the output. */
  forced: string;
  /** false: only the first call is returned (parallel_tool_calls: false). */
  parallel: boolean;
}

type ToolFields = Pick<ChatCompletionRequest, "messages" | "tools" | "tool_choice" | "parallel_tool_calls" | "add_generation_prompt" | "chat_template_kwargs">;

export function planChatPrompt(template: EngineChatTemplate, body: ToolFields): ChatPromptPlan {
  const render = (tools: unknown[] | null) =>
    renderChatPrompt(template, body.messages, { tools, addGenerationPrompt: body.add_generation_prompt ?? true, kwargs: body.chat_template_kwargs });
  const tools = body.tools && body.tools.length > 0 ? body.tools : null;
  const choice = body.tool_choice ?? "auto";
  if (!tools) {
    if (choice === "required" || typeof choice === "object")
      throw badRequest(`tool_choice ${JSON.stringify(choice)} needs tools; send the functions in 'tools'`, "tool_choice", "invalid_value");
    return { prompt: render(null), format: null, forced: "", parallel: true };
  }
  if (choice === "none") return { prompt: render(null), format: null, forced: "", parallel: true };

  const prompt = render(tools);
  if (prompt === render(null))
    throw badRequest(
      "this model's chat template does not render tools (it has no tool-calling format), so the model would never see them; send the request without tools, or serve a model whose template supports tool calls",
      "tools",
      "tools_not_supported",
    );
  const format = detectToolFormat(template.source);
  if (!format)
    throw badRequest(
      "this model's chat template renders tools in a call format this server cannot parse (supported: Hermes/Qwen <tool_call>, Llama 3.x JSON, Mistral [TOOL_CALLS]); send the request without tools",
      "tools",
      "tools_not_supported",
    );
  let name: string | null = null;
  if (typeof choice === "object") {
    name = choice.function.name;
    const known = tools.map((t) => ((t as { function: { name: string } }).function.name));
    if (!known.includes(name))
      throw badRequest(`tool_choice names '${name}', which is not one of the tools (${known.join(", ")})`, "tool_choice.function.name", "invalid_value");
  }
  const forced = choice === "auto" ? "" : format.forcedPrefix(name);
  return { prompt: prompt + forced, format, forced, parallel: body.parallel_tool_calls ?? true };
}
