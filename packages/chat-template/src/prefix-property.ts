/**
 * The prefix property: rendering messages[:k] with the generation prompt is a prefix of
 * rendering the whole conversation. Training relies on it twice: assistant masks are cut at
 * those prefix lengths, and the prompt the server builds at inference must be exactly the text
 * the model saw before its answer in training. Templates that rewrite history (Qwen3 and
 * DeepSeek-R1 drop earlier turns' reasoning, gpt-oss ends the final turn differently) break
 * it; the trainer warns about them instead of silently training on a different format.
 */
import { compileChatTemplate, type ChatMessage, type ChatTemplateVariables, type RenderOptions } from "./render.ts";

/** Index of the first element where `a` and `b` differ, or the shorter length if one is a prefix. */
export function firstMismatch<T>(a: ArrayLike<T>, b: ArrayLike<T>): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Renders `messages` (not `variables.messages`) with everything else in `variables` kept. */
export function renderMessages(
  source: string,
  variables: ChatTemplateVariables,
  messages: ChatMessage[],
  addGenerationPrompt: boolean,
  options: RenderOptions = {},
): string {
  return compileChatTemplate(source).render({ ...variables, messages, add_generation_prompt: addGenerationPrompt }, options);
}

export interface PrefixViolation {
  /** Index of the assistant message the broken prefix leads up to (or ends with). */
  messageIndex: number;
  /**
   * "prompt": messages[:i] + generation prompt is not a prefix of the full rendering (the
   * serve-time prompt for turn i differs from training). "turn-end": messages[:i+1] without
   * generation prompt is not a prefix (the turn renders differently once more follows).
   */
  kind: "prompt" | "turn-end";
  /** The prefix that should have matched. */
  prefix: string;
  /** First character where it and the full rendering part ways. */
  mismatchAt: number;
}

/** Every place the prefix property fails for the assistant turns of `variables.messages`. */
export function findPrefixViolations(
  source: string,
  variables: ChatTemplateVariables,
  options: RenderOptions = {},
): PrefixViolation[] {
  const messages = variables.messages ?? [];
  const full = renderMessages(source, variables, messages, false, options);
  const violations: PrefixViolation[] = [];
  messages.forEach((message, i) => {
    if (message.role !== "assistant") return;
    const prompt = renderMessages(source, variables, messages.slice(0, i), true, options);
    if (!full.startsWith(prompt)) {
      violations.push({ messageIndex: i, kind: "prompt", prefix: prompt, mismatchAt: firstMismatch(prompt, full) });
    }
    const turn = renderMessages(source, variables, messages.slice(0, i + 1), false, options);
    if (!full.startsWith(turn)) {
      violations.push({ messageIndex: i, kind: "turn-end", prefix: turn, mismatchAt: firstMismatch(turn, full) });
    }
  });
  return violations;
}

export interface TrainServeParity {
  /** The training text: the whole conversation, no generation prompt. */
  trainingText: string;
  /** What the server renders to ask for the last assistant turn. */
  promptText: string;
  /** `trainingText` starts with `promptText`. */
  ok: boolean;
  /** First differing character (== promptText.length when ok). */
  mismatchAt: number;
  /** Present when an `encode` was given: the same check on token ids. */
  tokens?: { ok: boolean; mismatchAt: number; promptIds: number[]; trainingIds: number[] };
}

/**
 * Train/serve parity for a conversation ending in an assistant turn: the training string cut
 * before that turn must equal the serve-time prompt (messages without it, generation prompt
 * on). Pass `encode` (the model's tokenizer, no special tokens added) to check token ids as well,
 * which can fail where strings agree when a merge spans the boundary.
 */
export function checkTrainServeParity(
  source: string,
  variables: ChatTemplateVariables,
  options: RenderOptions & { encode?: (text: string) => number[] } = {},
): TrainServeParity {
  const messages = variables.messages ?? [];
  const last = messages.at(-1);
  if (last?.role !== "assistant") {
    throw new Error("train/serve parity needs a conversation that ends with an assistant message");
  }
  const trainingText = renderMessages(source, variables, messages, false, options);
  const promptText = renderMessages(source, variables, messages.slice(0, -1), true, options);
  const mismatchAt = firstMismatch(promptText, trainingText);
  const report: TrainServeParity = { trainingText, promptText, ok: mismatchAt === promptText.length, mismatchAt };
  if (options.encode) {
    const promptIds = options.encode(promptText);
    const trainingIds = options.encode(trainingText);
    const at = firstMismatch(promptIds, trainingIds);
    report.tokens = { ok: at === promptIds.length, mismatchAt: at, promptIds, trainingIds };
  }
  return report;
}
