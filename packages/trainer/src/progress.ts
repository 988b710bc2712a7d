/**
 * Progress output. On a TTY one status line is redrawn in place
 *   step 120/500 [=======>            ] 24% loss 1.842 lr 1.9e-4 5.1k tok/s ETA 1m14s
 * and messages (eval results, checkpoints) are printed above it. Otherwise (a pipe, CI log) a
 * plain line is printed every `logEvery` steps and at the last step, never a control character.
 */
export interface ProgressUpdate {
  step: number;
  loss: number;
  lr: number;
  /** Tokens per second (recent). */
  tokS: number;
  gradNorm?: number;
  /** Seconds of training so far, for the ETA. */
  elapsedS: number;
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
    return `${head}${bar} loss ${formatLoss(u.loss)} lr ${formatLr(u.lr)}${grad} ${formatCount(u.tokS)} tok/s ETA ${formatDuration(this.eta(u))}`;
  }

  update(u: ProgressUpdate): void {
    if (this.tty) {
      const columns = this.stream.columns ?? 100;
      let text = this.line(u);
      if (text.length >= columns) text = this.line(u, 0);
      if (text.length >= columns) text = text.slice(0, columns - 1);
      this.lastLine = text;
      this.stream.write(`\r\x1b[2K${text}`);
      this.statusShown = true;
    } else if (u.step % this.options.logEvery === 0 || u.step === this.options.total || u.step === (this.options.startStep ?? 0) + 1) {
      this.stream.write(this.line(u, 0) + "\n");
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
  for (const note of s.notes ?? []) lines.push(`  ${note}`);
  lines.push(`  adapter      ${s.outputDir}`);
  return lines.join("\n");
}
