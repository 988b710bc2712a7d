/**
 * A Llama-family model on the GPU: weights, RoPE frequencies and the recorded forward pass
 * over a flat batch of tokens (packed or padded: per-token positions and sequence ids).
 * Training (packages/trainer) and inference (generator.ts) both build on it.
 */
import {
  type GpuRuntime, type Recorder, type Tensor,
  checkEmbeddingErrors, crossEntropyOnLabelledRows, embeddingErrors, embeddingForward, getRuntime, readLoss, rmsnormForward, ropeInvFreq,
} from "@tuneloom/kernels";
import { openCheckpoint } from "../checkpoint.ts";
import { loadModelConfig, type ModelConfig } from "../config.ts";
import {
  type KvContext, type LayerActivations, type SelectiveCheckpoint, type LayerContext, type TokenBatch,
  allocLayerActivations, decoderLayerForward, releaseTensors,
} from "./decoder-layer.ts";
import type { GatheredLayerLora, LayerLora } from "./lora.ts";
import type { LoadReport } from "./weight-stream.ts";
import { defaultWeightDtype, type GpuModelWeights, uploadModelWeights, type WeightDtype } from "./weights.ts";

export interface LoadGpuModelOptions {
  weightDtype?: WeightDtype;
  /** Bytes per staging slot of the weight stream (weight-stream.ts; default 64 MiB). */
  stagingSlotBytes?: number;
}

export interface ForwardOptions {
  /** LoRA modules per layer (one adapter for every row). */
  lora?: readonly LayerLora[];
  /** Or each row its own adapter slot (lora-slots.ts): layer l's stacks and the rows' slots. */
  gathered?: (layer: number) => GatheredLayerLora;
  /**
   * (L + 1) tensors (T, C): receives every layer's input and the last layer's output. The same
   * tensor may recur (e.g. two buffers alternating) when `saveInput` keeps what is overwritten.
   */
  layerInputs?: readonly Tensor[];
  /** Called with each layer's input x_l (T, C) as the layer is about to read it, l = 0 … L − 1. */
  saveInput?: (rec: Recorder, layer: number, x: Tensor) => void;
  /** Activations to write for layer l (a fresh set per layer to keep them, one set to reuse). */
  activations: (layer: number) => LayerActivations;
  kv?: (layer: number) => KvContext;
  /** Selective checkpointing (training): what layer l keeps from its forward for its recompute. */
  selective?: (layer: number) => SelectiveCheckpoint | undefined;
  /**
   * Inference (nothing is kept for a backward): one buffer carries the residual stream through the
   * layers, updated in place (decoderLayerForward with xOut === x: the o and down products add into
   * it, no residual-add passes). Not with layerInputs.
   */
  residualInPlace?: boolean;
}

export class GpuModel {
  private readonly embedErrors: Tensor;

  private constructor(
    readonly rt: GpuRuntime,
    readonly dir: string,
    readonly cfg: ModelConfig,
    readonly weights: GpuModelWeights,
    readonly invFreq: Tensor,
    /** How loading went: seconds, bytes, GPU conversions, precision lost (formatLoadReport, formatUnderflow). */
    readonly loadReport: LoadReport,
  ) {
    this.embedErrors = embeddingErrors(rt);
  }

  static async load(dir: string, opts: LoadGpuModelOptions = {}): Promise<GpuModel> {
    if (opts.weightDtype !== undefined && !["f32", "f16", "bf16"].includes(opts.weightDtype))
      throw new Error(`weight dtype (--weight-dtype) must be f32, f16 or bf16, got ${JSON.stringify(opts.weightDtype)}`);
    const rt = await getRuntime();
    const cfg = loadModelConfig(dir);
    const store = openCheckpoint(dir);
    try {
      const dtype = opts.weightDtype ?? defaultWeightDtype(rt, store, cfg);
      const { weights, report } = await uploadModelWeights(rt, store, cfg, dtype, { slotBytes: opts.stagingSlotBytes });
      const invFreq = rt.upload("f32", [cfg.headDim / 2], ropeInvFreq(cfg), "rope_inv_freq");
      await rt.sync();
      return new GpuModel(rt, dir, cfg, weights, invFreq, report);
    } finally {
      store.close();
    }
  }

  layerContext(layer: number): LayerContext {
    const sliding = this.cfg.layerTypes[layer] === "sliding_attention";
    return { cfg: this.cfg, invFreq: this.invFreq, window: sliding ? (this.cfg.slidingWindow ?? 0) : 0 };
  }

  /** Uploads one flat batch's token ids, positions and sequence ids (i32, (T)). */
  uploadTokens(ids: Int32Array, positions: Int32Array, seqIds: Int32Array): TokenBatch {
    const T = ids.length;
    if (positions.length !== T || seqIds.length !== T) throw new Error(`uploadTokens: ids, positions and seqIds must all have ${T} entries`);
    const rt = this.rt;
    return {
      T,
      ids: rt.upload("i32", [T], ids, "ids"),
      positions: rt.upload("i32", [T], positions, "positions"),
      seqIds: rt.upload("i32", [T], seqIds, "seq_ids"),
    };
  }

  releaseTokens(tb: TokenBatch) {
    this.rt.release(tb.ids, tb.positions, tb.seqIds);
  }

  /**
   * Records embedding → layers → final RMSNorm. Returns the normed hidden state h (T, C) and
   * its rstd (T); `x` is the last layer's output (the final norm's input).
   */
  recordForward(rec: Recorder, tb: TokenBatch, opts: ForwardOptions): { h: Tensor; rstd: Tensor; x: Tensor; scratch: Tensor[] } {
    const { rt, cfg, weights } = this;
    const C = cfg.hiddenSize, T = tb.T, L = cfg.numLayers;
    const scratch: Tensor[] = [];
    const fresh = (label: string) => {
      const t = rt.empty("f32", [T, C], label);
      scratch.push(t);
      return t;
    };
    const inputs = opts.layerInputs;
    if (opts.lora && opts.gathered) throw new Error("recordForward: lora (one adapter) and gathered (per-row slots) do not go together");
    if (inputs && inputs.length !== L + 1) throw new Error(`recordForward: layerInputs needs ${L + 1} tensors, got ${inputs.length}`);
    if (inputs && opts.residualInPlace) throw new Error("recordForward: residualInPlace keeps no layer inputs; it does not go with layerInputs");
    // Without saved inputs two buffers ping-pong through the layers (one, updated in place, for inference).
    const ping = inputs ? null : opts.residualInPlace ? [fresh("x")] : [fresh("x0"), fresh("x1")];
    const xAt = (l: number) => (inputs ? inputs[l]! : ping![l % ping!.length]!);
    embeddingForward(rec, tb.ids, weights.embed, xAt(0), this.embedErrors);
    for (let l = 0; l < L; l++) {
      opts.saveInput?.(rec, l, xAt(l));
      decoderLayerForward(rec, this.layerContext(l), weights.layers[l]!, tb, xAt(l), xAt(l + 1), opts.activations(l), opts.gathered?.(l) ?? opts.lora?.[l], opts.kv?.(l), opts.selective?.(l));
    }
    const h = fresh("h_final");
    const rstd = rt.empty("f32", [T], "rstd_final");
    scratch.push(rstd);
    rmsnormForward(rec, xAt(L), weights.finalNorm, h, rstd, cfg.rmsNormEps);
    return { h, rstd, x: xAt(L), scratch };
  }

  /** Throws if any token id was outside the embedding table since the last check. */
  async checkTokenIds() {
    await checkEmbeddingErrors(this.rt, this.embedErrors, this.cfg.vocabSize);
  }

  /**
   * Next-token negative log-likelihood of a flat batch: labels are the shifted targets
   * (−100: no loss). Returns the per-token nll (0 where ignored) and the sum and count.
   */
  async nll(ids: Int32Array, positions: Int32Array, seqIds: Int32Array, labels: Int32Array, lora?: readonly LayerLora[]) {
    const rt = this.rt, T = ids.length;
    const tb = this.uploadTokens(ids, positions, seqIds);
    const labelsT = rt.upload("i32", [T], labels, "labels");
    const acts = allocLayerActivations(rt, this.cfg, T, lora ? loraRankOf(lora) : 0, lora ? loraTargetsOf(lora) : []);
    const loss = rt.zeros("f32", [2], "loss");
    const nll = rt.empty("f32", [T], "nll");
    const rec = rt.recorder("nll");
    const fwd = this.recordForward(rec, tb, { activations: () => acts, lora, residualInPlace: true });
    // The head only on labelled rows (prompts in SFT evaluation carry no loss).
    const ceScratch = crossEntropyOnLabelledRows(rec, { h: fwd.h, w: this.weights.lmHead, labels: labelsT, loss, nll }, labels);
    rec.submit();
    const perToken = await rt.read(nll);
    const { sum, count } = await readLoss(rt, loss);
    await this.checkTokenIds();
    rec.release();
    rt.release(labelsT, loss, nll, ...fwd.scratch, ...ceScratch);
    releaseTensors(rt, acts);
    this.releaseTokens(tb);
    return { perToken, sum, count };
  }
}

export function loraRankOf(lora: readonly LayerLora[]): number {
  for (const layer of lora) for (const m of Object.values(layer)) if (m) return m.A.shape[0]!;
  return 0;
}

export function loraTargetsOf(lora: readonly LayerLora[]) {
  return Object.keys(lora[0] ?? {}) as (keyof LayerLora)[];
}
