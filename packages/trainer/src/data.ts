/**
 * Training data: JSONL (one example per line) or a JSON array of examples (a `.json` file, or
 * any file whose first character is `[`), in the shapes TRL's SFTTrainer reads:
 *
 *   {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
 *   {"prompt": "2+2=", "completion": "4"}
 *   {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
 *   {"text": "Plain text: language modelling, every token trained"}
 *
 * Preference rows (prompt/chosen/rejected: DPO, ORPO, KTO) are refused by name: this trainer is SFT.
 *
 * Roles are system/user/assistant/tool; content is a string or a list of `{type: "text", text}`
 * parts (passed to the template as given, as transformers does); assistant messages may carry
 * `tool_calls`, tool messages `tool_call_id`/`name`; a row may carry `tools` (JSON schemas) for
 * the template. Every row is validated before training starts and an error names the file, the
 * line and the field (`train.jsonl:17: messages[2].role: expected one of ...`), because a typo
 * found at step 40 000 wastes a run. Blank lines are ignored.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { Rng } from "./rng.ts";

/** Roles a training row may use; `developer` is rendered as `system` (@tuneloom/model normalizeRoles). */
export const MESSAGE_ROLES = ["system", "developer", "user", "assistant", "tool"] as const;
export type MessageRole = (typeof MESSAGE_ROLES)[number];

export interface TextPart {
  type: "text";
  text: string;
  [field: string]: unknown;
}

export interface TrainingMessage {
  role: MessageRole;
  content?: string | TextPart[] | null;
  tool_calls?: unknown[];
  tool_call_id?: string;
  name?: string;
  [field: string]: unknown;
}

/** Where a row came from, for messages that point the user at it. */
export interface RowSource {
  file: string;
  /** 1-based line number. */
  line: number;
}

export type TrainingRow =
  | { kind: "messages"; messages: TrainingMessage[]; tools?: unknown[]; source: RowSource }
  | { kind: "text"; text: string; tools?: undefined; source: RowSource }
  | {
      kind: "prompt-completion";
      /** Plain strings (language modelling) or message lists (conversational), never mixed. */
      prompt: string | TrainingMessage[];
      completion: string | TrainingMessage[];
      tools?: unknown[];
      source: RowSource;
    };

/** A bad row; `message` is the whole `file:line: field: what` line. */
export class DataError extends Error {
  override readonly name = "DataError";
  constructor(
    readonly file: string,
    readonly line: number,
    /** `messages[2].role`, or "" when the problem is the whole line. */
    readonly field: string,
    readonly problem: string,
  ) {
    super(`${file}:${line}: ${field ? `${field}: ` : ""}${problem}`);
  }
}

const textPartSchema = z.looseObject({ type: z.literal("text"), text: z.string() });
const contentSchema = z.union([z.string(), z.array(textPartSchema)]).nullable();
const toolCallSchema = z.looseObject({
  type: z.literal("function").optional(),
  id: z.string().optional(),
  function: z.looseObject({
    name: z.string(),
    arguments: z.union([z.string(), z.record(z.string(), z.unknown())]),
  }),
});
const messageSchema = z.looseObject({
  role: z.enum(MESSAGE_ROLES),
  content: contentSchema.optional(),
  tool_calls: z.array(toolCallSchema).nullable().optional(),
  tool_call_id: z.string().optional(),
  name: z.string().optional(),
});
const messageListSchema = z.array(messageSchema);
const rowSchema = z.looseObject({
  messages: messageListSchema.optional(),
  prompt: z.union([z.string(), messageListSchema]).optional(),
  completion: z.union([z.string(), messageListSchema]).optional(),
  tools: z.array(z.unknown()).nullable().optional(),
});

/** `messages[2].content[0].text` from a zod path. */
export function formatFieldPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out ? `.${String(key)}` : String(key);
  }
  return out;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return `${typeof value} ${String(value)}`;
}

interface Problem {
  field: string;
  problem: string;
}

/** The single most useful problem of a zod error, phrased for a person. */
function zodProblem(issue: z.core.$ZodIssue, prefix: readonly PropertyKey[] = []): Problem {
  const path = [...prefix, ...issue.path];
  const field = formatFieldPath(path);
  const input = (issue as { input?: unknown }).input;
  switch (issue.code) {
    case "invalid_union": {
      // Report the branch that got furthest (its first issue is deepest): for content given as a
      // list, the bad part, not "expected string".
      const branches = issue.errors.filter((b) => b.length > 0);
      const deepest = branches
        .map((b) => b[0]!)
        .sort((a, b) => b.path.length - a.path.length)[0];
      if (deepest && deepest.path.length > 0) return zodProblem(deepest, path);
      const expected = branches
        .map((b) => (b[0]!.code === "invalid_type" ? (b[0] as { expected: string }).expected : b[0]!.code))
        .map((e) => (e === "array" ? "a list" : e))
        .join(" or ");
      return { field, problem: `expected ${expected}, got ${describe(input)}` };
    }
    case "invalid_value": {
      const values = issue.values.map((v) => (typeof v === "string" ? v : JSON.stringify(v)));
      const expected = values.length === 1 ? JSON.stringify(issue.values[0]) : `one of ${values.join("|")}`;
      return { field, problem: `expected ${expected}, got ${describe(input)}` };
    }
    case "invalid_type":
      if (input === undefined) return { field, problem: `missing (expected ${issue.expected})` };
      const expected = ({ array: "a list", int: "an integer" } as Record<string, string>)[issue.expected] ?? issue.expected;
      return { field, problem: `expected ${expected}, got ${describe(input)}` };
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      if (issue.origin !== "number" && issue.origin !== "int") return { field, problem: `${issue.message}, got ${describe(input)}` };
      const op = issue.code === "too_small" ? (issue.inclusive ? "≥" : ">") : issue.inclusive ? "≤" : "<";
      return { field, problem: `must be ${op} ${String(bound)}, got ${String(input)}` };
    }
    default:
      return { field, problem: issue.message };
  }
}

function contentText(content: TrainingMessage["content"]): string {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content.map((p) => p.text).join("");
}

/** Checks beyond the schema: who may omit content, and that there is something to learn. */
function checkMessages(messages: TrainingMessage[], field: string, needAssistant: boolean): Problem | null {
  if (messages.length === 0) return { field, problem: "must not be empty" };
  for (const [i, m] of messages.entries()) {
    const hasToolCalls = m.role === "assistant" && Array.isArray(m.tool_calls) && m.tool_calls.length > 0;
    if (m.content === undefined && !hasToolCalls) {
      return { field: `${field}[${i}].content`, problem: `missing (only an assistant message with tool_calls may leave it out)` };
    }
    if (m.content === null && !hasToolCalls) {
      return { field: `${field}[${i}].content`, problem: "null (only an assistant message with tool_calls may have no content)" };
    }
    if (m.tool_calls && m.tool_calls.length > 0 && m.role !== "assistant") {
      return { field: `${field}[${i}].tool_calls`, problem: `only assistant messages may carry tool_calls, this one is "${m.role}"` };
    }
  }
  if (needAssistant && !messages.some((m) => m.role === "assistant")) {
    return { field, problem: "no assistant message: nothing to train on (add an assistant turn, or drop the row)" };
  }
  return null;
}

/** Validates one parsed JSON value as a training row. */
export function validateRow(value: unknown, source: RowSource): TrainingRow {
  const fail = (p: Problem): never => {
    throw new DataError(source.file, source.line, p.field, p.problem);
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    fail({ field: "", problem: `expected a JSON object, got ${describe(value)}` });
  }
  const parsed = rowSchema.safeParse(value, { reportInput: true });
  if (!parsed.success) fail(zodProblem(parsed.error.issues[0]!));
  const row = value as Record<string, unknown>;
  const tools = Array.isArray(row.tools) ? (row.tools as unknown[]) : undefined;
  const withTools = <T extends object>(r: T) => (tools ? { ...r, tools } : r);

  if (row.chosen !== undefined || row.rejected !== undefined) {
    fail({
      field: "",
      problem: `preference data (${["prompt", "chosen", "rejected"].filter((k) => row[k] !== undefined).join("/")}) is not supported: tuneloom does supervised fine-tuning. ` +
        `Use "messages", "prompt"+"completion" or "text" rows (e.g. the chosen answer as the completion)`,
    });
  }
  const hasMessages = row.messages !== undefined;
  const hasPrompt = row.prompt !== undefined || row.completion !== undefined;
  if (row.text !== undefined && !hasMessages && !hasPrompt) {
    if (typeof row.text !== "string") fail({ field: "text", problem: `expected string, got ${describe(row.text)}` });
    if ((row.text as string).length === 0) fail({ field: "text", problem: "empty: nothing to train on" });
    return { kind: "text" as const, text: row.text as string, source };
  }
  if (hasMessages && hasPrompt) {
    fail({ field: "", problem: `has both "messages" and "prompt"/"completion"; use one format per row` });
  }
  if (hasMessages) {
    const messages = row.messages as TrainingMessage[];
    const problem = checkMessages(messages, "messages", true);
    if (problem) fail(problem);
    return withTools({ kind: "messages" as const, messages, source });
  }
  if (!hasPrompt) {
    fail({ field: "", problem: `expected a "messages" field, "prompt" and "completion" fields, or a "text" field (keys: ${Object.keys(row).join(", ") || "none"})` });
  }
  if (row.prompt === undefined) fail({ field: "prompt", problem: "missing (a row with completion needs a prompt)" });
  if (row.completion === undefined) fail({ field: "completion", problem: "missing (a row with prompt needs a completion)" });
  const prompt = row.prompt as string | TrainingMessage[];
  const completion = row.completion as string | TrainingMessage[];
  if (typeof prompt !== typeof completion) {
    fail({ field: "completion", problem: `prompt and completion must both be strings or both message lists` });
  }
  if (typeof prompt === "string") {
    if ((completion as string).length === 0) fail({ field: "completion", problem: "empty: nothing to train on" });
  } else {
    const promptProblem = prompt.length === 0 ? null : checkMessages(prompt, "prompt", false);
    if (promptProblem) fail(promptProblem);
    const completionProblem = checkMessages(completion as TrainingMessage[], "completion", true);
    if (completionProblem) fail(completionProblem);
  }
  return withTools({ kind: "prompt-completion" as const, prompt, completion, source });
}

export interface LoadDatasetOptions {
  /** "fail" (default): throw on the first bad row. "skip": drop bad rows and count them. */
  onBadRow?: "fail" | "skip";
  /**
   * Invalid UTF-8 is an error naming file:line unless this is set; then bad bytes become U+FFFD
   * and the report says on how many lines (`--allow-replacement`).
   */
  allowReplacement?: boolean;
}

export interface LoadedDataset {
  file: string;
  rows: TrainingRow[];
  /** Rows that validated. */
  goodRows: number;
  /** Rows skipped as bad (only with onBadRow "skip"). */
  badRows: number;
  /** The errors of skipped rows, in file order. */
  errors: DataError[];
  /** Lines (1-based) whose invalid UTF-8 was read as U+FFFD (only with allowReplacement). */
  replacedLines?: number[];
}

/**
 * The 1-based line on which each top-level element of a JSON array starts (the text must parse),
 * so an array's rows are reported by line as JSONL's are.
 */
function arrayElementLines(text: string): number[] {
  const lines: number[] = [];
  let line = 1, depth = 0, inString = false, expectValue = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "\n") line++;
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === " " || c === "\t" || c === "\r" || c === "\n" || c === "\uFEFF") continue;
    if (depth === 1 && expectValue) {
      lines.push(line);
      expectValue = false;
    }
    if (c === '"') inString = true;
    else if (c === "[" || c === "{") {
      depth++;
      if (depth === 1) expectValue = true;
    } else if (c === "]" || c === "}") depth--;
    else if (c === "," && depth === 1) expectValue = true;
  }
  return lines;
}

/** A JSON array of rows; each row's source line is where its element starts. */
function parseJsonArray(text: string, file: string, options: LoadDatasetOptions): LoadedDataset {
  let values: unknown;
  try {
    values = JSON.parse(text.replace(/^\uFEFF/, ""));
  } catch (e) {
    throw new DataError(file, 1, "", `invalid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(values)) throw new DataError(file, 1, "", `expected a JSON array of rows (or JSONL: one row per line), got ${describe(values)}`);
  const starts = arrayElementLines(text);
  return collectRows(values.map((value, i) => ({ line: starts[i] ?? 1, parse: () => value })), file, options);
}

/** Parses JSONL text (or a JSON array, when the text starts with `[`); `file` is only used in messages. */
export function parseJsonl(text: string, file: string, options: LoadDatasetOptions = {}): LoadedDataset {
  if (/^\uFEFF?\s*\[/.test(text)) return parseJsonArray(text, file, options);
  const lines = text.split("\n");
  const entries: { line: number; parse: () => unknown }[] = [];
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.replace(/\r$/, "");
    if (raw.trim() === "") continue;
    entries.push({
      line: i + 1,
      parse: () => {
        try {
          return JSON.parse(i === 0 ? raw.replace(/^\uFEFF/, "") : raw);
        } catch (e) {
          throw new DataError(file, i + 1, "", `invalid JSON (${(e as Error).message})`);
        }
      },
    });
  }
  return collectRows(entries, file, options);
}

function collectRows(entries: { line: number; parse: () => unknown }[], file: string, options: LoadDatasetOptions): LoadedDataset {
  const rows: TrainingRow[] = [];
  const errors: DataError[] = [];
  for (const { line, parse } of entries) {
    try {
      rows.push(validateRow(parse(), { file, line }));
    } catch (e) {
      if (!(e instanceof DataError) || options.onBadRow !== "skip") throw e;
      errors.push(e);
    }
  }
  if (rows.length === 0) {
    const why = errors.length > 0 ? `all ${errors.length} rows are bad; the first: ${errors[0]!.message}` : "no rows";
    throw new Error(`${file}: no usable training rows (${why})`);
  }
  return { file, rows, goodRows: rows.length, badRows: errors.length, errors };
}

export function loadJsonl(file: string, options: LoadDatasetOptions = {}): LoadedDataset {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new Error(`${file}: cannot read training data (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const { text, replacedLines } = decodeUtf8(bytes, file, options);
  return { ...parseJsonl(text, file, options), ...(replacedLines.length ? { replacedLines } : {}) };
}

/**
 * UTF-8 bytes → text. Invalid bytes are a DataError at their line (a Latin-1 file decoded
 * leniently would train on U+FFFD without a word); with `allowReplacement` they become U+FFFD
 * and the lines that had them are returned.
 */
export function decodeUtf8(bytes: Uint8Array, file: string, options: { allowReplacement?: boolean } = {}): { text: string; replacedLines: number[] } {
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes), replacedLines: [] };
  } catch {
    // found below, with its line
  }
  const replacedLines: number[] = [];
  let lineStart = 0;
  for (let line = 1; lineStart <= bytes.length; line++) {
    const end = bytes.indexOf(0x0a, lineStart);
    const lineBytes = bytes.subarray(lineStart, end < 0 ? bytes.length : end);
    const bad = firstInvalidUtf8(lineBytes);
    if (bad >= 0) {
      if (!options.allowReplacement) {
        const shown = [...lineBytes.subarray(bad, bad + 4)].map((b) => `0x${b.toString(16).padStart(2, "0")}`).join(" ");
        throw new DataError(file, line, "", `invalid UTF-8 at byte ${bad + 1} of the line (${shown}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass --allow-replacement to train on U+FFFD in place of the bad bytes`);
      }
      replacedLines.push(line);
    }
    if (end < 0) break;
    lineStart = end + 1;
  }
  // Only if the validator and TextDecoder ever disagree: still never decode leniently unasked.
  if (!options.allowReplacement && replacedLines.length === 0) throw new Error(`${file}: invalid UTF-8 (line not found); convert the file to UTF-8`);
  return { text: new TextDecoder("utf-8").decode(bytes), replacedLines };
}

/** Index of the first byte that does not start a well-formed UTF-8 sequence (RFC 3629), or -1. */
function firstInvalidUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    const more = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (more < 0) return i;
    // The second byte's range excludes overlong forms (E0, F0), surrogates (ED) and > U+10FFFF (F4).
    const lo = c === 0xe0 ? 0xa0 : c === 0xf0 ? 0x90 : 0x80, hi = c === 0xed ? 0x9f : c === 0xf4 ? 0x8f : 0xbf;
    for (let k = 1; k <= more; k++) {
      const x = b[i + k];
      if (x === undefined || x < (k === 1 ? lo : 0x80) || x > (k === 1 ? hi : 0xbf)) return i;
    }
    i += more + 1;
  }
  return -1;
}

/**
 * Holds out `round(n · evalFraction)` rows (at least 1 when the fraction is > 0, and never all),
 * chosen by a permutation derived from `seed`: the same seed and data give the same split.
 * Both halves keep file order.
 */
export function splitEval<T>(rows: readonly T[], evalFraction: number, seed: number): { train: T[]; eval: T[] } {
  if (!(evalFraction >= 0 && evalFraction < 1)) throw new Error(`evalFraction must be in [0, 1), got ${evalFraction}`);
  if (evalFraction === 0) return { train: [...rows], eval: [] };
  if (rows.length < 2) throw new Error(`evalFraction ${evalFraction} needs at least 2 rows to hold some out, got ${rows.length}`);
  const count = Math.min(rows.length - 1, Math.max(1, Math.round(rows.length * evalFraction)));
  const held = new Set(Rng.derive(seed, "eval-split").permutation(rows.length).slice(0, count));
  return { train: rows.filter((_, i) => !held.has(i)), eval: rows.filter((_, i) => held.has(i)) };
}

export interface TrainingDataOptions extends LoadDatasetOptions {
  trainFile: string;
  /** A separate eval file; excludes evalFraction. */
  evalFile?: string;
  /** Fraction of the train file to hold out for eval. */
  evalFraction?: number;
  seed: number;
}

export interface TrainingData {
  train: TrainingRow[];
  eval: TrainingRow[];
  /** One line per file for the log: `train.jsonl: 998 rows (2 bad rows skipped)`. */
  report: string[];
  badRows: number;
  errors: DataError[];
}

/** Loads the train (and eval) files and splits off eval rows if asked. */
export function loadTrainingData(options: TrainingDataOptions): TrainingData {
  if (options.evalFile && options.evalFraction) throw new Error("give either an eval file or an eval fraction, not both");
  const train = loadJsonl(options.trainFile, options);
  const evalSet = options.evalFile ? loadJsonl(options.evalFile, options) : null;
  const split = evalSet ? { train: train.rows, eval: evalSet.rows } : splitEval(train.rows, options.evalFraction ?? 0, options.seed);
  const line = (d: LoadedDataset) =>
    `${d.file}: ${d.goodRows} rows${d.badRows ? ` (${d.badRows} bad row${d.badRows === 1 ? "" : "s"} skipped; first: ${d.errors[0]!.message})` : ""}` +
    (d.replacedLines ? ` (invalid UTF-8 read as U+FFFD on ${d.replacedLines.length} line${d.replacedLines.length === 1 ? "" : "s"}, first: line ${d.replacedLines[0]})` : "");
  const report = [line(train)];
  if (evalSet) report.push(line(evalSet));
  else if (split.eval.length) report.push(`held out ${split.eval.length} of ${train.goodRows} rows for eval (seed ${options.seed})`);
  return {
    train: split.train,
    eval: split.eval,
    report,
    badRows: train.badRows + (evalSet?.badRows ?? 0),
    errors: [...train.errors, ...(evalSet?.errors ?? [])],
  };
}

export { contentText as messageText, zodProblem as describeZodIssue };
