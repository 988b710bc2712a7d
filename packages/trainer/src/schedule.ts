/**
 * Learning-rate schedules, the same functions as transformers' `get_scheduler`:
 *
 *   warmup (step < W):  factor = step / max(1, W)
 *   constant:           1
 *   linear:             max(0, (N − step) / max(1, N − W))
 *   cosine:             p = (step − W) / max(1, N − W);  max(0, ½·(1 + cos(π · 2·cycles · p))), cycles = ½
 *   cosine + min ratio: factor · (1 − m) + m   (transformers' cosine_with_min_lr, min_lr_rate m)
 *
 * lr = baseLr · factor(step), where `step` counts optimizer steps already taken, exactly as
 * LambdaLR does: the first update uses step 0 (so lr 0 when W > 0, as in transformers), the
 * update after N−1 steps uses step N−1. W and N are in optimizer steps (after gradient
 * accumulation). `warmupRatio` gives W = ceil(N · ratio) (TrainingArguments.get_warmup_steps).
 */
export const SCHEDULE_KINDS = ["cosine", "linear", "constant"] as const;
export type ScheduleKind = (typeof SCHEDULE_KINDS)[number];

export interface ScheduleConfig {
  kind: ScheduleKind;
  baseLr: number;
  warmupSteps: number;
  totalSteps: number;
  /** cosine only: floor as a fraction of baseLr (default 0). */
  minLrRatio?: number;
  /** cosine only: number of half-waves ×2 (transformers' num_cycles, default 0.5). */
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
  return config;
}

/** The multiplier of baseLr after `step` optimizer steps. */
export function lrFactor(config: ScheduleConfig, step: number): number {
  const W = config.warmupSteps;
  const N = config.totalSteps;
  if (step < W) return step / Math.max(1, W);
  switch (config.kind) {
    case "constant":
      return 1;
    case "linear":
      return Math.max(0, (N - step) / Math.max(1, N - W));
    case "cosine": {
      const progress = (step - W) / Math.max(1, N - W);
      const cycles = config.numCycles ?? 0.5;
      const factor = Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
      const m = config.minLrRatio ?? 0;
      return m ? factor * (1 - m) + m : factor;
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
