/**
 * Which characters (then which tokens) of a rendered conversation the model should learn to
 * produce: each assistant turn from where the generation prompt ends up to and including its
 * end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...), the semantics of transformers'
 * `return_assistant_tokens_mask`. The newline some templates put after the marker is left out:
 * the model stops at the marker and never generates it.
 *
 * Spans come from rendering prefixes rather than from `{% generation %}` tags, because almost
 * no real template has those tags: messages[:i] + generation prompt ends where turn i starts,
 * messages[:i+1] ends where it ends. That only works when those renderings are prefixes of the
 * whole conversation, so a template that breaks the prefix property is refused with the turn
 * that broke it, never masked wrongly.
 */
import { findPrefixViolations, renderMessages } from "./prefix-property.ts";
import type { ChatTemplateVariables, RenderOptions } from "./render.ts";

export interface CharSpan {
  /** First character of the assistant turn in the full rendering. */
  start: number;
  /** One past its last character (the end-of-turn marker's last character). */
  end: number;
  /** Which message of the conversation this span is. */
  messageIndex: number;
}

export interface AssistantSpansOptions extends RenderOptions {
  /**
   * What to do with an assistant turn whose span cannot be cut soundly because the template
   * renders it differently once the conversation goes on. "throw" (default) refuses the whole
   * conversation; "skip" leaves that turn unmasked and lists it in `skipped`, e.g. to train on
   * Qwen3's final turn only.
   */
  onViolation?: "throw" | "skip";
}

const TRAILING_WHITESPACE = /[ \t\r\n]+$/;

/** Thrown when spans cannot be cut because the template rewrites earlier turns. */
export class PrefixPropertyError extends Error {
  override readonly name = "PrefixPropertyError";
}

/**
 * Character spans of the assistant turns of `variables.messages` in the rendering without a
 * generation prompt, which is returned as `text` so callers tokenize exactly that string.
 */
export function assistantSpans(
  source: string,
  variables: ChatTemplateVariables,
  options: AssistantSpansOptions = {},
): { text: string; spans: CharSpan[]; skipped: number[] } {
  const messages = variables.messages ?? [];
  const violations = findPrefixViolations(source, variables, options);
  const broken = new Set(violations.map((v) => v.messageIndex));
  if (violations.length > 0 && options.onViolation !== "skip") {
    const v = violations[0]!;
    const what = v.kind === "prompt" ? `messages[:${v.messageIndex}] with the generation prompt` : `messages[:${v.messageIndex + 1}]`;
    throw new PrefixPropertyError(
      `cannot mask assistant message ${v.messageIndex}: rendering ${what} is not a prefix of the whole ` +
        `conversation (they differ at character ${v.mismatchAt}); the template renders that turn differently ` +
        `once the conversation goes on. Pass onViolation: "skip" to mask only the turns that render stably.`,
    );
  }
  const text = renderMessages(source, variables, messages, false, options);
  const spans: CharSpan[] = [];
  const skipped: number[] = [];
  messages.forEach((message, i) => {
    if (message.role !== "assistant") return;
    if (broken.has(i)) {
      skipped.push(i);
      return;
    }
    const start = renderMessages(source, variables, messages.slice(0, i), true, options).length;
    const turn = renderMessages(source, variables, messages.slice(0, i + 1), false, options);
    const end = Math.max(start, turn.length - (TRAILING_WHITESPACE.exec(turn.slice(start))?.[0].length ?? 0));
    spans.push({ start, end, messageIndex: i });
  });
  return { text, spans, skipped };
}

/**
 * Token mask from character spans: token t is 1 when its character range [start, end)
 * overlaps a span, as transformers marks every token that holds a character of the turn.
 * Tokens with empty ranges (BOS added by the tokenizer) are 0.
 */
export function tokenMaskFromSpans(
  spans: readonly Pick<CharSpan, "start" | "end">[],
  tokenOffsets: ReadonlyArray<readonly [number, number]>,
): Uint8Array {
  const mask = new Uint8Array(tokenOffsets.length);
  tokenOffsets.forEach(([start, end], t) => {
    if (end <= start) return;
    if (spans.some((span) => start < span.end && span.start < end)) mask[t] = 1;
  });
  return mask;
}
