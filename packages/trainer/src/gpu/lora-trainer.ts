/**
 * One optimizer step of LoRA fine-tuning on the GPU, recorded as a single command buffer:
 * for every micro-batch forward (keeping only each layer's input under gradient
 * checkpointing), fused chunked cross-entropy, the layers' backward in reverse (recomputing
 * each layer's activations first when checkpointing), then global-norm clipping and AdamW.
 *
 * Gradient accumulation: the loss of a step is Σ nll over the target tokens of ALL its
 * micro-batches divided by their total count, so k micro-batches of a batch give exactly the
 * gradient of the whole batch at once. Only LoRA A and B are trained; W stays frozen.
 */
import {
  type GpuRuntime, type Tensor, type AdamWState, type GradClipState,
  FlatParamLayout, adamwStep, createAdamWState, createGradClipState, crossEntropy, gradNormClip,
  readGradNorm, readLoss, rmsnormBackward,
} from "@tuneloom/kernels";
import {
  type GpuModel, type LayerActivations, type LayerLora, type LoraTarget,
  allocLayerActivations, allocLayerGradScratch, decoderLayerBackward, decoderLayerForward, releaseTensors,
} from "@tuneloom/model";
import type { Batch } from "../batching.ts";
import { type LoraConfig, type LoraLayerSpec, type LoraWeights, initLoraWeights, loraLayerSpecs, loraScaling } from "../lora-config.ts";

export interface StepResult {
  /** Mean loss over the step's target tokens. */
  loss: number;
  targets: number;
  tokens: number;
  gradNorm: number;
  /** True when a loss or gradient was NaN/inf: the update was skipped. */
  nonFinite: boolean;
}

export interface LoraTrainerOptions {
  gradientCheckpointing: boolean;
  seed: number;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  maxGradNorm: number;
}

const nameA = (s: LoraLayerSpec) => `${s.base}.lora_A`;
const nameB = (s: LoraLayerSpec) => `${s.base}.lora_B`;

export class LoraTrainer {
  readonly specs: LoraLayerSpec[];
  readonly layout: FlatParamLayout;
  readonly params: Tensor;
  readonly grads: Tensor;
  readonly adam: AdamWState;
  readonly clip: GradClipState;
  readonly lora: LayerLora[];
  private readonly rt: GpuRuntime;

  constructor(readonly model: GpuModel, readonly config: LoraConfig, readonly opts: LoraTrainerOptions) {
    this.rt = model.rt;
    if (config.dropout > 0) {
      throw new Error(`LoRA dropout ${config.dropout} is not supported by the GPU trainer yet; use --dropout 0`);
    }
    this.specs = loraLayerSpecs(model.cfg, config);
    const r = config.rank;
    this.layout = new FlatParamLayout(
      this.specs.flatMap((s) => [
        { name: nameA(s), shape: [r, s.inFeatures] },
        { name: nameB(s), shape: [s.outFeatures, r] },
      ]),
      { weightDecay: opts.weightDecay },
    );
    this.params = this.layout.allocate(this.rt, "lora:params");
    this.grads = this.layout.allocate(this.rt, "lora:grads");
    this.adam = createAdamWState(this.rt, this.layout);
    this.clip = createGradClipState(this.rt);
    const scale = loraScaling(config);
    this.lora = Array.from({ length: model.cfg.numLayers }, () => ({}));
    for (const s of this.specs) {
      this.lora[s.layer]![s.module as LoraTarget] = {
        A: this.layout.view(this.params, nameA(s)),
        B: this.layout.view(this.params, nameB(s)),
        dA: this.layout.view(this.grads, nameA(s)),
        dB: this.layout.view(this.grads, nameB(s)),
        scale,
      };
    }
    this.setWeights(initLoraWeights(this.specs, r, opts.seed));
  }

  /** Uploads A and B for every adapted layer (init, or a checkpoint being resumed). */
  setWeights(weights: readonly LoraWeights[]) {
    for (const w of weights) {
      const m = this.lora[w.spec.layer]![w.spec.module as LoraTarget];
      if (!m) throw new Error(`setWeights: ${w.spec.base} is not adapted by this trainer`);
      this.rt.write(m.A, w.A);
      this.rt.write(m.B, w.B);
    }
  }

  /** Reads A and B back (to save an adapter or checkpoint). */
  async getWeights(): Promise<LoraWeights[]> {
    const flat = await this.rt.read(this.params);
    return this.specs.map((spec) => {
      const a = this.layout.segment(nameA(spec)), b = this.layout.segment(nameB(spec));
      return { spec, A: flat.slice(a.offset, a.offset + a.numel), B: flat.slice(b.offset, b.offset + b.numel) };
    });
  }

  async getOptimizerMoments(): Promise<{ m: Float32Array; v: Float32Array }> {
    return { m: await this.rt.read(this.adam.m), v: await this.rt.read(this.adam.v) };
  }

  setOptimizerMoments(m: Float32Array, v: Float32Array) {
    if (m.length !== this.layout.numel || v.length !== this.layout.numel) {
      throw new Error(`optimizer state has ${m.length} values, this adapter layout needs ${this.layout.numel}`);
    }
    this.rt.write(this.adam.m, m);
    this.rt.write(this.adam.v, v);
  }

  /**
   * Runs one optimizer step over `microBatches` (gradient accumulation) at learning rate `lr`;
   * `step` is the 1-based optimizer step (AdamW bias correction). With `update: false` only the
   * loss and gradients are computed (for tests and gradient checks).
   */
  async step(microBatches: readonly Batch[], lr: number, step: number, update = true): Promise<StepResult> {
    const { rt, model } = this;
    const cfg = model.cfg;
    const C = cfg.hiddenSize, L = cfg.numLayers;
    const targets = microBatches.reduce((n, b) => n + b.numTargets, 0);
    const tokens = microBatches.reduce((n, b) => n + b.numTokens, 0);
    if (targets === 0) throw new Error("a training step has no target tokens (every label is -100)");
    const scale = 1 / targets;
    const rec = rt.recorder(`train-step ${step}`);
    const toRelease: Tensor[] = [];
    const released: object[] = [];
    const loss = rt.zeros("f32", [2], "loss");
    toRelease.push(loss);
    rec.clear(this.grads);
    microBatches.forEach((batch, mb) => {
      const T = batch.inputIds.length;
      const tb = model.uploadTokens(batch.inputIds, batch.positions, batch.seqIds);
      const labels = rt.upload("i32", [T], batch.labels, "labels");
      toRelease.push(tb.ids, tb.positions, tb.seqIds, labels);
      const targetsList = Object.keys(this.lora[0] ?? {}) as LoraTarget[];
      // Layer inputs x_0..x_L are kept either way; activations per layer only without checkpointing.
      const xs = Array.from({ length: L + 1 }, (_, l) => rt.empty("f32", [T, C], `x${l}`));
      toRelease.push(...xs);
      const actSets: LayerActivations[] = this.opts.gradientCheckpointing
        ? [allocLayerActivations(rt, cfg, T, this.config.rank, targetsList)]
        : Array.from({ length: L }, () => allocLayerActivations(rt, cfg, T, this.config.rank, targetsList));
      released.push(actSets);
      const actsFor = (l: number) => actSets[this.opts.gradientCheckpointing ? 0 : l]!;
      const fwd = model.recordForward(rec, tb, { lora: this.lora, layerInputs: xs, activations: actsFor });
      toRelease.push(...fwd.scratch);
      const dh = rt.empty("f32", [T, C], "dh");
      const dxA = rt.empty("f32", [T, C], "dx_a"), dxB = rt.empty("f32", [T, C], "dx_b");
      const recomputeOut = rt.empty("f32", [T, C], "recompute_out");
      toRelease.push(dh, dxA, dxB, recomputeOut);
      crossEntropy(rec, { h: fwd.h, w: model.weights.lmHead, labels, loss, accumulateLoss: mb > 0, dh, scale, nonFinite: this.clip.nonFinite });
      // h = rmsnorm(x_L): dx_L
      rmsnormBackward(rec, fwd.x, model.weights.finalNorm, fwd.rstd, dh, dxA, 0);
      const g = allocLayerGradScratch(rt, cfg, T, this.config.rank);
      released.push(g);
      let dOut = dxA, dIn = dxB;
      for (let l = L - 1; l >= 0; l--) {
        const ctx = model.layerContext(l);
        const w = model.weights.layers[l]!;
        if (this.opts.gradientCheckpointing) {
          // Recompute this layer's activations from its saved input.
          decoderLayerForward(rec, ctx, w, tb, xs[l]!, recomputeOut, actsFor(l), this.lora[l]);
        }
        decoderLayerBackward(rec, ctx, w, tb, xs[l]!, actsFor(l), dOut, dIn, g, this.lora[l]);
        [dOut, dIn] = [dIn, dOut];
      }
    });
    gradNormClip(rec, this.grads, this.clip, this.opts.maxGradNorm);
    if (update) {
      adamwStep(rec, this.adam, this.params, this.grads, {
        lr, step, beta1: this.opts.beta1, beta2: this.opts.beta2, eps: this.opts.eps, clip: this.clip,
      });
    }
    rec.submit();
    const l = await readLoss(rt, loss);
    const norm = await readGradNorm(rt, this.clip);
    rec.release();
    rt.release(...toRelease);
    for (const r of released) releaseTensors(rt, r);
    return { loss: l.mean, targets, tokens, gradNorm: norm.norm, nonFinite: norm.nonFinite || !Number.isFinite(l.mean) };
  }

  /** Mean loss over batches without updating anything (evaluation). */
  async evaluate(batches: readonly Batch[]): Promise<number> {
    let sum = 0, count = 0;
    for (const b of batches) {
      const r = await this.model.nll(b.inputIds, b.positions, b.seqIds, b.labels, this.lora);
      sum += r.sum;
      count += r.count;
    }
    return sum / count;
  }
}
