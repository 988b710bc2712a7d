import { describe, expect, test } from "bun:test";
import { LrSchedule, learningRate, lrFactor, resolveWarmupSteps, type ScheduleConfig } from "../src/schedule.ts";

// Expected values worked out by hand from transformers' formulas (optimization.py):
//   warmup: s/W;  cosine: ½(1 + cos(π·2·0.5·(s−W)/(N−W)));  linear: (N−s)/(N−W).
const base = { baseLr: 1e-3, warmupSteps: 10, totalSteps: 100 };

describe("schedules match transformers", () => {
  test("cosine with warmup (get_cosine_schedule_with_warmup)", () => {
    const c: ScheduleConfig = { kind: "cosine", ...base };
    expect(lrFactor(c, 0)).toBe(0); // LambdaLR's first step is step 0: lr 0 during warmup start
    expect(lrFactor(c, 5)).toBe(0.5);
    expect(lrFactor(c, 10)).toBe(1);
    expect(lrFactor(c, 55)).toBeCloseTo(0.5, 15); // halfway: cos(π/2) = 0
    expect(lrFactor(c, 32)).toBeCloseTo(0.8596699001693255, 15);
    expect(lrFactor(c, 99)).toBeCloseTo(0.00030458649045211894, 15);
    expect(lrFactor(c, 100)).toBe(0);
    expect(learningRate(c, 55)).toBeCloseTo(5e-4, 18);
    expect(lrFactor({ kind: "cosine", baseLr: 1, warmupSteps: 0, totalSteps: 3 }, 1)).toBeCloseTo(0.75, 15);
  });

  test("cosine with a floor (cosine_with_min_lr, min_lr_rate 0.1)", () => {
    const c: ScheduleConfig = { kind: "cosine", ...base, minLrRatio: 0.1 };
    expect(lrFactor(c, 55)).toBeCloseTo(0.55, 15);
    expect(lrFactor(c, 100)).toBeCloseTo(0.1, 15);
    expect(lrFactor(c, 5)).toBe(0.5); // warmup is unchanged
  });

  test("linear with warmup (get_linear_schedule_with_warmup)", () => {
    const c: ScheduleConfig = { kind: "linear", ...base };
    expect(lrFactor(c, 3)).toBeCloseTo(0.3, 15);
    expect(lrFactor(c, 10)).toBe(1);
    expect(lrFactor(c, 55)).toBe(0.5); // (100−55)/90
    expect(lrFactor(c, 91)).toBeCloseTo(0.1, 15);
    expect(lrFactor(c, 100)).toBe(0);
    expect(lrFactor(c, 120)).toBe(0); // clamped at 0
  });

  test("constant ignores warmup (get_constant_schedule); constant_with_warmup does not", () => {
    expect(lrFactor({ kind: "constant", ...base }, 0)).toBe(1);
    expect(lrFactor({ kind: "constant", ...base }, 4)).toBe(1);
    expect(lrFactor({ kind: "constant_with_warmup", ...base }, 0)).toBe(0);
    expect(lrFactor({ kind: "constant_with_warmup", ...base }, 4)).toBeCloseTo(0.4, 15);
    expect(lrFactor({ kind: "constant_with_warmup", ...base }, 50)).toBe(1);
    expect(lrFactor({ kind: "constant_with_warmup", ...base }, 100)).toBe(1);
  });

  test("cosine_with_min_lr by name (min_lr_rate 0.1)", () => {
    const c: ScheduleConfig = { kind: "cosine_with_min_lr", ...base, minLrRatio: 0.1 };
    expect(lrFactor(c, 5)).toBe(0.5);
    expect(lrFactor(c, 55)).toBeCloseTo(0.55, 15);
    expect(lrFactor(c, 32)).toBeCloseTo(0.1 + 0.9 * 0.8596699001693255, 15);
    expect(lrFactor(c, 100)).toBeCloseTo(0.1, 15);
  });

  test("cosine_with_restarts (num_cycles 2): two full half-waves, 0 at the end", () => {
    const c: ScheduleConfig = { kind: "cosine_with_restarts", ...base, numCycles: 2 };
    // p = (s − 10)/90; factor = ½(1 + cos(π·((2p) mod 1)))
    expect(lrFactor(c, 10)).toBe(1);
    expect(lrFactor(c, 32.5)).toBeCloseTo(0.5, 15); // 2p = 0.5
    expect(lrFactor(c, 55)).toBe(1); // 2p = 1 → restart
    expect(lrFactor(c, 77.5)).toBeCloseTo(0.5, 15);
    expect(lrFactor(c, 100)).toBe(0);
    expect(lrFactor({ kind: "cosine_with_restarts", ...base }, 55)).toBeCloseTo(0.5, 15); // default 1 cycle = cosine
  });

  test("polynomial (power 1, lr_end 1e-7): linear to lr_end, not to 0", () => {
    const c: ScheduleConfig = { kind: "polynomial", ...base };
    expect(lrFactor(c, 5)).toBe(0.5);
    // ((1e-3 − 1e-7)·(1 − 45/90) + 1e-7) / 1e-3
    expect(lrFactor(c, 55)).toBeCloseTo(((1e-3 - 1e-7) * 0.5 + 1e-7) / 1e-3, 15);
    expect(lrFactor(c, 100)).toBeCloseTo(1e-4, 15);
    expect(lrFactor(c, 150)).toBeCloseTo(1e-4, 15);
  });

  test("inverse_sqrt: timescale W, else 10 000", () => {
    const c: ScheduleConfig = { kind: "inverse_sqrt", ...base };
    expect(lrFactor(c, 5)).toBe(0.5);
    expect(lrFactor(c, 10)).toBe(1);
    expect(lrFactor(c, 40)).toBeCloseTo(0.5, 15); // 1/√(40/10)
    expect(lrFactor({ kind: "inverse_sqrt", ...base, warmupSteps: 0 }, 30_000)).toBeCloseTo(0.5, 15); // 1/√(40000/10000)
  });

  test("warmup ratio rounds up like TrainingArguments.get_warmup_steps", () => {
    expect(resolveWarmupSteps(1000, { warmupRatio: 0.03 })).toBe(30);
    expect(resolveWarmupSteps(101, { warmupRatio: 0.1 })).toBe(11);
    expect(resolveWarmupSteps(101, { warmupSteps: 5, warmupRatio: 0.1 })).toBe(5);
    expect(resolveWarmupSteps(101, {})).toBe(0);
  });
});

describe("LrSchedule state", () => {
  test("advances per optimizer step and resumes from its state", () => {
    const s = new LrSchedule({ kind: "cosine", ...base });
    for (let i = 0; i < 32; i++) s.advance();
    const restored = LrSchedule.fromState(JSON.parse(JSON.stringify(s.state())));
    expect(restored.step).toBe(32);
    expect(restored.lr).toBe(s.lr);
    expect(restored.lr).toBeCloseTo(1e-3 * 0.8596699001693255, 18);
  });

  test("bad configs are refused with the reason", () => {
    expect(() => new LrSchedule({ kind: "cosine", baseLr: 0, warmupSteps: 0, totalSteps: 1 })).toThrow("learning rate must be > 0");
    expect(() => new LrSchedule({ kind: "exp" as "cosine", baseLr: 1, warmupSteps: 0, totalSteps: 1 })).toThrow('unknown lr schedule "exp"');
    expect(() => new LrSchedule({ kind: "linear", baseLr: 1, warmupSteps: 0, totalSteps: 0 })).toThrow("total steps");
  });
});
