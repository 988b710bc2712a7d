/**
 * One optimizer step of LoRA fine-tuning on the GPU, recorded as a single command buffer:
 * for every micro-batch forward (keeping only each layer's input under gradient
 * checkpointing), fused chunked cross-entropy, the layers' backward in reverse (recomputing
 * each layer's activations first when checkpointing), then global-norm clipping and AdamW.
 *
 * Gradient accumulation: the loss of a step is Σ nll over the target tokens of ALL its
 * micro-batches divided by their total count, so k micro-batches of a batch give exactly the
 * gradient of the whole batch at once. Only LoRA A and B are trained; W stays frozen.
 *
 * LoRA dropout (PEFT's lora_dropout, p = config.dropout): each adapted linear's LoRA branch
 * sees dropout(x), the frozen path x. Every mask is a hash of
 * dropoutSeed(seed, step, layer, module, micro-batch), so it differs between steps, layers,
 * modules and micro-batches, the checkpointing recompute and the backward regenerate it
 * without storing it, and a resumed run (which restores `step`) draws the same masks as an
 * uninterrupted one. Evaluation runs without dropout.
 *
 * The LM head and the loss run only on target rows (labels ≠ -100) when those are fewer than
 * 90% of the micro-batch (kernels' crossEntropyOnLabelledRows): rows without a label contribute
 * neither loss nor gradient. In chat SFT with assistant-only labels the prompts are most of the
 * tokens, and the head is the largest product of the step for 128k-152k vocabularies.
 *
 * Data parallel (options.collectives with size N > 1, see distributed/): each rank runs its
 * own micro-batches, then the step pauses after the backward: the summed LoRA gradients (one
 * flat f32 buffer) and [Σ nll, targets, tokens, non-finite flag] are read back, summed over the
 * ranks (MPI_Allreduce), and written back, so the 1/targets scaling, clipping and AdamW that
 * follow see the gradient of the global batch and every rank makes the same update. Rank r's
 * local micro-batch i is global micro-batch i·N + r: its dropout masks are the global index's.
 */
import { sumNll } from "../eval-set.ts";
import {
  type GpuRuntime, type Tensor, type AdamWState, type GradClipState,
  type Recorder,
  FlatParamLayout, convertTensor, createAdamWState, createGradClipState, crossEntropy, crossEntropyOnLabelledRows, dropoutSeed,
  hasTensorCoreMatmul, rmsnormBackward, scale,
} from "@tuneloom/kernels";
import {
  type GpuModel, type LayerActivations, type LayerLora, type LoraConfig, type LoraTarget, type LoraLayerSpec, type LoraWeights,
  LORA_TARGETS, allocLayerActivations, allocLayerGradScratch, decoderLayerBackward, decoderLayerForward, loraLayerSpecs, loraScaling,
  loraTensorName,
} from "@tuneloom/model";
import type { Batch } from "../batching.ts";
import type { Collectives } from "../distributed/world.ts";
import { MicroBatchTensors, allReduceStep, finishStep, type StepResult } from "./optimizer-step.ts";
import { initLoraWeights } from "../lora-init.ts";
import { SavedLayerInputs, savedInputDtype } from "./saved-layer-inputs.ts";
import { type SelectiveLayers, type SelectiveOptions, SelectiveBuffers, selectiveLayers } from "./selective-checkpoint.ts";

export type { StepResult } from "./optimizer-step.ts";

/** With the selective checkpointing options (selective-checkpoint.ts: layers that keep parts of their forward). */
export interface LoraTrainerOptions extends SelectiveOptions {
  gradientCheckpointing: boolean;
  /**
   * Keep f16 copies of A, B and s·B, made once per step, for the tensor-core LoRA products (they
   * exist only where those products run). False converts at each use: the same values. Default:
   * on (its GPU test passed on the H100 in session 9); `TUNELOOM_LORA_F16_COPIES=0` turns it off.
   */
  keepF16Copies?: boolean;
  /** LoRA init and dropout masks. */
  seed: number;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  maxGradNorm: number;
  /**
   * Run the LM head only on target rows (see the module comment; default true). False computes
   * logits for every row: the same loss and gradients, for tests and comparisons.
   */
  headOnTargetRowsOnly?: boolean;
  /** Data-parallel ranks whose gradients this trainer's steps sum (absent or size 1: alone). */
  collectives?: Collectives;
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
  /** The modules a training step records with: `lora` plus the f16 copies where kept. */
  private readonly stepLora: LayerLora[];
  private readonly rt: GpuRuntime;
  /** f16 copies of the flat params, and of s × params (s·B): the modules' `f16` views (lora.ts LoraModule.f16). */
  private readonly copies16?: { params16: Tensor; scaled16: Tensor; scaling: number };
  /** The layers that keep parts of their forward under selective checkpointing (selective-checkpoint.ts). */
  readonly selectiveLayers: SelectiveLayers;
  private readonly selectiveBuffers: SelectiveBuffers;

  constructor(readonly model: GpuModel, readonly config: LoraConfig, readonly opts: LoraTrainerOptions) {
    this.rt = model.rt;
    if (!(config.dropout >= 0 && config.dropout < 1)) throw new Error(`LoRA dropout must be in [0, 1), got ${config.dropout}`);
    this.specs = loraLayerSpecs(model.cfg, config);
    this.selectiveLayers = selectiveLayers(model.cfg.numLayers, opts, opts.gradientCheckpointing);
    this.selectiveBuffers = new SelectiveBuffers(model.rt, model, this.selectiveLayers);
    const r = config.rank;
    // Per layer, every A in module order, then every B: the A's of projections that read one
    // input (q/k/v, gate/up) lie back to back, so each group's LoRA runs as one product (lora.ts).
    const layers = new Map<number, LoraLayerSpec[]>();
    for (const s of this.specs) layers.set(s.layer, [...(layers.get(s.layer) ?? []), s]);
    this.layout = new FlatParamLayout(
      [...layers.values()].flatMap((ls) => [
        ...ls.map((s) => ({ name: nameA(s), shape: [r, s.inFeatures] })),
        ...ls.map((s) => ({ name: nameB(s), shape: [s.outFeatures, r] })),
      ]),
      // Starts on 128 elements, so the f16 copies below (the same offsets) are bindable views too.
      { weightDecay: opts.weightDecay, alignElements: 128 },
    );
    this.params = this.layout.allocate(this.rt, "lora:params");
    this.grads = this.layout.allocate(this.rt, "lora:grads");
    this.adam = createAdamWState(this.rt, this.layout);
    this.clip = createGradClipState(this.rt);
    const scaling = loraScaling(config);
    // With 16-bit weights on a GPU with subgroup matrices the LoRA products run on tensor cores
    // (lora.ts): every A, B and s·B in f16, made once per step (recordF16Copies) instead of at each use.
    if ((opts.keepF16Copies ?? process.env.TUNELOOM_LORA_F16_COPIES !== "0") && hasTensorCoreMatmul(this.rt) && model.weights.layers[0]?.q.dtype === "f16") {
      const params16 = this.rt.empty("f16", [this.layout.numel], "lora:params16");
      const scaled16 = scaling === 1 ? params16 : this.rt.empty("f16", [this.layout.numel], "lora:scaled16");
      this.copies16 = { params16, scaled16, scaling };
    }
    this.lora = Array.from({ length: model.cfg.numLayers }, () => ({}));
    this.stepLora = Array.from({ length: model.cfg.numLayers }, () => ({}));
    for (const s of this.specs) {
      const c = this.copies16;
      const m = this.lora[s.layer]![s.module] = {
        A: this.layout.view(this.params, nameA(s)),
        B: this.layout.view(this.params, nameB(s)),
        dA: this.layout.view(this.grads, nameA(s)),
        dB: this.layout.view(this.grads, nameB(s)),
        scaling,
      };
      // Only a step's own modules carry the f16 copies: they are current from its first dispatch
      // to its update, while `lora` (evaluation, checkpoints) is read at any time.
      this.stepLora[s.layer]![s.module] = c
        ? { ...m, f16: { A: this.layout.view16(c.params16, nameA(s)), B: this.layout.view16(c.params16, nameB(s)), sB: this.layout.view16(c.scaled16, nameB(s)) } }
        : m;
    }
    this.setWeights(initLoraWeights(this.specs, r, opts.seed));
  }

  /** Uploads A and B for every adapted layer (init, or a checkpoint being resumed). */
  setWeights(weights: readonly LoraWeights[]) {
    for (const w of weights) {
      const m = this.lora[w.spec.layer]![w.spec.module];
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

  /**
   * AdamW's m and v per adapter tensor, keyed by its PEFT name (`loraTensorName`: what
   * checkpoints store), each as long as the tensor.
   */
  async getOptimizerMoments(): Promise<Map<string, { m: Float32Array; v: Float32Array }>> {
    const m = await this.rt.read(this.adam.m), v = await this.rt.read(this.adam.v);
    const out = new Map<string, { m: Float32Array; v: Float32Array }>();
    for (const spec of this.specs) {
      for (const which of ["A", "B"] as const) {
        const seg = this.layout.segment(which === "A" ? nameA(spec) : nameB(spec));
        out.set(loraTensorName(spec, which), { m: m.slice(seg.offset, seg.offset + seg.numel), v: v.slice(seg.offset, seg.offset + seg.numel) });
      }
    }
    return out;
  }

  /** Uploads AdamW's m and v (a resumed checkpoint's), keyed as getOptimizerMoments gives them. */
  setOptimizerMoments(moments: ReadonlyMap<string, { m: Float32Array; v: Float32Array }>) {
    const m = new Float32Array(this.layout.numel), v = new Float32Array(this.layout.numel);
    for (const spec of this.specs) {
      for (const which of ["A", "B"] as const) {
        const name = loraTensorName(spec, which);
        const seg = this.layout.segment(which === "A" ? nameA(spec) : nameB(spec));
        const mv = moments.get(name);
        if (!mv) throw new Error(`optimizer state has no moments for ${name}`);
        if (mv.m.length !== seg.numel || mv.v.length !== seg.numel) {
          throw new Error(`optimizer moments of ${name} have ${mv.m.length}/${mv.v.length} values, the tensor ${seg.numel}`);
        }
        m.set(mv.m, seg.offset);
        v.set(mv.v, seg.offset);
      }
    }
    this.rt.write(this.adam.m, m);
    this.rt.write(this.adam.v, v);
  }

  /**
   * The modules as one micro-batch of training step `step` sees them: with p > 0, each carries
   * its dropout (p, its mask seed, the shared (T, in) scratch); with p = 0, `stepLora` itself.
   */
  private trainingLora(step: number, microBatch: number, scratch: Tensor | undefined): LayerLora[] {
    const p = this.config.dropout;
    if (p === 0 || !scratch) return this.stepLora;
    return this.stepLora.map((layer, l) => {
      const out: LayerLora = {};
      for (const [target, m] of Object.entries(layer) as [LoraTarget, NonNullable<LayerLora[LoraTarget]>][]) {
        out[target] = { ...m, dropout: { p, seed: this.dropoutSeedFor(step, l, target, microBatch), scratch } };
      }
      return out;
    });
  }

  /** The u32 seed of one module's dropout mask in one micro-batch of optimizer step `step`. */
  dropoutSeedFor(step: number, layer: number, target: LoraTarget, microBatch: number): number {
    return dropoutSeed(this.opts.seed, step, layer, LORA_TARGETS.indexOf(target), microBatch);
  }

  /** Largest LoRA input width (C or I): the dropout scratch holds T of these rows. */
  private get maxLoraInFeatures(): number {
    return Math.max(...this.specs.map((s) => s.inFeatures));
  }

  /**
   * Runs one optimizer step over `microBatches` (gradient accumulation) at learning rate `lr`;
   * `step` is the 1-based optimizer step (AdamW bias correction). With `update: false` only the
   * loss and gradients are computed (for tests and gradient checks). `step` also picks the
   * dropout masks: the same step on the same batches gives the same gradients.
   */
  async step(microBatches: readonly Batch[], lr: number, step: number, update = true): Promise<StepResult> {
    const { rt, model } = this;
    const cfg = model.cfg;
    const C = cfg.hiddenSize, L = cfg.numLayers;
    const world = this.opts.collectives && this.opts.collectives.size > 1 ? this.opts.collectives : null;
    let targets = microBatches.reduce((n, b) => n + b.numTargets, 0);
    let tokens = microBatches.reduce((n, b) => n + b.numTokens, 0);
    // One rank's share may have no targets; the global batch is checked after the all-reduce.
    if (targets === 0 && !world) throw new Error("a training step has no target tokens (every label is -100)");
    // The backward runs in units of the summed loss (dlogits in [-1, 1]) so activation gradients
    // stay well inside f16's range where the tensor-core path rounds them; the LoRA gradients
    // are scaled back to the mean loss (× 1/targets) in f32 before clipping and AdamW.
    const gradUnit = 1;
    // The GPU starts while the rest records; steps repeat their dispatches, so bind groups are reused.
    const rec = rt.recorder(`train-step ${step}`, { flushEvery: 256, cacheBindings: true });
    const toRelease: Tensor[] = [];
    const loss = rt.zeros("f32", [2], "loss");
    toRelease.push(loss);
    rec.clear(this.grads);
    this.recordF16Copies(rec);
    const mb = new MicroBatchTensors();
    microBatches.forEach((batch, local) => {
      if (batch.numTargets === 0) return; // no loss, no gradient
      const mbIndex = world ? local * world.size + world.rank : local;
      const T = batch.inputIds.length;
      const tb = model.uploadTokens(batch.inputIds, batch.positions, batch.seqIds);
      const labels = rt.upload("i32", [T], batch.labels, "labels");
      mb.tensors.push(tb.ids, tb.positions, tb.seqIds, labels);
      const targetsList = Object.keys(this.lora[0] ?? {}) as LoraTarget[];
      let dropScratch: Tensor | undefined;
      if (this.config.dropout > 0) {
        dropScratch = rt.empty("f32", [T, this.maxLoraInFeatures], "lora_dropout_scratch");
        mb.tensors.push(dropScratch);
      }
      const lora = this.trainingLora(step, mbIndex, dropScratch);
      // Layer inputs are kept either way (bf16 under checkpointing with 16-bit weights); activations
      // per layer only without checkpointing.
      const xs = new SavedLayerInputs(rt, L, T, C, savedInputDtype(model, this.opts.gradientCheckpointing));
      mb.tensors.push(...xs.tensors);
      const actSets: LayerActivations[] = this.opts.gradientCheckpointing
        ? [allocLayerActivations(rt, cfg, T, this.config.rank, targetsList)]
        : Array.from({ length: L }, () => allocLayerActivations(rt, cfg, T, this.config.rank, targetsList));
      mb.sets.push(actSets);
      const actsFor = (l: number) => actSets[this.opts.gradientCheckpointing ? 0 : l]!;
      const selective = this.selectiveBuffers.forTokens(T);
      const fwd = model.recordForward(rec, tb, { lora, ...xs.forward, activations: actsFor, selective });
      mb.tensors.push(...fwd.scratch);
      const dh = rt.empty("f32", [T, C], "dh");
      const dxA = rt.empty("f32", [T, C], "dx_a"), dxB = rt.empty("f32", [T, C], "dx_b");
      mb.tensors.push(dh, dxA, dxB);
      const head = { h: fwd.h, w: model.weights.lmHead, labels, loss, accumulateLoss: true, dh, scale: gradUnit, nonFinite: this.clip.nonFinite };
      if (this.opts.headOnTargetRowsOnly === false) crossEntropy(rec, head);
      else mb.tensors.push(...crossEntropyOnLabelledRows(rec, head, batch.labels));
      // h = rmsnorm(x_L): dx_L
      rmsnormBackward(rec, fwd.x, model.weights.finalNorm, fwd.rstd, dh, dxA, 0);
      const g = allocLayerGradScratch(rt, cfg, T, this.config.rank);
      mb.sets.push(g);
      let dOut = dxA, dIn = dxB;
      for (let l = L - 1; l >= 0; l--) {
        const ctx = model.layerContext(l);
        const w = model.weights.layers[l]!;
        // Recompute this layer's activations from its saved input, except the last layer's: the
        // forward has just left them in the shared set.
        const x = xs.input(rec, l);
        const kept = this.opts.gradientCheckpointing && l < L - 1 ? decoderLayerForward(rec, ctx, w, tb, x, null, actsFor(l), lora[l], undefined, selective(l)) : undefined;
        decoderLayerBackward(rec, ctx, w, tb, x, actsFor(l), dOut, dIn, g, lora[l], undefined, kept);
        [dOut, dIn] = [dIn, dOut];
      }
      mb.release(rt, rec);
    });
    if (world) {
      rec.flush();
      ({ targets, tokens } = await allReduceStep(rt, world, { grads: [this.grads], loss, nonFinite: this.clip.nonFinite, targets, tokens }));
    }
    return finishStep(rt, rec, { chunks: [this], clip: this.clip }, {
      lr, step, update, gradUnit, loss, targets, tokens, maxGradNorm: this.opts.maxGradNorm,
      beta1: this.opts.beta1, beta2: this.opts.beta2, eps: this.opts.eps, toRelease,
    });
  }

  /** Whether steps read f16 copies of the LoRA weights (keepF16Copies, where tensor-core LoRA runs). */
  get keepsF16Copies(): boolean {
    return this.copies16 !== undefined;
  }

  /** Refreshes the f16 copies of A, B and s·B from the f32 params (a step's first dispatches). */
  private recordF16Copies(rec: Recorder) {
    const c = this.copies16;
    if (!c) return;
    convertTensor(rec, this.params, c.params16);
    if (c.scaled16 === c.params16) return;
    const scaled = rec.scratch("f32", this.params.shape, "lora:scaled");
    scale(rec, c.scaling, this.params, scaled);
    convertTensor(rec, scaled, c.scaled16);
    rec.recycle(scaled);
  }

  /**
   * Makes every rank's LoRA weights and AdamW moments root's (the start of a data-parallel run,
   * fresh or resumed on root): from then on identical updates keep them identical.
   */
  async broadcastState(world: Collectives, root = 0) {
    if (world.size === 1) return;
    for (const t of [this.params, this.adam.m, this.adam.v]) {
      const values = await this.rt.read(t);
      world.broadcast(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), root);
      this.rt.write(t, values);
    }
  }

  /** Mean loss over batches without updating anything (evaluation: no dropout). */
  async evaluate(batches: readonly Batch[]): Promise<number> {
    const { sum, count } = await sumNll(this.model, batches, this.lora);
    return sum / count;
  }
}
