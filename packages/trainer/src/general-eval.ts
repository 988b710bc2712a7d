/**
 * The forgetting monitor: perplexity on general text the tuning never trains on, for the base
 * model (once, before training: LoRA disabled) and for the model being tuned (at every
 * evaluation). Its rise over the base is what the tuning cost the model's general language:
 *
 *   forgetting % = 100 · (ppl_tuned / ppl_base − 1)        ppl = exp(mean next-token NLL)
 *
 * The text: `--general-eval FILE` (plain UTF-8 text: one document; `.jsonl`/`.json`: one
 * document per `{"text"}` row), else the bundled data/general-text.txt (a few KB of plain,
 * general-knowledge English prose written for this project). Each document is tokenized as
 * `perplexity --text-file` tokenizes (no chat template) and cut into windows of at most
 * `maxLength` tokens that overlap by one, so every token but a document's first is predicted
 * exactly once, each window from an empty context. Windows are packed into batches and scored
 * with the model's nll (eval-set.ts's sumNll): no dropout, no update.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import type { GpuModel, LayerLora, ModelTokenizer } from "@tuneloom/model";
import { type Batch, DataLoader } from "./batching.ts";
import { decodeUtf8, loadJsonl } from "./data.ts";
import { sumNll } from "./eval-set.ts";
import type { TokenizedExample } from "./tokenize-conversation.ts";

export const DEFAULT_GENERAL_TEXT_FILE = path.resolve(import.meta.dir, "../data/general-text.txt");

/** Tokens per scoring batch (windows are packed up to this). */
const BATCH_TOKENS = 4096;

export interface GeneralText {
  /** The file read (the bundled one when --general-eval is not given). */
  file: string;
  /** "bundled general-text.txt" or the file as given. */
  label: string;
  documents: string[];
}

/** Reads and validates the general text (before any expensive work): plain text, or {"text"} rows. */
export function readGeneralText(file?: string): GeneralText {
  const chosen = file ?? DEFAULT_GENERAL_TEXT_FILE;
  const label = file === undefined ? "bundled general-text.txt" : file;
  let documents: string[];
  if (/\.jsonl?$/i.test(chosen)) {
    const rows = loadJsonl(chosen).rows;
    const bad = rows.find((r) => r.kind !== "text");
    if (bad) throw new Error(`--general-eval ${chosen}:${bad.source.line}: expected {"text": ...} rows (general text is scored as plain text, no chat template), got a ${bad.kind} row`);
    documents = rows.map((r) => (r.kind === "text" ? r.text : ""));
  } else {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(chosen);
    } catch (e) {
      throw new Error(`--general-eval ${chosen}: cannot read the file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    documents = [decodeUtf8(bytes, chosen).text];
  }
  documents = documents.filter((d) => d.trim() !== "");
  if (documents.length === 0) throw new Error(`--general-eval ${chosen}: no text`);
  return { file: chosen, label, documents };
}

/** Token ids → windows of ≤ maxLength tokens overlapping by one (every id but the first is a target once). */
export function textWindows(ids: readonly number[], maxLength: number): TokenizedExample[] {
  if (maxLength < 2) throw new Error(`textWindows: maxLength must be ≥ 2, got ${maxLength}`);
  const out: TokenizedExample[] = [];
  for (let start = 0; start + 1 < ids.length; start += maxLength - 1) {
    const w = Int32Array.from(ids.slice(start, start + maxLength));
    out.push({ inputIds: w, labels: w, numTargets: w.length - 1, truncated: false, source: { file: "general-text", line: 0 } });
  }
  return out;
}

export interface GeneralEvalSet {
  text: GeneralText;
  batches: Batch[];
  /** Tokens scored (targets). */
  tokens: number;
}

export function generalEvalSet(text: GeneralText, tokenizer: ModelTokenizer, maxLength: number, padId: number): GeneralEvalSet {
  const examples = text.documents.flatMap((d) => textWindows(tokenizer.encode(d).ids, maxLength));
  if (examples.length === 0) throw new Error(`--general-eval ${text.file}: the text is shorter than 2 tokens`);
  const batchSize = Math.max(1, Math.floor(BATCH_TOKENS / maxLength));
  const batches = DataLoader.evalBatches(examples, { mode: "pack", batchSize, maxLength, padId });
  return { text, batches, tokens: batches.reduce((n, b) => n + b.numTargets, 0) };
}

/** Perplexity of the general text under the model (with `lora`, or the base model without). */
export async function generalTextPerplexity(model: GpuModel, set: GeneralEvalSet, lora?: readonly LayerLora[]): Promise<number> {
  const { sum, count } = await sumNll(model, set.batches, lora);
  return Math.exp(sum / count);
}

/** 100 · (ppl / base − 1). */
export function forgettingPct(ppl: number, basePpl: number): number {
  return 100 * (ppl / basePpl - 1);
}

/** 12.1, 3.41, 243100: three significant digits below 1000, whole numbers above. */
export function formatPpl(ppl: number): string {
  if (!Number.isFinite(ppl)) return String(ppl);
  return ppl >= 1000 ? String(Math.round(ppl)) : ppl.toPrecision(3);
}

/** +1.7%, −0.4%, +11%. */
export function formatPct(pct: number): string {
  const sign = pct >= 0 ? "+" : "−";
  const a = Math.abs(pct);
  return `${sign}${a < 10 ? a.toFixed(1) : a.toFixed(0)}%`;
}

/** `general-text ppl 12.1 (base 11.9, +1.7%)`. */
export function formatGeneralEvalLine(ppl: number, basePpl: number): string {
  return `general-text ppl ${formatPpl(ppl)} (base ${formatPpl(basePpl)}, ${formatPct(forgettingPct(ppl, basePpl))})`;
}

/** `general-text perplexity 12.1 → 13.4, +11%` (the end-of-run summary). */
export function formatGeneralSummary(basePpl: number, finalPpl: number): string {
  return `general-text perplexity ${formatPpl(basePpl)} → ${formatPpl(finalPpl)}, ${formatPct(forgettingPct(finalPpl, basePpl))}`;
}
