/**
 * One optimizer step of FULL fine-tuning on the GPU (`train --full`, train-loop.ts), every
 * weight trained, on the kernels LoRA uses.
 *
 * Every weight the model runs (embedding, each layer's norms, projections and biases, the final
 * norm, the LM head unless tied) is one segment of a flat f32 buffer of master weights, with its
 * gradient and AdamW moments in buffers of the same layout, so gradNormClip and adamwStep run
 * once over everything, as for LoRA; a model whose 4·P bytes exceed the device's per-buffer
 * limit gets several such chunks of consecutive tensors (param-chunks.ts), each updated on its
 * own, the gradient norm taken over all. The model's f32 weight tensors (and always its norms and
 * biases) are replaced by views of the masters, so the forward reads the weights being trained.
 * A model that runs 16-bit weights keeps them as the GEMMs' copies: `params` holds the f32
 * masters, and every step ends by rounding each master into its 16-bit copy (convertTensor).
 *
 * Gradients, per micro-batch, accumulated over the step's micro-batches (loss: mean over all
 * target tokens of the step, as LoraTrainer):
 *   LM head      dW_head += dlogitsᵀ·h                  (crossEntropy's dw)
 *   each layer   dW = dyᵀ·x per projection, db = onesᵀ·dy, dw_norm = Σ dy·x·rstd (decoderLayerBackward's wg)
 *   embedding    dE[id] += dx_0[t] for every t with ids[t] = id (embeddingBackward); tied: the
 *                same buffer as the head's
 * Weight decay, as transformers' Trainer: on matrices, not on norms and biases (fullParamSpecs).
 */
import {
  type GradClipState, type GpuRuntime, type ParamSegment, type Recorder, type Tensor,
  convertTensor, createGradClipState, crossEntropy, embeddingBackward, gradNormPartialCount, rmsnormBackward, rmsnormWeightBackward,
} from "@tuneloom/kernels";
import {
  type GpuLayerWeights, type GpuModel, type LayerActivations, type LayerWeightGrads,
  LAYER_TENSOR_NAMES, allocLayerActivations, allocLayerGradScratch, decoderLayerBackward, decoderLayerForward,
} from "@tuneloom/model";
import type { Batch } from "../batching.ts";
import { sumNll } from "../eval-set.ts";
import { fullParamSpecs } from "../full-memory.ts";
import type { Collectives } from "../distributed/world.ts";
import { SavedLayerInputs, savedInputDtype } from "./saved-layer-inputs.ts";
import { type SelectiveLayers, type SelectiveOptions, SelectiveBuffers, selectiveLayers } from "./selective-checkpoint.ts";
import { MicroBatchTensors, allReduceStep, finishStep, type StepResult, stepCounts } from "./optimizer-step.ts";
import { maxBindableBytes, type ParamChunk, ParamChunks } from "./param-chunks.ts";

/** With the selective checkpointing options (selective-checkpoint.ts: layers that keep parts of their forward). */
export interface FullTrainerOptions extends SelectiveOptions {
  gradientCheckpointing: boolean;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  maxGradNorm: number;
  /**
   * Largest flat buffer (bytes) of masters, gradients or moments; default: the device's
   * per-buffer limit (maxBindableBytes). Tests pass less to exercise many chunks.
   */
  maxChunkBytes?: number;
  /** Data-parallel ranks: gradients are summed across them before clipping and AdamW (as LoraTrainer). */
  collectives?: Collectives;
}

export class FullTrainer {
  /** Masters, gradients and AdamW moments, in one chunk or several (param-chunks.ts). */
  private readonly state: ParamChunks;
  readonly clip: GradClipState;
  /** HF tensor names in layout order (the head is absent when tied). */
  readonly names: string[];
  private readonly rt: GpuRuntime;
  private readonly tied: boolean;
  /** The layers that keep parts of their forward under selective checkpointing (selective-checkpoint.ts). */
  readonly selectiveLayers: SelectiveLayers;
  private readonly selectiveBuffers: SelectiveBuffers;

  constructor(readonly model: GpuModel, readonly opts: FullTrainerOptions) {
    this.rt = model.rt;
    this.selectiveLayers = selectiveLayers(model.cfg.numLayers, opts, opts.gradientCheckpointing);
    this.selectiveBuffers = new SelectiveBuffers(model.rt, model, this.selectiveLayers);
    const w = model.weights;
    this.tied = w.lmHead === w.embed;
    const tensors = new Map<string, Tensor>();
    tensors.set("model.embed_tokens.weight", w.embed);
    w.layers.forEach((layer, l) => {
      for (const [key, name] of Object.entries(LAYER_TENSOR_NAMES) as [keyof GpuLayerWeights, string][]) {
        const t = layer[key];
        if (t) tensors.set(`model.layers.${l}.${name}`, t);
      }
    });
    tensors.set("model.norm.weight", w.finalNorm);
    if (!this.tied) tensors.set("lm_head.weight", w.lmHead);
    // The layout (and so the chunks) in the order full-memory.ts plans them: the checkpoint's tensor order.
    const specs = fullParamSpecs(model.cfg);
    const missing = specs.filter((s) => !tensors.has(s.name)).map((s) => s.name), extra = [...tensors.keys()].filter((n) => !specs.some((s) => s.name === n));
    if (missing.length || extra.length) throw new Error(`FullTrainer: the model's weights and its config disagree (not loaded: ${missing.slice(0, 4).join(", ") || "none"}; not in the config: ${extra.slice(0, 4).join(", ") || "none"})`);
    this.names = specs.map((s) => s.name);
    this.state = new ParamChunks(this.rt, specs, {
      weightDecay: opts.weightDecay, maxChunkBytes: opts.maxChunkBytes ?? maxBindableBytes(this.rt.caps.limits), label: "full",
    });
    this.clip = createGradClipState(this.rt, gradNormPartialCount(this.chunks.map((c) => c.layout.numel)));
    // Every weight into its segment of `params` (16-bit ones widened to f32 masters); f32 ones are
    // then read by the model through views of `params`, 16-bit ones stay as the GEMMs' copies.
    const rec = this.rt.recorder("full:init");
    for (const [name, t] of tensors) {
      if (t.dtype === "f32") rec.copy(t, this.state.view("params", name));
      else {
        convertTensor(rec, t, this.state.view("params", name));
        this.copies16.push({ name, t });
      }
    }
    rec.submit();
    rec.release();
    const replaced = new Map<Tensor, Tensor>();
    const swap = (t: Tensor, name: string): Tensor => {
      if (t.dtype !== "f32") return t;
      const v = this.state.view("params", name);
      replaced.set(t, v);
      return v;
    };
    w.embed = swap(w.embed, "model.embed_tokens.weight");
    w.layers.forEach((layer, l) => {
      for (const [key, name] of Object.entries(LAYER_TENSOR_NAMES) as [keyof GpuLayerWeights, string][]) {
        const t = layer[key];
        if (t) layer[key] = swap(t, `model.layers.${l}.${name}`);
      }
    });
    w.finalNorm = swap(w.finalNorm, "model.norm.weight");
    w.lmHead = this.tied ? w.embed : swap(w.lmHead, "lm_head.weight");
    this.rt.release(...replaced.keys());
  }

  /** 16-bit weights the GEMMs read, each rounded from its f32 master after every update. */
  private readonly copies16: { name: string; t: Tensor }[] = [];

  /** Rounds every f32 master into its 16-bit GEMM copy (after an update or setWeights). */
  private recordRefreshCopies(rec: Recorder) {
    for (const { name, t } of this.copies16) convertTensor(rec, this.state.view("params", name), t);
  }

  /** The flat buffers, one chunk unless the model's 4·P bytes exceed maxChunkBytes. */
  get chunks(): readonly ParamChunk[] {
    return this.state.chunks;
  }

  /** Every weight's segment in layout order (its offset is within its chunk). */
  get segments(): ParamSegment[] {
    return this.state.segments;
  }

  /** Trainable parameters (the tied head counted once). */
  get parameterCount(): number {
    return this.segments.reduce((n, s) => n + s.numel, 0);
  }

  /** One layer's gradient views; `ones` (T) for the bias gradients. */
  private layerGrads(l: number, ones: Tensor): LayerWeightGrads {
    const out: Record<string, Tensor> = { ones };
    for (const [key, name] of Object.entries(LAYER_TENSOR_NAMES)) {
      const full = `model.layers.${l}.${name}`;
      if (this.names.includes(full)) out[key] = this.state.view("grads", full);
    }
    return out as unknown as LayerWeightGrads;
  }

  /** Every weight as its HF name → f32 values (to save a model directory or checkpoint). */
  async getWeights(): Promise<Map<string, Float32Array>> {
    return this.state.read("params");
  }

  /**
   * Uploads every trained weight, by HF name (a resumed checkpoint's, or those --max-forgetting
   * kept), and rounds the 16-bit copies from them.
   */
  setWeights(weights: ReadonlyMap<string, Float32Array>) {
    this.state.write("params", weights, "weights");
    const rec = this.rt.recorder("full:set-weights");
    this.recordRefreshCopies(rec);
    rec.submit();
    rec.release();
  }

  /** AdamW's m and v per weight, keyed by its HF name (what checkpoints store). */
  async getOptimizerMoments(): Promise<Map<string, { m: Float32Array; v: Float32Array }>> {
    const m = await this.state.read("m"), v = await this.state.read("v");
    return new Map(this.names.map((name) => [name, { m: m.get(name)!, v: v.get(name)! }]));
  }

  /** Uploads AdamW's m and v (a resumed checkpoint's), keyed as getOptimizerMoments gives them. */
  setOptimizerMoments(moments: ReadonlyMap<string, { m: Float32Array; v: Float32Array }>) {
    const of = (which: "m" | "v") => new Map([...moments].map(([name, mv]) => [name, mv[which]]));
    this.state.write("m", of("m"), "optimizer moments (m)");
    this.state.write("v", of("v"), "optimizer moments (v)");
  }

  /** Mean loss over batches without updating anything. */
  async evaluate(batches: readonly Batch[]): Promise<number> {
    const { sum, count } = await sumNll(this.model, batches);
    return sum / count;
  }

  /** Every weight's gradient of the last step (tests, gradient checks). */
  async getGradients(): Promise<Map<string, Float32Array>> {
    return this.state.read("grads");
  }

  /**
   * One optimizer step over `microBatches` at learning rate `lr` (`step`: 1-based, for AdamW's
   * bias correction). `update: false` computes the loss and gradients only.
   */
  async step(microBatches: readonly Batch[], lr: number, step: number, update = true): Promise<StepResult> {
    const { rt, model } = this;
    const cfg = model.cfg;
    const C = cfg.hiddenSize, L = cfg.numLayers;
    const world = this.opts.collectives && this.opts.collectives.size > 1 ? this.opts.collectives : null;
    // One rank's share may have no targets; the global batch is checked after the all-reduce.
    let { targets, tokens } = world
      ? { targets: microBatches.reduce((n, b) => n + b.numTargets, 0), tokens: microBatches.reduce((n, b) => n + b.numTokens, 0) }
      : stepCounts(microBatches);
    const rec = rt.recorder(`full-step ${step}`, { flushEvery: 256, cacheBindings: true });
    const toRelease: Tensor[] = [];
    const loss = rt.zeros("f32", [2], "loss");
    toRelease.push(loss);
    for (const g of this.state.all("grads")) rec.clear(g);
    const embedGrad = this.state.view("grads", "model.embed_tokens.weight");
    const headGrad = this.tied ? embedGrad : this.state.view("grads", "lm_head.weight");
    const mb = new MicroBatchTensors();
    for (const batch of microBatches) {
      if (batch.numTargets === 0) continue; // no loss, no gradient
      const T = batch.inputIds.length;
      const tb = model.uploadTokens(batch.inputIds, batch.positions, batch.seqIds);
      const labels = rt.upload("i32", [T], batch.labels, "labels");
      const ones = rt.upload("f32", [T], new Float32Array(T).fill(1), "ones");
      mb.tensors.push(tb.ids, tb.positions, tb.seqIds, labels, ones);
      const xs = new SavedLayerInputs(rt, L, T, C, savedInputDtype(model, this.opts.gradientCheckpointing));
      mb.tensors.push(...xs.tensors);
      const actSets: LayerActivations[] = this.opts.gradientCheckpointing
        ? [allocLayerActivations(rt, cfg, T, 0, [])]
        : Array.from({ length: L }, () => allocLayerActivations(rt, cfg, T, 0, []));
      mb.sets.push(actSets);
      const actsFor = (l: number) => actSets[this.opts.gradientCheckpointing ? 0 : l]!;
      const selective = this.selectiveBuffers.forTokens(T);
      const fwd = model.recordForward(rec, tb, { ...xs.forward, activations: actsFor, selective });
      mb.tensors.push(...fwd.scratch);
      const dh = rt.empty("f32", [T, C], "dh");
      const dxA = rt.empty("f32", [T, C], "dx_a"), dxB = rt.empty("f32", [T, C], "dx_b");
      mb.tensors.push(dh, dxA, dxB);
      // The loss in summed units (scale 1), as LoraTrainer; scaled to the mean after all micro-batches.
      crossEntropy(rec, { h: fwd.h, w: model.weights.lmHead, labels, loss, accumulateLoss: true, dh, dw: headGrad, accumulateDw: true, scale: 1, nonFinite: this.clip.nonFinite });
      // h = rmsnorm(x_L)·w_final: dx_L, dw_final
      rmsnormBackward(rec, fwd.x, model.weights.finalNorm, fwd.rstd, dh, dxA, 0);
      rmsnormWeightBackward(rec, fwd.x, fwd.rstd, dh, this.state.view("grads", "model.norm.weight"), 1);
      const g = allocLayerGradScratch(rt, cfg, T, 0);
      mb.sets.push(g);
      let dOut = dxA, dIn = dxB;
      for (let l = L - 1; l >= 0; l--) {
        const ctx = model.layerContext(l);
        const w = model.weights.layers[l]!;
        const x = xs.input(rec, l);
        const kept = this.opts.gradientCheckpointing && l < L - 1 ? decoderLayerForward(rec, ctx, w, tb, x, null, actsFor(l), {}, undefined, selective(l)) : undefined;
        decoderLayerBackward(rec, ctx, w, tb, x, actsFor(l), dOut, dIn, g, {}, this.layerGrads(l, ones), kept);
        [dOut, dIn] = [dIn, dOut];
      }
      // x_0 = embed[ids]: dE[id] += dx_0
      mb.tensors.push(...embeddingBackward(rec, batch.inputIds, dOut, embedGrad));
      mb.release(rt, rec);
    }
    if (world) {
      rec.flush();
      ({ targets, tokens } = await allReduceStep(rt, world, { grads: this.state.all("grads"), loss, nonFinite: this.clip.nonFinite, targets, tokens }));
    }
    return finishStep(rt, rec, { chunks: this.chunks, clip: this.clip }, {
      lr, step, update, gradUnit: 1, loss, targets, tokens, maxGradNorm: this.opts.maxGradNorm,
      beta1: this.opts.beta1, beta2: this.opts.beta2, eps: this.opts.eps, toRelease,
      afterUpdate: (r) => this.recordRefreshCopies(r),
    });
  }

  /**
   * Makes every rank's weights and AdamW moments root's (the start of a data-parallel run, fresh or
   * resumed on root), then rounds the 16-bit copies from the masters: identical updates keep them identical.
   */
  async broadcastState(world: Collectives, root = 0) {
    if (world.size === 1) return;
    for (const which of ["params", "m", "v"] as const) {
      for (const t of this.state.all(which)) {
        const values = await this.rt.read(t);
        world.broadcast(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), root);
        this.rt.write(t, values);
      }
    }
    const rec = this.rt.recorder("full:broadcast-copies");
    this.recordRefreshCopies(rec);
    rec.submit();
    rec.release();
  }
}
