/**
 * Learning-rate schedules: transformers' `get_scheduler`, by the names `lr_scheduler_type` takes
 * (W warmup steps, N total steps, s the step; every warmup is s / max(1, W) while s < W):
 *
 *   linear                 max(0, (N − s) / max(1, N − W))
 *   cosine                 p = (s − W) / max(1, N − W);  max(0, ½·(1 + cos(π · 2·c · p))), c = numCycles (½)
 *   cosine_with_min_lr     m + (1 − m) · cosine, m = minLrRatio (transformers' min_lr_rate)
 *   cosine_with_restarts   p ≥ 1: 0;  else max(0, ½·(1 + cos(π · ((c · p) mod 1)))), c = numCycles (1)
 *   polynomial             s > N: e/lr;  else ((lr − e) · (1 − (s − W)/(N − W))^power + e) / lr, e = 1e-7, power 1
 *   constant               1 (no warmup, as transformers' get_constant_schedule ignores it)
 *   constant_with_warmup   1 after warmup
 *   inverse_sqrt           1 / √((s + T − W) / T), T = W or 10 000 when W = 0
 *
 * lr = baseLr · factor(step), where `step` counts optimizer steps already taken, exactly as
 * LambdaLR does: the first update uses step 0 (so lr 0 when W > 0, as in transformers), the
 * update after N−1 steps uses step N−1. W and N are in optimizer steps (after gradient
 * accumulation). `warmupRatio` gives W = ceil(N · ratio) (TrainingArguments.get_warmup_steps).
 */
export const SCHEDULE_KINDS = [
  "linear", "cosine", "cosine_with_min_lr", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
] as const;
export type ScheduleKind = (typeof SCHEDULE_KINDS)[number];

/** transformers' polynomial defaults (get_polynomial_decay_schedule_with_warmup). */
const POLY_LR_END = 1e-7;
const POLY_POWER = 1;

export interface ScheduleConfig {
  kind: ScheduleKind;
  baseLr: number;
  warmupSteps: number;
  totalSteps: number;
  /** cosine, cosine_with_min_lr: floor as a fraction of baseLr (transformers' min_lr_rate; default 0). */
  minLrRatio?: number;
  /** cosine: waves (default 0.5: half a wave); cosine_with_restarts: restarts (default 1). transformers' num_cycles. */
  numCycles?: number;
}

/** Saved with a checkpoint so a resumed run continues the same curve. */
export interface ScheduleState extends ScheduleConfig {
  /** Optimizer steps taken. */
  step: number;
}

/** W from either an explicit count or a ratio of N; transformers prefers the count when > 0. */
export function resolveWarmupSteps(totalSteps: number, options: { warmupSteps?: number; warmupRatio?: number }): number {
  if (options.warmupSteps !== undefined && options.warmupSteps > 0) return options.warmupSteps;
  return Math.ceil(totalSteps * (options.warmupRatio ?? 0));
}

export function validateSchedule(config: ScheduleConfig): ScheduleConfig {
  if (!(SCHEDULE_KINDS as readonly string[]).includes(config.kind)) {
    throw new Error(`unknown lr schedule "${config.kind}": expected one of ${SCHEDULE_KINDS.join(", ")}`);
  }
  if (!(config.baseLr > 0)) throw new Error(`learning rate must be > 0, got ${config.baseLr}`);
  if (!(Number.isInteger(config.totalSteps) && config.totalSteps >= 1)) throw new Error(`total steps must be a positive integer, got ${config.totalSteps}`);
  if (!(Number.isInteger(config.warmupSteps) && config.warmupSteps >= 0)) throw new Error(`warmup steps must be a non-negative integer, got ${config.warmupSteps}`);
  const m = config.minLrRatio ?? 0;
  if (!(m >= 0 && m <= 1)) throw new Error(`minLrRatio must be in [0, 1], got ${m}`);
  if (config.kind === "polynomial" && !(config.baseLr > POLY_LR_END)) throw new Error(`polynomial: learning rate must be > lr_end (${POLY_LR_END}), got ${config.baseLr}`);
  return config;
}

/** The multiplier of baseLr after `step` optimizer steps. */
export function lrFactor(config: ScheduleConfig, step: number): number {
  const W = config.warmupSteps;
  const N = config.totalSteps;
  if (config.kind === "constant") return 1;
  if (step < W) return step / Math.max(1, W);
  const progress = (step - W) / Math.max(1, N - W);
  switch (config.kind) {
    case "constant_with_warmup":
      return 1;
    case "linear":
      return Math.max(0, (N - step) / Math.max(1, N - W));
    case "cosine":
    case "cosine_with_min_lr": {
      const factor = 0.5 * (1 + Math.cos(Math.PI * (config.numCycles ?? 0.5) * 2 * progress));
      const m = config.minLrRatio ?? 0;
      return Math.max(0, m ? factor * (1 - m) + m : factor);
    }
    case "cosine_with_restarts":
      if (progress >= 1) return 0;
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * (((config.numCycles ?? 1) * progress) % 1))));
    case "polynomial": {
      const lr = config.baseLr;
      if (step > N) return POLY_LR_END / lr;
      return ((lr - POLY_LR_END) * (1 - progress) ** POLY_POWER + POLY_LR_END) / lr;
    }
    case "inverse_sqrt": {
      const timescale = W || 10_000;
      return 1 / Math.sqrt((step + timescale - W) / timescale);
    }
  }
}

export function learningRate(config: ScheduleConfig, step: number): number {
  return config.baseLr * lrFactor(config, step);
}

/** A schedule with a step counter, for the training loop and checkpoints. */
export class LrSchedule {
  readonly config: ScheduleConfig;
  step: number;

  constructor(config: ScheduleConfig, step = 0) {
    this.config = validateSchedule({ ...config });
    this.step = step;
  }

  static fromState(state: ScheduleState): LrSchedule {
    const { step, ...config } = state;
    return new LrSchedule(config, step);
  }

  /** The lr for the next optimizer update. */
  get lr(): number {
    return learningRate(this.config, this.step);
  }

  /** Call after each optimizer update. */
  advance(): void {
    this.step++;
  }

  state(): ScheduleState {
    return { ...this.config, step: this.step };
  }
}
