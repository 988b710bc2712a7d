import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { relError } from "@tuneloom/kernels/testing.ts";
import { GpuModel, writeTinyModel } from "@tuneloom/model";
import { type Batch, parseLoraConfig } from "../src/index.ts";
import { LoraTrainer } from "../src/gpu/lora-trainer.ts";

let model: GpuModel;
beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "tuneloom-step-"));
  writeTinyModel(dir, { arch: "qwen2", seed: 11 });
  model = await GpuModel.load(dir, { weightDtype: "f32" });
});

/** A flat batch of two packed sequences with random ids, loss on every next token. */
function packedBatch(seed: number, lengths = [9, 6]): Batch {
  const T = lengths.reduce((a, b) => a + b, 0);
  const ids = new Int32Array(T), labels = new Int32Array(T), positions = new Int32Array(T), seqIds = new Int32Array(T);
  let t = 0, s = seed;
  lengths.forEach((len, seq) => {
    for (let i = 0; i < len; i++, t++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      ids[t] = 3 + (s % 440);
      positions[t] = i;
      seqIds[t] = seq;
    }
  });
  for (let i = 0; i < T; i++) labels[i] = i + 1 < T && seqIds[i + 1] === seqIds[i] ? ids[i + 1]! : -100;
  const numTargets = labels.filter((x) => x !== -100).length;
  return { inputIds: ids, labels, positions, seqIds, numTargets, numSequences: lengths.length, numTokens: T, rows: 1, rowLength: T };
}

async function trainerWithNonZeroB(checkpointing: boolean) {
  const tr = new LoraTrainer(model, parseLoraConfig({ rank: 4, alpha: 8, dropout: 0 }), {
    gradientCheckpointing: checkpointing, seed: 5, weightDecay: 0, maxGradNorm: 0,
  });
  const w = await tr.getWeights();
  for (const x of w) for (let i = 0; i < x.B.length; i++) x.B[i] = 0.05 * Math.sin(3 * i + x.spec.layer + 1);
  tr.setWeights(w);
  return tr;
}

describe("LoRA training step on the GPU", () => {
  test("gradient checkpointing gives the same loss and gradients", async () => {
    const batch = packedBatch(1);
    const a = await trainerWithNonZeroB(true), b = await trainerWithNonZeroB(false);
    const ra = await a.step([batch], 0, 1, false), rb = await b.step([batch], 0, 1, false);
    expect(Math.abs(ra.loss - rb.loss) / rb.loss).toBeLessThan(1e-6);
    const ga = await model.rt.read(a.grads), gb = await model.rt.read(b.grads);
    expect(relError(ga, gb)).toBeLessThan(1e-6);
  });

  test("gradients match a finite difference of the loss along the gradient", async () => {
    const batch = packedBatch(2);
    const tr = await trainerWithNonZeroB(true);
    const r = await tr.step([batch], 0, 1, false);
    const g = await model.rt.read(tr.grads);
    const p0 = await model.rt.read(tr.params);
    let norm = 0;
    for (const x of g) norm += x * x;
    norm = Math.sqrt(norm);
    const eps = 1e-3;
    const lossAt = async (sign: number) => {
      const p = p0.map((v, i) => v + (sign * eps * g[i]!) / norm);
      model.rt.write(tr.params, p);
      return (await tr.step([batch], 0, 1, false)).loss;
    };
    const fd = ((await lossAt(1)) - (await lossAt(-1))) / (2 * eps);
    model.rt.write(tr.params, p0);
    expect(r.gradNorm).toBeGreaterThan(0);
    expect(Math.abs(fd - norm) / norm).toBeLessThan(2e-3);
    expect(Math.abs(r.gradNorm - norm) / norm).toBeLessThan(1e-4);
  });

  test("accumulating two micro-batches equals one step over both", async () => {
    const b1 = packedBatch(3, [7, 5]), b2 = packedBatch(4, [10]);
    const tr = await trainerWithNonZeroB(true);
    await tr.step([b1, b2], 0, 1, false);
    const gAccum = await model.rt.read(tr.grads);
    // The same tokens as one flat batch: concatenate, shifting b2's sequence ids.
    const cat = (a: Int32Array, b: Int32Array) => { const o = new Int32Array(a.length + b.length); o.set(a); o.set(b, a.length); return o; };
    const one: Batch = {
      inputIds: cat(b1.inputIds, b2.inputIds), labels: cat(b1.labels, b2.labels), positions: cat(b1.positions, b2.positions),
      seqIds: cat(b1.seqIds, b2.seqIds.map((s) => s + 2)), numTargets: b1.numTargets + b2.numTargets,
      numSequences: 3, numTokens: b1.numTokens + b2.numTokens, rows: 1, rowLength: b1.numTokens + b2.numTokens,
    };
    await tr.step([one], 0, 1, false);
    expect(relError(gAccum, await model.rt.read(tr.grads))).toBeLessThan(1e-5);
  });

  test("AdamW steps lower the loss on a fixed batch", async () => {
    const batch = packedBatch(5);
    const tr = await trainerWithNonZeroB(true);
    const first = await tr.step([batch], 5e-3, 1);
    let last = first;
    for (let s = 2; s <= 8; s++) last = await tr.step([batch], 5e-3, s);
    expect(last.nonFinite).toBe(false);
    expect(last.loss).toBeLessThan(first.loss * 0.7);
  });
});
