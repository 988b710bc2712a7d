import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { loraTensorName } from "@tuneloom/model";
import { listCheckpoints, loadCheckpoint, saveCheckpoint, type OptimizerState, type TrainerState } from "../src/checkpoint.ts";
import { Rng } from "../src/rng.ts";
import { LrSchedule } from "../src/schedule.ts";
import { sampleAdapter, tempDir, tinyModel } from "./helpers.ts";

function checkpointAt(step: number) {
  const adapter = sampleAdapter();
  const rng = new Rng(step);
  const moments = new Map<string, { m: Float32Array; v: Float32Array }>();
  for (const w of adapter.weights) {
    for (const [which, size] of [["A", w.A.length], ["B", w.B.length]] as const) {
      moments.set(loraTensorName(w.spec, which), { m: rng.fillUniform(new Float32Array(size), -1, 1), v: rng.fillUniform(new Float32Array(size), 0, 1) });
    }
  }
  const optimizer: OptimizerState = { step, moments };
  const schedule = new LrSchedule({ kind: "cosine", baseLr: 2e-4, warmupSteps: 3, totalSteps: 50 }, step);
  const state: TrainerState = {
    step, dataPosition: { epoch: 1, step: step % 7 }, schedule: schedule.state(),
    tokensSeen: 1000 * step, elapsedS: step / 2, bestEvalLoss: step > 10 ? 1.25 : null,
  };
  return { adapter, optimizer, state };
}

describe("checkpoints", () => {
  test("save → load restores adapter, optimizer moments, data position and schedule", () => {
    const out = tempDir();
    const saved = checkpointAt(20);
    const dir = saveCheckpoint(out, saved);
    expect(dir).toBe(path.join(out, "checkpoint-20"));
    const loaded = loadCheckpoint(dir, tinyModel().config);
    expect(loaded.state).toEqual(saved.state);
    expect(loaded.optimizer.step).toBe(20);
    expect([...loaded.optimizer.moments.keys()].sort()).toEqual([...saved.optimizer.moments.keys()].sort());
    for (const [name, { m, v }] of saved.optimizer.moments) {
      expect(loaded.optimizer.moments.get(name)!.m).toEqual(m);
      expect(loaded.optimizer.moments.get(name)!.v).toEqual(v);
    }
    loaded.adapter.weights.forEach((w, i) => expect(w.B).toEqual(saved.adapter.weights[i]!.B));
    expect(LrSchedule.fromState(loaded.state.schedule).lr).toBe(LrSchedule.fromState(saved.state.schedule).lr);
    // A checkpoint is a servable adapter as it is.
    for (const f of ["adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "optimizer.safetensors", "trainer_state.json"]) {
      expect(existsSync(path.join(dir, f))).toBe(true);
    }
  });

  test("keep last K", () => {
    const out = tempDir();
    for (const step of [5, 10, 15, 20]) saveCheckpoint(out, checkpointAt(step), { keepLast: 2 });
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([15, 20]);
    expect(readdirSync(out).sort()).toEqual(["checkpoint-15", "checkpoint-20"]);
  });

  test("listCheckpoints: complete checkpoints by step, ignoring temp and incomplete dirs", () => {
    const out = tempDir();
    saveCheckpoint(out, checkpointAt(5));
    saveCheckpoint(out, checkpointAt(40));
    mkdirSync(path.join(out, "checkpoint-90.tmp-1234")); // a save killed mid-way
    mkdirSync(path.join(out, "checkpoint-100")); // no trainer_state.json
    writeFileSync(path.join(out, "checkpoint-100", "adapter_config.json"), "{}");
    mkdirSync(path.join(out, "checkpoint-7")); // numbers, not strings, decide
    expect(listCheckpoints(out)).toEqual([5, 40].map((step) => ({ step, dir: path.join(out, `checkpoint-${step}`) })));
    expect(listCheckpoints(tempDir())).toEqual([]);
  });

  test("a failed save leaves no checkpoint directory", () => {
    const out = tempDir();
    const bad = checkpointAt(3);
    bad.optimizer.moments.values().next().value!.m = new Float32Array(1);
    expect(() => saveCheckpoint(out, bad)).toThrow("moments of");
    expect(readdirSync(out)).toEqual([]);
  });

  test("a broken trainer_state.json is reported with the field", () => {
    const out = tempDir();
    const dir = saveCheckpoint(out, checkpointAt(2));
    writeFileSync(path.join(dir, "trainer_state.json"), JSON.stringify({ format: "tuneloom-trainer-state", version: 1, step: -1 }));
    expect(() => loadCheckpoint(dir)).toThrow("trainer_state.json: step:");
    expect(() => loadCheckpoint(tempDir())).toThrow("not a checkpoint directory");
  });
});
