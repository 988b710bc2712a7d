/**
 * The memory a full fine-tuning run needs, stated before
 * training starts (docs/full-finetuning.md has the formula), and the check that refuses a run
 * whose buffers the device cannot hold. WebGPU does not report a device's total memory, so the
 * hard check is the one WebGPU can make: FullTrainer keeps params, gradients and each AdamW
 * moment as ONE buffer each (4·P bytes), which must fit maxBufferSize and
 * maxStorageBufferBindingSize.
 *
 *   weights      4P (f32 masters) + 2P (16-bit GEMM copies, when the model runs 16-bit)
 *   gradients    4P
 *   AdamW        8P (m and v)
 *   activations  per micro-batch of T tokens, f32, with gradient checkpointing:
 *                (L + 1)·T·C (layer inputs) + one layer's set + the backward's scratch
 *                + the head's logits chunk (T × min(V, 16384)); without checkpointing, L sets
 */
import type { ModelConfig } from "@tuneloom/model";

export interface FullMemoryEstimate {
  /** Trainable parameters (a tied head counted once). */
  params: number;
  masters: number;
  copies16: number;
  grads: number;
  optimizer: number;
  activations: number;
  total: number;
}

/** Parameters of a Llama-family model from its config (biases when the architecture has them). */
export function fullParameterCount(cfg: ModelConfig, hasQkvBias: boolean): number {
  const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd, vocabSize: V, numLayers: L } = cfg;
  const perLayer = 2 * C + 2 * nH * hd * C + 2 * nKV * hd * C + 3 * I * C + (hasQkvBias ? nH * hd + 2 * nKV * hd : 0);
  return V * C + L * perLayer + C + (cfg.tieWordEmbeddings ? 0 : V * C);
}

export function fullFinetuneMemory(
  cfg: ModelConfig,
  o: { params: number; weightBytes: 2 | 4; tokensPerMicroBatch: number; gradientCheckpointing: boolean },
): FullMemoryEstimate {
  const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd, vocabSize: V, numLayers: L } = cfg;
  const T = o.tokensPerMicroBatch, P = o.params;
  const layerSet = 3 * C + 2 * nH * hd + 2 * nKV * hd + 3 * I + nH + 2; // allocLayerActivations, per token
  const scratch = 2 * C + 2 * nH * hd + 2 * nKV * hd + 3 * I + nH; // allocLayerGradScratch, per token
  const activations = 4 * T * ((L + 1) * C + (o.gradientCheckpointing ? 1 : L) * layerSet + scratch + Math.min(V, 16384) + 4 * C);
  const masters = 4 * P, copies16 = o.weightBytes === 2 ? 2 * P : 0, grads = 4 * P, optimizer = 8 * P;
  return { params: P, masters, copies16, grads, optimizer, activations, total: masters + copies16 + grads + optimizer + activations };
}

const gb = (bytes: number) => `${(bytes / 1e9).toFixed(bytes < 1e8 ? 4 : 2)} GB`;

/** `memory: f32 masters 0.50 GB + 16-bit copies 0.25 GB + gradients 0.50 GB + AdamW 1.00 GB + activations 0.10 GB = 2.35 GB (124M parameters)`. */
export function formatFullMemory(e: FullMemoryEstimate): string {
  const copies = e.copies16 ? ` + 16-bit copies ${gb(e.copies16)}` : "";
  return `memory: f32 masters ${gb(e.masters)}${copies} + gradients ${gb(e.grads)} + AdamW ${gb(e.optimizer)} + activations ${gb(e.activations)} = ${gb(e.total)} (${e.params.toLocaleString("en-US")} parameters)`;
}

/** Throws, with the numbers, when one 4·P-byte buffer exceeds the device's buffer limits. */
export function checkFullFits(e: FullMemoryEstimate, limits: { maxBufferSize: number; maxStorageBufferBindingSize: number }, device: string): void {
  const need = 4 * e.params;
  const limit = Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize);
  if (need > limit) {
    throw new Error(
      `full fine-tuning needs ${gb(need)} buffers (4 bytes × ${e.params.toLocaleString("en-US")} parameters each for the weights, gradients and both AdamW moments; ${gb(e.total)} in all), ` +
        `but ${device} binds at most ${gb(limit)} per buffer (maxBufferSize ${gb(limits.maxBufferSize)}, maxStorageBufferBindingSize ${gb(limits.maxStorageBufferBindingSize)}). ` +
        `Train a LoRA adapter instead (drop --full), or a smaller model.`,
    );
  }
}
