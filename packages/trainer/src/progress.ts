/**
 * Progress output, read as a TRL/transformers log is read:
 *   step 120/500 [=======>            ] 24% epoch 0.48 loss 1.8420 lr 1.90e-4 grad 0.512 5.1k tok/s ETA 1m14s
 * `loss` is the mean of the per-step losses since the previous printed line (the logging window,
 * as Trainer's `logging_steps` average), not the last step's; metrics.jsonl keeps every step's.
 * On a TTY the status line is redrawn in place (its loss: the window so far) and messages (eval
 * results, checkpoint saves) are printed above it. Otherwise (a pipe, CI log) a plain line is
 * printed at the first step, every `logEvery` steps and at the last, never a control character.
 */
import path from "node:path";
import { formatGeneralSummary } from "./general-eval.ts";

export interface ProgressUpdate {
  step: number;
  loss: number;
  lr: number;
  /** Tokens per second (recent). */
  tokS: number;
  gradNorm?: number;
  /** Seconds of training so far, for the ETA. */
  elapsedS: number;
  /** Fractional epoch of the data position after this step. */
  epoch?: number;
}

/** `eval: step 40 epoch 0.80 eval_loss 1.2345 (best 1.2001)`. */
export function formatEvalLine(step: number, epoch: number, evalLoss: number, best: number | null): string {
  return `eval: step ${step} epoch ${epoch.toFixed(2)} eval_loss ${formatLoss(evalLoss)}${best !== null && best < evalLoss ? ` (best ${formatLoss(best)})` : ""}`;
}

export interface ProgressOptions {
  total: number;
  /** Where to write (default process.stderr). */
  stream?: { write(text: string): unknown; isTTY?: boolean; columns?: number };
  /** Overrides stream.isTTY. */
  tty?: boolean;
  /** Non-TTY: print every N steps (default 10). */
  logEvery?: number;
  /** First step of this run (resume), so the ETA uses only this run's speed. */
  startStep?: number;
  /** Elapsed seconds at startStep. */
  startElapsedS?: number;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** 5120 → "5.1k". */
export function formatCount(n: number): string {
  if (!Number.isFinite(n)) return "?";
  if (Math.abs(n) >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return `${Math.round(n)}`;
}

function formatLoss(x: number): string {
  return Number.isFinite(x) ? x.toFixed(4) : String(x);
}

function formatLr(x: number): string {
  return x === 0 ? "0" : x.toExponential(2);
}

export class ProgressReporter {
  private readonly options: ProgressOptions & { logEvery: number };
  private readonly stream: NonNullable<ProgressOptions["stream"]>;
  readonly tty: boolean;
  private statusShown = false;
  private lastLine = "";
  /** Per-step losses since the last printed line. */
  private windowSum = 0;
  private windowCount = 0;

  constructor(options: ProgressOptions) {
    this.options = { logEvery: 10, ...options };
    this.stream = options.stream ?? process.stderr;
    this.tty = options.tty ?? !!this.stream.isTTY;
  }

  /** Seconds left at the speed of this run so far. */
  eta(u: ProgressUpdate): number {
    const start = this.options.startStep ?? 0;
    const done = u.step - start;
    if (done <= 0) return Number.NaN;
    const perStep = (u.elapsedS - (this.options.startElapsedS ?? 0)) / done;
    return perStep * (this.options.total - u.step);
  }

  line(u: ProgressUpdate, barWidth = 20): string {
    const total = this.options.total;
    const frac = Math.min(1, Math.max(0, u.step / total));
    const head = `step ${u.step}/${total}`;
    const filled = Math.round(frac * barWidth);
    const bar = barWidth > 0 ? ` [${"=".repeat(Math.max(0, filled - 1))}${filled > 0 ? ">" : ""}${" ".repeat(barWidth - filled)}] ${Math.floor(frac * 100)}%` : "";
    const grad = u.gradNorm !== undefined ? ` grad ${u.gradNorm.toFixed(3)}` : "";
    const epoch = u.epoch !== undefined ? ` epoch ${u.epoch.toFixed(2)}` : "";
    return `${head}${bar}${epoch} loss ${formatLoss(u.loss)} lr ${formatLr(u.lr)}${grad} ${formatCount(u.tokS)} tok/s ETA ${formatDuration(this.eta(u))}`;
  }

  /** `u.loss` is this step's loss; the line shows the mean over the logging window. */
  update(u: ProgressUpdate): void {
    this.windowSum += u.loss;
    this.windowCount++;
    const boundary = u.step % this.options.logEvery === 0 || u.step === this.options.total || u.step === (this.options.startStep ?? 0) + 1;
    const shown = { ...u, loss: this.windowSum / this.windowCount };
    if (boundary) this.windowSum = this.windowCount = 0;
    if (this.tty) {
      const columns = this.stream.columns ?? 100;
      let text = this.line(shown);
      if (text.length >= columns) text = this.line(shown, 0);
      if (text.length >= columns) text = text.slice(0, columns - 1);
      this.lastLine = text;
      this.stream.write(`\r\x1b[2K${text}`);
      this.statusShown = true;
    } else if (boundary) {
      this.stream.write(this.line(shown, 0) + "\n");
    }
  }

  /** A message line; on a TTY printed above the status line, which is redrawn. */
  log(message: string): void {
    if (this.tty && this.statusShown) {
      this.stream.write(`\r\x1b[2K${message}\n${this.lastLine}`);
    } else {
      this.stream.write(message + "\n");
    }
  }

  /** Leaves the last status line in place and moves to a fresh line. */
  finish(): void {
    if (this.tty && this.statusShown) this.stream.write("\n");
    this.statusShown = false;
  }
}

export interface TrainingSummary {
  steps: number;
  epochs: number;
  elapsedS: number;
  tokens: number;
  trainableParams: number;
  totalParams?: number;
  firstLoss: number;
  finalLoss: number;
  evalLoss?: number | null;
  bestEvalLoss?: number | null;
  /** The forgetting monitor: general-text perplexity of the base model and of the result. */
  generalPpl?: { base: number; final: number } | null;
  outputDir: string;
  /** Extra lines (e.g. the demo's exact-match accuracy). */
  notes?: string[];
}

/** The end-of-run report. */
export function formatSummary(s: TrainingSummary): string {
  const params = s.totalParams
    ? `${formatCount(s.trainableParams)} trainable of ${formatCount(s.totalParams)} (${((100 * s.trainableParams) / s.totalParams).toFixed(2)}%)`
    : `${formatCount(s.trainableParams)} trainable`;
  const lines = [
    "training finished",
    `  steps        ${s.steps} (${s.epochs.toFixed(2)} epochs) in ${formatDuration(s.elapsedS)}`,
    `  tokens       ${formatCount(s.tokens)} (${formatCount(s.tokens / Math.max(s.elapsedS, 1e-9))} tok/s)`,
    `  parameters   ${params}`,
    `  train loss   ${formatLoss(s.firstLoss)} → ${formatLoss(s.finalLoss)}`,
  ];
  if (s.evalLoss !== undefined && s.evalLoss !== null) {
    lines.push(`  eval loss    ${formatLoss(s.evalLoss)}${s.bestEvalLoss != null ? ` (best ${formatLoss(s.bestEvalLoss)})` : ""}`);
  }
  if (s.generalPpl) lines.push(`  forgetting   ${formatGeneralSummary(s.generalPpl.base, s.generalPpl.final)}`);
  for (const note of s.notes ?? []) lines.push(`  ${note}`);
  // OUT/adapter for LoRA, OUT/model for a full run: the line says which it wrote.
  lines.push(`  ${path.basename(s.outputDir) === "model" ? "model  " : "adapter"}      ${s.outputDir}`);
  return lines.join("\n");
}
