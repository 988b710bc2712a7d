/**
 * metrics.jsonl: one JSON object per logged optimizer step.
 *
 *   {"step": 10, "loss": 2.31, "lr": 0.0002, "grad_norm": 1.7, "tokens": 20480, "tok_s": 5120.4, "elapsed_s": 4.0}
 *
 * step: optimizer steps taken; loss: mean loss over the step's target tokens (all micro-batches);
 * grad_norm: global L2 norm of the LoRA gradients before clipping; tokens: non-pad tokens trained
 * on since the start of the run (resume included); tok_s: tokens per second over the step;
 * elapsed_s: training wall time since the start. eval_loss is present on steps that evaluated.
 * general_ppl / general_ppl_base (the forgetting monitor, general-eval.ts): on steps that
 * evaluated, the general-text perplexity of the model being tuned and of the base model.
 * The file is appended line by line, so a crash loses at most the line being written; on resume
 * records after the checkpoint's step are dropped so the file never holds two histories.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

export interface MetricsRecord {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  tok_s: number;
  elapsed_s: number;
  eval_loss?: number;
  general_ppl?: number;
  general_ppl_base?: number;
}

/** Fields present only on steps that evaluated. */
type EvalFields = Pick<MetricsRecord, "eval_loss" | "general_ppl" | "general_ppl_base">;
const EVAL_FIELDS = ["eval_loss", "general_ppl", "general_ppl_base"] as const;
const FIELDS = ["step", "loss", "lr", "grad_norm", "tokens", "tok_s", "elapsed_s", ...EVAL_FIELDS] as const;

/** One line, fields in a fixed order, non-finite numbers as null (JSON has no NaN). */
export function formatMetricsLine(record: MetricsRecord): string {
  const out: Record<string, number | null> = {};
  for (const key of FIELDS) {
    const v = record[key];
    if (v === undefined) continue;
    out[key] = Number.isFinite(v) ? v : null;
  }
  return JSON.stringify(out);
}

export function parseMetricsJsonl(text: string, file = "metrics.jsonl"): MetricsRecord[] {
  const records: MetricsRecord[] = [];
  const lines = text.split("\n");
  const lastLine = lines.findLastIndex((l) => l.trim() !== "");
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(line);
    } catch {
      // A line cut by a crash is the only way a line can be bad; skip it rather than fail a resume.
      if (i === lastLine) return;
      throw new Error(`${file}:${i + 1}: invalid JSON`);
    }
    const num = (k: string) => (typeof value[k] === "number" ? (value[k] as number) : Number.NaN);
    const record: MetricsRecord = {
      step: num("step"), loss: num("loss"), lr: num("lr"), grad_norm: num("grad_norm"),
      tokens: num("tokens"), tok_s: num("tok_s"), elapsed_s: num("elapsed_s"),
    };
    for (const k of EVAL_FIELDS) if (value[k] !== undefined) record[k] = num(k);
    records.push(record);
  });
  return records;
}

export function readMetricsJsonl(file: string): MetricsRecord[] {
  return existsSync(file) ? parseMetricsJsonl(readFileSync(file, "utf8"), file) : [];
}

/** Appends records to a metrics.jsonl and keeps them in memory for the loss curve. */
export class MetricsLog {
  readonly file: string | null;
  readonly records: MetricsRecord[];

  /**
   * `resumeFromStep`: keep the existing file's records up to that step (dropping any later ones
   * written after the checkpoint); without it the file starts empty. `file` null: records in
   * memory only (a data-parallel rank other than 0, which writes nothing).
   */
  constructor(file: string | null, options: { resumeFromStep?: number } = {}) {
    this.file = file;
    this.records = options.resumeFromStep === undefined || !file ? [] : readMetricsJsonl(file).filter((r) => r.step <= options.resumeFromStep!);
    if (!file) return;
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, this.text());
  }

  log(record: MetricsRecord): void {
    this.records.push(record);
    if (this.file) appendFileSync(this.file, formatMetricsLine(record) + "\n");
  }

  /** Attaches an eval loss to the record of `step` (appending a line for it). */
  logEval(step: number, evalLoss: number): void {
    this.attach(step, { eval_loss: evalLoss });
  }

  /** Attaches evaluation fields to the record of `step` (a line of their own when it has none). */
  attach(step: number, fields: EvalFields): void {
    const last = this.records.findLast((r) => r.step === step);
    if (last) {
      Object.assign(last, fields);
      if (this.file) writeFileSync(this.file, this.text());
    } else {
      this.log({ step, loss: Number.NaN, lr: Number.NaN, grad_norm: Number.NaN, tokens: Number.NaN, tok_s: Number.NaN, elapsed_s: Number.NaN, ...fields });
    }
  }

  text(): string {
    return this.records.map((r) => formatMetricsLine(r) + "\n").join("");
  }
}
