/**
 * The parts of a training step LoraTrainer and FullTrainer share: counting a step's targets,
 * and its end, once every micro-batch's gradients are accumulated in summed-loss units: scale
 * to the mean loss, clip the global norm (over every buffer), AdamW (skipped on the GPU when anything is NaN/inf),
 * submit, read the loss and norm back, release the step's tensors.
 */
import {
  type AdamWState, type GpuRuntime, type GradClipState, type Recorder, type Tensor,
  adamwStep, gradNormClip, readGradNorm, readLoss, scaleInPlace,
} from "@tuneloom/kernels";
import { releaseTensors } from "@tuneloom/model";
import type { Batch } from "../batching.ts";
import type { Collectives } from "../distributed/world.ts";

export interface StepResult {
  /** Mean loss over the step's target tokens. */
  loss: number;
  targets: number;
  tokens: number;
  gradNorm: number;
  /** True when a loss or gradient was NaN/inf: the update was skipped. */
  nonFinite: boolean;
}

/** Target and non-pad tokens of a step's micro-batches; a step without targets is refused. */
export function stepCounts(microBatches: readonly Batch[]): { targets: number; tokens: number } {
  const targets = microBatches.reduce((n, b) => n + b.numTargets, 0);
  const tokens = microBatches.reduce((n, b) => n + b.numTokens, 0);
  if (targets === 0) throw new Error("a training step has no target tokens (every label is -100)");
  return { targets, tokens };
}

/** The flat buffers a step updates: one set for LoRA, one per chunk for full fine-tuning (param-chunks.ts). */
export interface OptimizerBuffers {
  chunks: readonly { params: Tensor; grads: Tensor; adam: AdamWState }[];
  clip: GradClipState;
}

export interface StepEnd {
  lr: number;
  /** 1-based optimizer step (AdamW bias correction). */
  step: number;
  update: boolean;
  /** The loss unit the backward ran in (the gradients are divided by gradUnit · targets). */
  gradUnit: number;
  loss: Tensor;
  targets: number;
  tokens: number;
  maxGradNorm: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Recorded after the update (FullTrainer: refresh the 16-bit copies). */
  afterUpdate?: (rec: Recorder) => void;
  /** The step's own tensors (its micro-batches' are MicroBatchTensors'), released at its end. */
  toRelease: Tensor[];
}

/**
 * A micro-batch's own tensors (activations, saved inputs, scratch, its uploads), given back to the
 * pool once everything that reads them is recorded: the next micro-batch of the step reuses them, so
 * gradient accumulation holds one micro-batch's activations at a time instead of one set per
 * micro-batch. What is recorded is submitted first, so an upload into a reused buffer (queue order)
 * lands after every dispatch that read the buffer before.
 */
export class MicroBatchTensors {
  readonly tensors: Tensor[] = [];
  readonly sets: object[] = [];

  /** Gives them back (after submitting what `rec` has recorded) and empties the lists. */
  release(rt: GpuRuntime, rec: Recorder) {
    rec.flush();
    rt.release(...this.tensors);
    for (const s of this.sets) releaseTensors(rt, s);
    this.tensors.length = 0;
    this.sets.length = 0;
  }
}

export async function finishStep(rt: GpuRuntime, rec: Recorder, b: OptimizerBuffers, e: StepEnd): Promise<StepResult> {
  for (const c of b.chunks) scaleInPlace(rec, 1 / (e.gradUnit * e.targets), c.grads);
  // One norm over every chunk's gradients; each chunk's AdamW reads its coefficient and flag.
  gradNormClip(rec, b.chunks.map((c) => c.grads), b.clip, e.maxGradNorm);
  if (e.update) {
    for (const c of b.chunks) adamwStep(rec, c.adam, c.params, c.grads, { lr: e.lr, step: e.step, beta1: e.beta1, beta2: e.beta2, eps: e.eps, clip: b.clip });
    e.afterUpdate?.(rec);
  }
  rec.submit();
  const l = await readLoss(rt, e.loss);
  const norm = await readGradNorm(rt, b.clip);
  rec.release();
  rt.release(...e.toRelease);
  return { loss: l.mean, targets: e.targets, tokens: e.tokens, gradNorm: norm.norm, nonFinite: norm.nonFinite || !Number.isFinite(l.mean) };
}

/**
 * Data parallel: sums a step's gradients (each buffer, still Σ over target tokens, unscaled), its
 * loss sum, target and token counts and non-finite flag over the ranks, in place, through the host
 * (one MPI_Allreduce per gradient buffer, read and written back one at a time); returns the
 * global counts. A global batch without targets is refused.
 */
export async function allReduceStep(
  rt: GpuRuntime, world: Collectives, o: { grads: readonly Tensor[]; loss: Tensor; nonFinite: Tensor; targets: number; tokens: number },
): Promise<{ targets: number; tokens: number }> {
  for (const g of o.grads) {
    const values = new Float32Array(await rt.read(g));
    world.allReduceSum(values);
    rt.write(g, values);
  }
  const [l, flag] = await rt.readMany([o.loss, o.nonFinite]);
  const stats = new Float64Array([new Float32Array(l!)[0]!, o.targets, o.tokens, new Uint32Array(flag!)[0]!]);
  world.allReduceSum(stats);
  rt.write(o.loss, new Float32Array([stats[0]!, stats[1]!]));
  if (stats[3]! > 0) rt.write(o.nonFinite, new Uint32Array([1]));
  if (stats[1] === 0) throw new Error("a training step has no target tokens on any rank (every label is -100)");
  return { targets: stats[1]!, tokens: stats[2]! };
}
