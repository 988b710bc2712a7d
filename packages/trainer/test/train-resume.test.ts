/**
 * Resume equivalence over the whole loop: a run that crashes after step K and is resumed from
 * its checkpoint must end with exactly the adapter of the uninterrupted run. The setup makes
 * each restored piece matter: shuffled data crossing an epoch boundary after the resume
 * (data position), gradient accumulation (position counted in micro-batches), LoRA dropout
 * keyed by the step (masks), a cosine schedule with warmup (lr by step), AdamW (moments and
 * bias correction).
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import path from "node:path";
import { openSafetensors, readAdapterDir } from "@tuneloom/model";
import { checkpointDirName, listCheckpoints, OPTIMIZER_FILE, TRAINER_STATE_FILE } from "../src/checkpoint.ts";
import { type TrainOptions, train } from "../src/train-loop.ts";
import { smallRunOptions, tempDir, writeCapitalsData as writeData, optimizerBytes, stateWithoutClock } from "./helpers.ts";

// 10 examples, 2 per micro-batch, 2 micro-batches per step: an epoch is 5 micro-batches, so
// the 4 steps reach into epoch 1 (a new shuffle) and step 3, the first after the resume,
// straddles the boundary. A checkpoint every step, the newest 2 kept.
const STEPS = 4, SAVE_EVERY = 1, CRASH_AFTER = 2;

function options(data: string, out: string): TrainOptions {
  return smallRunOptions(data, out, { maxSteps: STEPS, saveSteps: SAVE_EVERY, keepCheckpoints: 2 });
}


describe("train(): resume from a checkpoint", () => {
  test(`crash after step ${CRASH_AFTER}, resume to ${STEPS}: the same adapter and checkpoint as an uninterrupted run (grad accum 2, shuffling, dropout)`, async () => {
    const root = tempDir("resume-");
    const data = writeData(root);
    const fullOut = path.join(root, "full"), crashOut = path.join(root, "crash");
    const full = await train(options(data, fullOut));
    expect(full.steps).toBe(STEPS);
    expect(listCheckpoints(fullOut).map((c) => c.step)).toEqual([2, 3]);

    const crash = new Error("simulated crash");
    await expect(train({
      ...options(data, crashOut),
      onStepEnd: ({ step }) => { if (step === CRASH_AFTER) throw crash; },
    })).rejects.toBe(crash);
    expect(listCheckpoints(crashOut).map((c) => c.step)).toEqual([1, 2]);
    // The crashed run's state says where the next micro-batch is: 4 of 5 consumed in epoch 0.
    expect(stateWithoutClock(path.join(crashOut, checkpointDirName(CRASH_AFTER))).dataPosition).toEqual({ epoch: 0, step: 4 });

    const resumed = await train({ ...options(data, crashOut), resume: crashOut });
    expect(resumed.steps).toBe(STEPS);

    // The checkpoint written after the resume (step 3) equals the uninterrupted run's: state
    // (data position, schedule, tokens seen; dropout masks are keyed by the step) and AdamW
    // moments, bit for bit.
    const ck3 = checkpointDirName(3);
    expect(stateWithoutClock(path.join(crashOut, ck3))).toEqual(stateWithoutClock(path.join(fullOut, ck3)));
    expect(optimizerBytes(path.join(crashOut, ck3))).toEqual(optimizerBytes(path.join(fullOut, ck3)));

    const a = readAdapterDir(full.adapterDir).weights, b = readAdapterDir(resumed.adapterDir).weights;
    expect(b.map((w) => w.spec.base)).toEqual(a.map((w) => w.spec.base));
    for (let i = 0; i < a.length; i++) {
      expect(b[i]!.A).toEqual(a[i]!.A);
      expect(b[i]!.B).toEqual(a[i]!.B);
    }
    // Training moved the adapter (B starts at zero), so equality above is not trivial.
    expect(a.some((w) => w.B.some((v) => v !== 0))).toBe(true);
    expect(resumed.finalLoss).toBe(full.finalLoss);
    // metrics.jsonl: the crashed run's steps 1-2 then the resumed 3-4, as the uninterrupted run logged them.
    const curve = (out: string) => readFileSync(path.join(out, "metrics.jsonl"), "utf8").trim().split("\n")
      .map((l) => JSON.parse(l)).map((r) => [r.step, r.loss, r.lr, r.grad_norm, r.tokens]);
    expect(curve(crashOut)).toEqual(curve(fullOut));
    expect(curve(fullOut).map((r) => r[0])).toEqual([1, 2, 3, 4]);
  }, 600_000); // three training runs: about a minute on a shared 2-core CPU with lavapipe
});
