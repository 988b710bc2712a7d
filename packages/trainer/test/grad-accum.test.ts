/**
 * Gradient accumulation on one process: `--batch-size 2 --grad-accum 2` must train exactly as
 * `--batch-size 4` (train-loop.ts: the loss of a step is the mean over the target tokens of all
 * its micro-batches). It did not: the cross-entropy of micro-batch 1 handed its scratch back to
 * the buffer pool while still only recorded, and micro-batch 2's token ids, uploaded at once,
 * took that buffer and were overwritten when the step was submitted (step 4 here: loss 8.57
 * instead of 11.15). kernels/test/cross-entropy.test.ts has the kernel-level check.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { relError } from "@tuneloom/kernels/testing.ts";
import { loadServingTokenizer, readAdapterDir, resolveServingTemplate } from "@tuneloom/model";
import { DataLoader } from "../src/batching.ts";
import type { LoraTrainer } from "../src/gpu/lora-trainer.ts";
import { loadTrainingData } from "../src/data.ts";
import { nextMicroBatches } from "../src/distributed/data-parallel.ts";
import { tokenizeDataset } from "../src/tokenize-conversation.ts";
import { TRAIN_DEFAULTS, type TrainOptions, train } from "../src/train-loop.ts";
import { tempDir, tinyModel, writeUnevenConversations } from "./helpers.ts";

const STEPS = 6; // 4 steps per epoch: crosses into epoch 1 (a new shuffle)
const SEED = 3, MAX_LENGTH = 64;

const writeData = writeUnevenConversations;

const options = (data: string, out: string, o: Partial<TrainOptions>): TrainOptions => ({
  ...TRAIN_DEFAULTS, quiet: true, log: () => {},
  model: tinyModel().dir, data, out, rank: 4, alpha: 8, dropout: 0, targetModules: "q,v,o,down", lr: 2e-2, warmupSteps: 1,
  maxLength: MAX_LENGTH, seed: SEED, weightDecay: 0.01, maxSteps: STEPS, packing: false, batchSize: 4, gradAccum: 1, ...o,
});

const stepMetrics = (out: string) =>
  readFileSync(path.join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l))
    .filter((r) => r.loss !== undefined) as { step: number; loss: number; grad_norm: number; tokens: number }[];

describe("gradient accumulation on one process", () => {
  const root = tempDir("grad-accum-");
  const data = writeData(root);

  const one = { rank: 0, size: 1 };
  /** The run's loader (as train() makes it) for `batchSize` rows per micro-batch. */
  const loader = (batchSize: number) => {
    const m = tinyModel().dir, template = resolveServingTemplate(m), tokenizer = loadServingTokenizer(m);
    const examples = tokenizeDataset(loadTrainingData({ trainFile: data, seed: SEED }).train, {
      template: template.source, specialTokens: template.specialTokens, tokenizer, maxLength: MAX_LENGTH, trainOnAllTokens: false,
    }).examples;
    expect(examples).toHaveLength(16);
    return new DataLoader(examples, { mode: "pad", batchSize, maxLength: MAX_LENGTH, seed: SEED, padId: tokenizer.padId ?? tokenizer.eosId ?? 0 });
  };

  test("the data: each optimizer step of 2 micro-batches of 2 rows holds the rows of the batch of 4", () => {
    const rowsOf = (b: ReturnType<DataLoader["batchAt"]>) => Array.from({ length: b.rows }, (_, r) => {
      const ids: number[] = [];
      for (let t = r * b.rowLength; t < (r + 1) * b.rowLength; t++) if (b.seqIds[t]! >= 0) ids.push(b.inputIds[t]!);
      return ids.join(",");
    });
    const l4 = loader(4), l2 = loader(2);
    for (let s = 0; s < STEPS; s++) {
      const four = nextMicroBatches(l4, 1, one), twoByTwo = nextMicroBatches(l2, 2, one);
      expect(twoByTwo).toHaveLength(2);
      expect(twoByTwo.flatMap(rowsOf).sort()).toEqual(four.flatMap(rowsOf).sort());
    }
  });

  test(`--batch-size 2 --grad-accum 2 = --batch-size 4 over ${STEPS} steps: losses, gradient norms, adapter tensors within 1e-5`, async () => {
    const four = path.join(root, "b4"), twoByTwo = path.join(root, "b2x2");
    const run4 = await train(options(data, four, { batchSize: 4, gradAccum: 1 }));
    await train(options(data, twoByTwo, { batchSize: 2, gradAccum: 2 }));
    const a = stepMetrics(four), b = stepMetrics(twoByTwo);
    expect(a.map((r) => r.step)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    expect(b.map((r) => r.step)).toEqual(a.map((r) => r.step));
    a.forEach((r, i) => {
      expect(b[i]!.tokens).toBe(r.tokens);
      expect(Math.abs(b[i]!.loss - r.loss) / r.loss).toBeLessThan(1e-5);
      expect(Math.abs(b[i]!.grad_norm - r.grad_norm) / r.grad_norm).toBeLessThan(1e-5);
    });
    const wa = readAdapterDir(path.join(four, "adapter")).weights, wb = readAdapterDir(path.join(twoByTwo, "adapter")).weights;
    expect(wb.map((w) => w.spec.base)).toEqual(wa.map((w) => w.spec.base));
    wa.forEach((w, i) => {
      for (const k of ["A", "B"] as const) {
        const x = w[k], y = wb[i]![k];
        let d2 = 0, n2 = 0;
        for (let j = 0; j < x.length; j++) {
          d2 += (x[j]! - y[j]!) ** 2;
          n2 += x[j]! ** 2;
        }
        expect(n2).toBeGreaterThan(0); // B too has moved off zero
        expect(Math.sqrt(d2 / n2)).toBeLessThanOrEqual(1e-5);
      }
    });

    // One step's gradients from the same weights (the trained ones): the step's two micro-batches
    // recorded one after the other sum to the gradient of the batch of 4, for every step's data.
    const { model } = run4;
    const trainer = run4.trainer as LoraTrainer;
    const l4 = loader(4), l2 = loader(2);
    for (let s = 1; s <= STEPS; s++) {
      const single = await trainer.step(nextMicroBatches(l4, 1, one), 0, s, false);
      const g4 = await model.rt.read(trainer.grads);
      const accum = await trainer.step(nextMicroBatches(l2, 2, one), 0, s, false);
      const g2 = await model.rt.read(trainer.grads);
      expect(accum.targets).toBe(single.targets);
      expect(Math.abs(accum.loss - single.loss) / single.loss).toBeLessThan(1e-5);
      expect(relError(g2, g4)).toBeLessThan(1e-5);
    }
  }, 120_000);
});
