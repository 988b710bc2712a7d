/**
 * The memory a full fine-tuning run needs, stated before training starts (docs/full-finetuning.md
 * has the formula), how its flat buffers are split, and the checks that refuse a run that cannot
 * train. FullTrainer keeps master weights, gradients and each AdamW moment as flat f32 buffers
 * (4·P bytes each), split into chunks of whole tensors under the device's per-buffer limit
 * (gpu/param-chunks.ts), so the buffer limits only refuse a model with one tensor over that
 * limit. WebGPU does not report a device's total memory: a model that does not fit is refused
 * when the device fails to allocate its buffers (fullAllocationError).
 *
 *   weights      4P (f32 masters) + 2P (16-bit GEMM copies, when the model runs 16-bit)
 *   gradients    4P
 *   AdamW        8P (m and v)
 *   activations  per micro-batch of T tokens, f32, with gradient checkpointing:
 *                (L + 1)·T·C (layer inputs; bf16 with 16-bit weights, see saved-layer-inputs.ts)
 *                + one layer's set + the backward's scratch
 *                + the head's logits chunk (T × min(V, defaultLogitsChunk(T))); without checkpointing, L sets
 */
import { type ParamSpec, GpuError, defaultLogitsChunk } from "@tuneloom/kernels";
import { expectedTensors } from "@tuneloom/model";
import { maxBindableBytes, planChunks } from "./gpu/param-chunks.ts";
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

/**
 * Every trainable tensor of full fine-tuning, in checkpoint order (a tied head is the embedding):
 * FullTrainer's layout. No weight decay on norms and biases, as transformers' Trainer.
 */
export function fullParamSpecs(cfg: ModelConfig): ParamSpec[] {
  const noDecay = (name: string) => name.endsWith(".bias") || name.endsWith("norm.weight");
  return expectedTensors(cfg).map(({ name, shape }) => ({ name, shape: [...shape], ...(noDecay(name) ? { weightDecay: 0 } : {}) }));
}

/** How the flat buffers split under a device's limits: `chunks` buffers of each kind, the largest `largestBytes`. */
export interface FullBufferPlan {
  chunks: number;
  largestBytes: number;
  /** The per-buffer limit (maxBindableBytes). */
  limitBytes: number;
}

/**
 * The chunks FullTrainer will make for `cfg` under `limits`. Throws (the refusal, with the
 * numbers) when one tensor alone exceeds the per-buffer limit: a tensor is never split.
 */
export function planFullBuffers(cfg: ModelConfig, limits: { maxBufferSize: number; maxStorageBufferBindingSize: number }, device: string): FullBufferPlan {
  const limitBytes = maxBindableBytes(limits);
  let runs;
  try {
    runs = planChunks(fullParamSpecs(cfg), limitBytes);
  } catch (e) {
    throw new Error(`full fine-tuning is not possible on ${device}: ${(e as Error).message} (maxBufferSize ${gb(limits.maxBufferSize)}, maxStorageBufferBindingSize ${gb(limits.maxStorageBufferBindingSize)}). Train a LoRA adapter instead (drop --full).`);
  }
  const bytes = runs.map((r) => r.reduce((a, s) => a + Math.ceil(s.shape.reduce((x, d) => x * d, 1) / 64) * 256, 0));
  return { chunks: runs.length, largestBytes: Math.max(...bytes), limitBytes };
}

/** `flat f32 buffers: 1 each of masters, gradients, AdamW m and v (largest 0.54 GB; the device binds at most 2.15 GB)`. */
export function formatFullBuffers(p: FullBufferPlan): string {
  return `flat f32 buffers: ${p.chunks} each of masters, gradients, AdamW m and v (largest ${gb(p.largestBytes)}; the device binds at most ${gb(p.limitBytes)} per buffer)`;
}

/**
 * An error allocating full fine-tuning's buffers, explained: a GPU out-of-memory error becomes the
 * refusal with the memory statement; anything else is returned as it is.
 */
export function fullAllocationError(err: unknown, e: FullMemoryEstimate, device: string): unknown {
  // WebGPU's GPUOutOfMemoryError, or a message that says so (Vulkan: VK_ERROR_OUT_OF_DEVICE_MEMORY).
  const oom = err instanceof GpuError &&
    (err.kind === "out-of-memory" || /out of memory|out-of-memory|OutOfMemory|OUT_OF_(DEVICE|HOST)_MEMORY|failed to allocate|allocation/i.test(err.message));
  if (!oom) return err;
  const cause = err.message.split("\n")[0]!; // Dawn appends the call chain and its source location
  return new Error(
    `full fine-tuning does not fit in this GPU's memory (${device}): it needs about ${gb(e.total)} (${formatFullMemory(e).replace(/^memory: /, "")}), and the device could not allocate its buffers (${cause}). ` +
      `Lower --batch-size or --max-length (activations), or train a LoRA adapter instead (drop --full).`,
  );
}

/** Parameters of a Llama-family model from its config (biases when the architecture has them). */
export function fullParameterCount(cfg: ModelConfig, hasQkvBias: boolean): number {
  const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd, vocabSize: V, numLayers: L } = cfg;
  const perLayer = 2 * C + 2 * nH * hd * C + 2 * nKV * hd * C + 3 * I * C + (hasQkvBias ? nH * hd + 2 * nKV * hd : 0);
  return V * C + L * perLayer + C + (cfg.tieWordEmbeddings ? 0 : V * C);
}

export function fullFinetuneMemory(
  cfg: ModelConfig,
  o: { params: number; weightBytes: 2 | 4; tokensPerMicroBatch: number; gradientCheckpointing: boolean; selectiveBytes?: number },
): FullMemoryEstimate {
  const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd, vocabSize: V, numLayers: L } = cfg;
  const T = o.tokensPerMicroBatch, P = o.params;
  const layerSet = 3 * C + 2 * nH * hd + 2 * nKV * hd + 3 * I + nH + 2; // allocLayerActivations, per token
  const scratch = 2 * C + 2 * nH * hd + 2 * nKV * hd + I + nH; // allocLayerGradScratch, per token (dGate, dUp live in gate, up)
  // Layer inputs (saved-layer-inputs.ts): bf16 under checkpointing with 16-bit weights (two f32 work buffers), else f32.
  const inputs = o.gradientCheckpointing && o.weightBytes === 2 ? T * C * (2 * Math.max(0, L - 1) + 4 * 2) : 4 * T * C * (L + 1);
  // + what selective checkpointing keeps (gpu/selective-checkpoint.ts selectiveStepBytes)
  const activations = inputs + (o.selectiveBytes ?? 0) + 4 * T * ((o.gradientCheckpointing ? 1 : L) * layerSet + scratch + Math.min(V, defaultLogitsChunk(T)) + 3 * C); // + dh, dx_a, dx_b
  const masters = 4 * P, copies16 = o.weightBytes === 2 ? 2 * P : 0, grads = 4 * P, optimizer = 8 * P;
  return { params: P, masters, copies16, grads, optimizer, activations, total: masters + copies16 + grads + optimizer + activations };
}

const gb = (bytes: number) => `${(bytes / 1e9).toFixed(bytes < 1e8 ? 4 : 2)} GB`;

/** `memory: f32 masters 0.50 GB + 16-bit copies 0.25 GB + gradients 0.50 GB + AdamW 1.00 GB + activations 0.10 GB = 2.35 GB (124M parameters)`. */
export function formatFullMemory(e: FullMemoryEstimate): string {
  const copies = e.copies16 ? ` + 16-bit copies ${gb(e.copies16)}` : "";
  return `memory: f32 masters ${gb(e.masters)}${copies} + gradients ${gb(e.grads)} + AdamW ${gb(e.optimizer)} + activations ${gb(e.activations)} = ${gb(e.total)} (${e.params.toLocaleString("en-US")} parameters)`;
}
