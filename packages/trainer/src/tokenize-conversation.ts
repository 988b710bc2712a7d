/**
 * Row → token ids + labels, through the same renderer and the same prompt rule (@tuneloom/model's
 * chat-prompt.ts) the server uses, so the model trains on exactly the ids it will be prompted with.
 *
 *   text   = renderChatTemplate(template, chatTemplateVariables(messages, {tools, specialTokens, kwargs}))   // no generation prompt
 *   ids    = encodeChatText(tokenizer, text)   // as transformers' apply_chat_template(tokenize=True), never two BOS
 *   labels = ids[t] where token t overlaps an assistant span, else −100   (unshifted, HF convention)
 *
 * Assistant spans come from @tuneloom/chat-template (prefix renderings) and include each turn's
 * end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, `</s>`), so the model learns to stop. Masks are
 * cut by character span, never by comparing ids with the pad id, so the EOS is a target even
 * when pad == eos. The template supplies BOS; a tokenizer that would add another is not asked to.
 *
 * Plain prompt/completion rows are language modelling: text = prompt + completion tokenized with
 * the tokenizer's special tokens (BOS), EOS appended unless already last (TRL's rule), loss on
 * the completion's tokens and that EOS only. `{"text"}` rows are the same with every token a
 * target (TRL's language-modelling dataset).
 *
 * Rows with `tools` need a template that renders them: the template is rendered once with and
 * once without a probe tool, and if the two are identical (or the template fails on tools) the
 * dataset is refused before anything is trained.
 *
 * Truncation policy: keep the first `maxLength` tokens (cut from the right). The row is kept if at
 * least one target token survives, otherwise dropped; both are counted.
 */
import { assistantSpans, findPrefixViolations, renderChatTemplate, tokenMaskFromSpans, type ChatMessage, type CharSpan } from "@tuneloom/chat-template";
import { type ChatTextTokenizer, type SpecialTokens, chatTemplateVariables, encodeChatText } from "@tuneloom/model";
import type { RowSource, TrainingMessage, TrainingRow } from "./data.ts";

/** What tokenization needs from a tokenizer; @tuneloom/model's ModelTokenizer has this shape. */
export interface TrainingTokenizer extends ChatTextTokenizer {
  readonly eosId: number | null;
}

export const IGNORE_INDEX = -100;

export interface TokenizedExample {
  /** (L,) token ids. */
  inputIds: Int32Array;
  /** (L,) `inputIds[t]` where the model learns token t, else −100. Unshifted: batching shifts. */
  labels: Int32Array;
  /** Target tokens the loss sees: labels ≠ −100 at t ≥ 1 (token 0 has nothing before it). */
  numTargets: number;
  truncated: boolean;
  source: RowSource;
}

export interface TokenizeOptions {
  /** Template source (exact bytes the adapter will carry as chat_template.jinja). */
  template: string;
  /** bos_token/eos_token/... passed to the template, as transformers does. */
  specialTokens?: SpecialTokens;
  tokenizer: TrainingTokenizer;
  /** Longest example in tokens (≥ 2). */
  maxLength: number;
  /** Loss on every token, prompts included (default false: assistant tokens only). */
  trainOnAllTokens?: boolean;
  /** Extra template variables (enable_thinking, ...). */
  templateKwargs?: Record<string, unknown>;
  /** Clock for templates that call strftime_now, so tokenization is reproducible. */
  now?: Date | string;
  /** A row the template rejects (raise_exception) or cannot mask: "fail" (default) throws, "skip" counts it. */
  onBadRow?: "fail" | "skip";
}

export type TokenizeRowResult =
  | { ok: true; example: TokenizedExample; skippedTurns: number[] }
  | { ok: false; reason: "no-targets-after-truncation" | "no-targets"; skippedTurns: number[]; source: RowSource };

export class TokenizeError extends Error {
  override readonly name = "TokenizeError";
}

function where(source: RowSource): string {
  return `${source.file}:${source.line}`;
}

function variablesFor(messages: TrainingMessage[], tools: unknown[] | undefined, options: TokenizeOptions) {
  return chatTemplateVariables(messages as ChatMessage[], { tools, specialTokens: options.specialTokens, kwargs: options.templateKwargs });
}

function maskToLabels(ids: readonly number[], mask: Uint8Array | null): Int32Array {
  const labels = new Int32Array(ids.length);
  for (let t = 0; t < ids.length; t++) labels[t] = mask === null || mask[t] ? ids[t]! : IGNORE_INDEX;
  return labels;
}

function renderAndMask(
  messages: TrainingMessage[],
  tools: unknown[] | undefined,
  firstTrainedMessage: number,
  options: TokenizeOptions,
  source: RowSource,
): { ids: number[]; labels: Int32Array; skippedTurns: number[] } {
  let rendered: { text: string; spans: CharSpan[]; skipped: number[] };
  try {
    rendered = assistantSpans(options.template, variablesFor(messages, tools, options), { onViolation: "skip", now: options.now });
  } catch (e) {
    throw new TokenizeError(`${where(source)}: chat template failed: ${(e as Error).message}`, { cause: e });
  }
  const { ids, offsets } = encodeChatText(options.tokenizer, rendered.text);
  if (options.trainOnAllTokens) return { ids, labels: maskToLabels(ids, null), skippedTurns: rendered.skipped };
  if (!offsets) {
    throw new TokenizeError(
      `${where(source)}: the tokenizer gives no character offsets for this text (it does not decode back to the ` +
        `rendered conversation), so assistant tokens cannot be located; use trainOnAllTokens or another tokenizer`,
    );
  }
  const spans = rendered.spans.filter((s) => s.messageIndex >= firstTrainedMessage);
  return { ids, labels: maskToLabels(ids, tokenMaskFromSpans(spans, offsets)), skippedTurns: rendered.skipped };
}

function plainPromptCompletion(prompt: string, completion: string, options: TokenizeOptions, source: RowSource) {
  const text = prompt + completion;
  const { ids, offsets } = options.tokenizer.encode(text, { addSpecialTokens: true });
  const eos = options.tokenizer.eosId;
  const appendEos = eos !== null && ids.at(-1) !== eos;
  const allIds = appendEos ? [...ids, eos] : ids;
  if (options.trainOnAllTokens) return maskToLabelsResult(allIds, null);
  if (!offsets) {
    throw new TokenizeError(`${where(source)}: the tokenizer gives no character offsets for this text, so the completion cannot be located`);
  }
  const mask = tokenMaskFromSpans([{ start: prompt.length, end: text.length }], offsets);
  const fullMask = new Uint8Array(allIds.length);
  fullMask.set(mask);
  if (appendEos) fullMask[allIds.length - 1] = 1;
  return maskToLabelsResult(allIds, fullMask);
}

/** A `{"text"}` row: BOS (if the tokenizer adds it) + text + EOS, every token a target. */
function languageModelling(text: string, options: TokenizeOptions) {
  const { ids } = options.tokenizer.encode(text, { addSpecialTokens: true });
  const eos = options.tokenizer.eosId;
  return maskToLabelsResult(eos !== null && ids.at(-1) !== eos ? [...ids, eos] : ids, null);
}

function maskToLabelsResult(ids: number[], mask: Uint8Array | null) {
  return { ids, labels: maskToLabels(ids, mask), skippedTurns: [] as number[] };
}

function countTargets(labels: Int32Array): number {
  let n = 0;
  for (let t = 1; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) n++;
  return n;
}

/** Tokenizes one validated row. Throws TokenizeError when the template or tokenizer cannot handle it. */
export function tokenizeRow(row: TrainingRow, options: TokenizeOptions): TokenizeRowResult {
  if (!(Number.isInteger(options.maxLength) && options.maxLength >= 2)) {
    throw new Error(`maxLength must be an integer ≥ 2, got ${options.maxLength}`);
  }
  let built: { ids: number[]; labels: Int32Array; skippedTurns: number[] };
  if (row.kind === "messages") {
    built = renderAndMask(row.messages, row.tools, 0, options, row.source);
  } else if (row.kind === "text") {
    built = languageModelling(row.text, options);
  } else if (typeof row.prompt === "string") {
    built = plainPromptCompletion(row.prompt, row.completion as string, options, row.source);
  } else {
    const messages = [...row.prompt, ...(row.completion as TrainingMessage[])];
    built = renderAndMask(messages, row.tools, row.prompt.length, options, row.source);
  }
  const fullTargets = countTargets(built.labels);
  if (fullTargets === 0) return { ok: false, reason: "no-targets", skippedTurns: built.skippedTurns, source: row.source };
  const truncated = built.ids.length > options.maxLength;
  const inputIds = Int32Array.from(truncated ? built.ids.slice(0, options.maxLength) : built.ids);
  const labels = truncated ? built.labels.slice(0, options.maxLength) : built.labels;
  const numTargets = countTargets(labels);
  if (numTargets === 0) return { ok: false, reason: "no-targets-after-truncation", skippedTurns: built.skippedTurns, source: row.source };
  return { ok: true, example: { inputIds, labels, numTargets, truncated, source: row.source }, skippedTurns: built.skippedTurns };
}

export interface TokenizeStats {
  rows: number;
  examples: number;
  /** Kept but cut to maxLength. */
  truncated: number;
  /** Dropped because truncation left no target token. */
  droppedByTruncation: number;
  /** Dropped because no token was a target at all (e.g. every assistant turn was unstable). */
  droppedNoTargets: number;
  /** Assistant turns left out of the loss because the template does not render them prefix-stably. */
  skippedTurns: number;
  /** Rows skipped because the template or tokenizer failed on them (onBadRow "skip"). */
  failedRows: number;
  tokens: number;
  targetTokens: number;
  longest: number;
}

export interface TokenizedDataset {
  examples: TokenizedExample[];
  stats: TokenizeStats;
  /** Lines for the trainer to print before training (template not prefix-stable, heavy truncation). */
  warnings: string[];
}

export function tokenizeDataset(rows: readonly TrainingRow[], options: TokenizeOptions): TokenizedDataset {
  const stats: TokenizeStats = {
    rows: rows.length, examples: 0, truncated: 0, droppedByTruncation: 0, droppedNoTargets: 0,
    skippedTurns: 0, failedRows: 0, tokens: 0, targetTokens: 0, longest: 0,
  };
  const withTools = rows.find((r) => r.tools && r.tools.length > 0);
  if (withTools) {
    const problem = templateToolsProblem(options.template, options.specialTokens, options.now);
    if (problem) throw new TokenizeError(`${where(withTools.source)}: the row has tools, but ${problem}; remove the tools or train with a template that supports them`);
  }
  let firstFailure: string | null = null;
  const examples: TokenizedExample[] = [];
  let firstUnstable: string | null = null;
  let firstDropped: string | null = null;
  for (const row of rows) {
    let result: TokenizeRowResult;
    try {
      result = tokenizeRow(row, options);
    } catch (e) {
      if (!(e instanceof TokenizeError) || options.onBadRow !== "skip") throw e;
      stats.failedRows++;
      firstFailure ??= e.message;
      continue;
    }
    stats.skippedTurns += result.skippedTurns.length;
    if (result.skippedTurns.length > 0 && firstUnstable === null) {
      firstUnstable = `${where(row.source)} message ${result.skippedTurns[0]}`;
    }
    if (!result.ok) {
      if (result.reason === "no-targets") stats.droppedNoTargets++;
      else stats.droppedByTruncation++;
      firstDropped ??= where(row.source);
      continue;
    }
    const ex = result.example;
    examples.push(ex);
    stats.examples++;
    if (ex.truncated) stats.truncated++;
    stats.tokens += ex.inputIds.length;
    stats.targetTokens += ex.numTargets;
    stats.longest = Math.max(stats.longest, ex.inputIds.length);
  }
  const warnings: string[] = [];
  if (stats.skippedTurns > 0) {
    warnings.push(
      `chat template is not prefix-stable: ${stats.skippedTurns} assistant turn(s) render differently once the ` +
        `conversation continues (first: ${firstUnstable}); they were left out of the loss, and the server's prompt ` +
        `for such a turn differs from what training saw`,
    );
  }
  if (stats.truncated > 0 || stats.droppedByTruncation > 0) {
    warnings.push(
      `${stats.truncated} example(s) truncated to ${options.maxLength} tokens (cut from the right), ` +
        `${stats.droppedByTruncation} dropped because no target token survived` +
        (stats.droppedByTruncation ? ` (first: ${firstDropped})` : ""),
    );
  }
  if (stats.droppedNoTargets > 0) {
    warnings.push(`${stats.droppedNoTargets} row(s) dropped: no token to learn (first: ${firstDropped})`);
  }
  if (stats.failedRows > 0) {
    warnings.push(`${stats.failedRows} row(s) skipped because the chat template or tokenizer failed on them (first: ${firstFailure})`);
  }
  if (examples.length === 0) {
    throw new TokenizeError(`no example has a target token left (${rows.length} rows; ${warnings.join("; ") || "all empty"})`);
  }
  return { examples, stats, warnings };
}

const PROBE_TOOL = {
  type: "function",
  function: { name: "get_weather", description: "Current weather in a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
};

/**
 * Null when `template` renders tool definitions; else why not: "this template does not render
 * tools" (the rendering with a tool equals the one without) or the template's error.
 */
export function templateToolsProblem(template: string, specialTokens: SpecialTokens = {}, now?: Date | string): string | null {
  const messages: ChatMessage[] = [{ role: "user", content: "What is the weather in Paris?" }];
  const render = (tools?: unknown[]) =>
    renderChatTemplate(template, { ...chatTemplateVariables(messages, { tools, specialTokens }), add_generation_prompt: true }, { now });
  let withTools: string;
  try {
    withTools = render([PROBE_TOOL]);
  } catch (e) {
    return `this template fails when given tools (${(e as Error).message})`;
  }
  return withTools === render(undefined) ? "this template does not render tools (its output is the same with and without them)" : null;
}

/** A multi-turn conversation with a system prompt, for checking a template before any data is read. */
const PROBE_CONVERSATION: ChatMessage[] = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "What is 2 + 2?" },
  { role: "assistant", content: "4" },
  { role: "user", content: "And 3 + 3?" },
  { role: "assistant", content: "6" },
];

/**
 * A warning when `template` breaks the prefix property on a plain multi-turn chat (it rewrites
 * earlier turns or renders the serve-time prompt differently from the training text), else null.
 * A template that refuses the probe (e.g. no system role) is not judged here; rows are checked
 * one by one during tokenization anyway.
 */
export function templatePrefixWarning(template: string, specialTokens: SpecialTokens = {}, now?: Date | string): string | null {
  let violations;
  try {
    violations = findPrefixViolations(template, { ...specialTokens, messages: PROBE_CONVERSATION }, { now });
  } catch {
    return null;
  }
  if (violations.length === 0) return null;
  const v = violations[0]!;
  const what = v.kind === "prompt" ? "the serve-time prompt for assistant turn" : "assistant turn";
  return (
    `chat template is not prefix-stable: ${what} ${v.messageIndex} of a plain multi-turn chat renders differently ` +
    `once the conversation goes on (character ${v.mismatchAt}); such turns are left out of the loss, and prompts ` +
    `served for them differ from what training saw`
  );
}
