/**
 * Generation deltas → chat deltas: text and, when the request has tools, the calls parsed out of
 * it (./tool-parser.ts), each numbered and given an id as it completes. The forced call opening
 * of tool_choice "required"/named (in the prompt, not generated) is read by the parser first.
 * A generation that produced a call finishes with "tool_calls".
 */
import type { GeneratedToken, GenerationDelta } from "./generate.ts";
import type { ChatPromptPlan } from "./tool-request.ts";

export interface ParsedCall {
  index: number;
  id: string;
  name: string;
  arguments: string;
}

export interface ChatDelta {
  content: string;
  calls: ParsedCall[];
  tokens: GeneratedToken[];
  finishReason: "stop" | "length" | "tool_calls" | null;
}

export async function* chatDeltas(deltas: AsyncIterable<GenerationDelta>, plan: Pick<ChatPromptPlan, "format" | "forced" | "parallel">): AsyncGenerator<ChatDelta> {
  const { format } = plan;
  if (!format) {
    for await (const d of deltas) yield { content: d.text, calls: [], tokens: d.tokens, finishReason: d.finishReason };
    return;
  }
  const parser = format.parser();
  let pending = parser.push(plan.forced);
  let callCount = 0;
  for await (const d of deltas) {
    const events = [...pending, ...parser.push(d.text), ...(d.finishReason ? parser.finish() : [])];
    pending = [];
    let content = "";
    const calls: ParsedCall[] = [];
    for (const ev of events) {
      if (ev.type === "content") content += ev.text;
      else if (plan.parallel || callCount === 0) calls.push({ index: callCount++, id: format.newCallId(), name: ev.name, arguments: ev.arguments });
    }
    const finishReason = d.finishReason && callCount > 0 ? "tool_calls" : d.finishReason;
    yield { content, calls, tokens: d.tokens, finishReason };
  }
}
