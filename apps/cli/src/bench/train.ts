/**
 * `bun run bench -- --train --model NAME --batch 8 --seq 512 (--rank 16 | --full) [--no-gradient-checkpointing]`:
 * the LoRA (or, with --full, full fine-tuning's) training step of a random-weight model of the published shape, set up like
 * shared/bench/peft_bench.py (r=16, α=32, no dropout, q,k,v,o,gate,up,down; AdamW; loss over
 * every token; tokens/s = batch·seq / median step time after 3 warm-up steps).
 * peak_gib is the peak of the GPU buffers tuneloom allocated (weights, activations, state).
 * With --full, the memory statement and the flat-buffer plan go to stderr first (and `--plan`
 * prints them as the JSON line without loading the model: planTrainFull).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { type GpuRuntime, getRuntime, hasTensorCoreMatmul, weightGradTensorCores } from "@tuneloom/kernels";
import { loraTensorCores } from "@tuneloom/model/gpu/lora.ts";
import { GpuModel, type ModelConfig, parseLoraConfig, parseModelConfig } from "@tuneloom/model";
import {
  type Batch, type SelectiveOptions, FullTrainer, selectiveForBudget, LoraTrainer, formatFullBuffers, formatFullMemory, fullAllocationError, fullFinetuneMemory, fullParameterCount, planFullBuffers,
} from "@tuneloom/trainer";
import { BENCH_MODELS, benchModelConfig, benchModelDir } from "./model-shapes.ts";

export interface TrainBenchOptions {
  model: string;
  batch: number;
  seq: number;
  rank: number;
  steps: number;
  gradientCheckpointing: boolean;
  weightDtype?: "f32" | "f16" | "bf16";
  /** Also time one step per dispatch (GPU timestamps) and report the top kernels. */
  profile?: boolean;
  /**
   * Fraction of each row that carries labels, at its end (assistant-only SFT: a prompt, then
   * the answer); default 1 = every next token. HF PEFT computes logits for every row either way.
   */
  targetFraction?: number;
  /** Full fine-tuning (every weight trained) instead of LoRA; `rank` is then unused. */
  full?: boolean;
  /** Selective checkpointing (`--keep-attention-layers`, `--keep-mlp-layers`; trainer's selective-checkpoint.ts). */
  selective?: SelectiveOptions;
  /** Or a budget in GiB that picks both counts (`--keep-activations-gib`, trainer's selectiveForBudget). */
  keepActivationsGib?: number;
}

/**
 * Runs `work` with every submit profiled; returns GPU ms per kernel family (the label's first
 * word plus its shape), largest first, and the total.
 */
export async function profileStep(rt: GpuRuntime, work: () => Promise<unknown>) {
  rt.profiled = [];
  try {
    await work();
    const timings = (await Promise.all(rt.profiled)).flat();
    const by = new Map<string, { ms: number; n: number }>();
    for (const t of timings) {
      const e = by.get(t.label) ?? { ms: 0, n: 0 };
      e.ms += t.ms;
      e.n++;
      by.set(t.label, e);
    }
    const total = timings.reduce((s, t) => s + t.ms, 0);
    const byKind = new Map<string, number>();
    for (const t of timings) {
      const kind = t.label.split(" ")[0]!;
      byKind.set(kind, (byKind.get(kind) ?? 0) + t.ms);
    }
    const r = (x: number) => Math.round(x * 100) / 100;
    return {
      gpu_ms: r(total), dispatches: timings.length,
      by_kind: Object.fromEntries([...byKind].sort((a, b) => b[1] - a[1]).map(([k, ms]) => [k, r(ms)])),
      top: [...by].sort((a, b) => b[1].ms - a[1].ms).slice(0, 80).map(([label, e]) => ({ label, ms: r(e.ms), n: e.n })),
    };
  } finally {
    rt.profiled = null;
  }
}

/** A benchmark model's config: a name's published shape, or the config.json of `tiny` or a DIR. */
function modelConfig(model: string): ModelConfig {
  if (BENCH_MODELS[model]) return benchModelConfig(model);
  const { dir, cleanup } = benchModelDir(model, "tuneloom-bench-plan-");
  try {
    return parseModelConfig(JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8")), `${model}/config.json`);
  } finally {
    cleanup();
  }
}

/**
 * Full fine-tuning's memory statement and flat-buffer plan for `o.model` on this device (its
 * limits), as `train --full` states them; refuses (throws) as train would. Loads no weights.
 */
export async function planTrainFull(o: Pick<TrainBenchOptions, "model" | "batch" | "seq" | "gradientCheckpointing" | "weightDtype">) {
  const cfg = modelConfig(o.model);
  const rt = await getRuntime();
  const estimate = fullFinetuneMemory(cfg, {
    params: fullParameterCount(cfg, cfg.attentionBias), weightBytes: (o.weightDtype ?? (cfg.torchDtype === "float32" ? "f32" : "bf16")) === "f32" ? 4 : 2,
    tokensPerMicroBatch: o.batch * o.seq, gradientCheckpointing: o.gradientCheckpointing,
  });
  const plan = planFullBuffers(cfg, rt.caps.limits, rt.caps.description);
  return {
    estimate,
    op: "train-plan", model: o.model, full: true, params: estimate.params, batch: o.batch, seq: o.seq, grad_ckpt: o.gradientCheckpointing,
    memory: formatFullMemory(estimate), total_gb: Math.round(estimate.total / 1e7) / 100,
    buffers: plan.chunks, largest_buffer_gb: Math.round(plan.largestBytes / 1e7) / 100, buffer_limit_gb: Math.round(plan.limitBytes / 1e7) / 100,
    plan: formatFullBuffers(plan), device: rt.caps.description,
  };
}

/** FullTrainer, or train's refusal with the memory statement when the device cannot allocate it. */
async function fullTrainerOrRefusal(model: GpuModel, gradientCheckpointing: boolean, estimate: Parameters<typeof fullAllocationError>[1], selective?: SelectiveOptions) {
  try {
    const trainer = new FullTrainer(model, { gradientCheckpointing, ...selective, weightDecay: 0, maxGradNorm: 0 });
    await model.rt.sync(); // an allocation the device could not make surfaces here
    return trainer;
  } catch (e) {
    throw fullAllocationError(e, estimate, model.rt.caps.description);
  }
}

export async function benchTrain(o: TrainBenchOptions) {
  const plan = o.full ? await planTrainFull(o) : undefined; // refuses before the model is written or loaded
  if (plan) console.error(`bench: full fine-tuning ${plan.memory}; ${plan.plan}`);
  const { dir, cleanup } = benchModelDir(o.model, "tuneloom-bench-");
  try {
    const model = await GpuModel.load(dir, { weightDtype: o.weightDtype });
    const rt = model.rt;
    if (o.keepActivationsGib !== undefined && o.selective && Object.values(o.selective).some((x) => x !== undefined)) throw new Error("bench: give --keep-activations-gib or the layer counts, not both");
    const selective = o.keepActivationsGib !== undefined ? selectiveForBudget(model, o.batch * o.seq, o.keepActivationsGib) : o.selective;
    const trainer = plan
      ? await fullTrainerOrRefusal(model, o.gradientCheckpointing, plan.estimate, selective)
      : new LoraTrainer(model, parseLoraConfig({ rank: o.rank, alpha: 2 * o.rank, dropout: 0 }), {
        gradientCheckpointing: o.gradientCheckpointing, ...selective, seed: 0, weightDecay: 0, maxGradNorm: 0,
      });
    const B = o.batch, S = o.seq, T = B * S, V = model.cfg.vocabSize;
    let s = 12345;
    const ids = Int32Array.from({ length: T }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s % V));
    const f = o.targetFraction ?? 1;
    if (!(f > 0 && f <= 1)) throw new Error(`--target-fraction must be in (0, 1], got ${f}`);
    const firstLabelled = Math.floor(S * (1 - f)); // position in the row of the first label
    const labels = Int32Array.from({ length: T }, (_, t) => ((t + 1) % S === 0 || t % S < firstLabelled ? -100 : ids[t + 1]!));
    const batch: Batch = {
      inputIds: ids, labels, positions: Int32Array.from({ length: T }, (_, t) => t % S), seqIds: Int32Array.from({ length: T }, (_, t) => Math.floor(t / S)),
      numTargets: labels.filter((x) => x !== -100).length, numSequences: B, numTokens: T, rows: B, rowLength: S,
    };
    rt.memory.resetPeak();
    const times: number[] = [];
    let loss = 0;
    const recordMs: number[] = [];
    for (let i = 0; i < o.steps; i++) {
      const r0 = rt.recordStats.ms;
      const t0 = performance.now();
      loss = (await trainer.step([batch], 1e-4, i + 1)).loss;
      times.push(performance.now() - t0);
      recordMs.push(rt.recordStats.ms - r0);
    }
    const profile = o.profile ? await profileStep(rt, () => trainer.step([batch], 1e-4, o.steps + 1)) : undefined;
    const timed = times.slice(3).sort((a, b) => a - b);
    const med = timed[Math.floor(timed.length / 2)] ?? times.at(-1)!;
    return {
      op: "train", model: o.model, weights: model.weights.dtype, load_s: Math.round(model.loadReport.seconds * 100) / 100,
      load_read_s: Math.round(model.loadReport.readSeconds * 100) / 100, load_gpu_wait_s: Math.round(model.loadReport.waitSeconds * 100) / 100, grad_ckpt: o.gradientCheckpointing, batch: B, seq: S,
      ...(trainer instanceof FullTrainer
        ? { full: true, params: trainer.parameterCount, buffers: trainer.chunks.length, dw_tc: weightGradTensorCores.enabled && hasTensorCoreMatmul(rt) }
        : { rank: o.rank, lora_tc: loraTensorCores.enabled && hasTensorCoreMatmul(rt) }),
      target_fraction: f,
      ...(trainer.selectiveLayers.attention.size ? { keep_attention_layers: trainer.selectiveLayers.attention.size } : {}),
      ...(trainer.selectiveLayers.mlp.size ? { keep_mlp_layers: trainer.selectiveLayers.mlp.size } : {}),
      ...(o.keepActivationsGib !== undefined ? { keep_activations_gib: o.keepActivationsGib } : {}),
      step_ms: Math.round(med * 10) / 10, record_ms: Math.round(recordMs.at(-1)! * 10) / 10, tok_s: Math.round(T / (med / 1000)), peak_gib: Math.round((rt.memory.peakBytes / 2 ** 30) * 100) / 100,
      loss: Math.round(loss * 1000) / 1000, device: rt.caps.description, ...(profile ? { profile } : {}),
    };
  } finally {
    cleanup();
  }
}
