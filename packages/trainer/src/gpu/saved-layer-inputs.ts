/**
 * The layer inputs x_0 … x_{L−1} (T, C) a training step keeps for its backward: each layer's
 * backward reads its input (rmsnorm's gradient), and with gradient checkpointing it first
 * recomputes the layer's activations from it. Both trainers (LoRA and full) keep them here.
 *
 * - f32 (f32 weights, or checkpointing off): the forward writes every x_l into its own f32 buffer,
 *   and the backward reads it back: exact.
 * - bf16 (16-bit weights, f16 or bf16, with checkpointing: the mixed-precision mode): the forward runs on two f32
 *   buffers and rounds each x_l to bf16 as the layer reads it; the backward widens x_l into an f32
 *   buffer before recomputing layer l. Half the bytes (Llama-3.2-3B at 8×512: 0.73 GB less), at
 *   the precision HF's bf16 checkpoints keep; bf16 rather than f16 for the range (residual streams
 *   carry outliers in the thousands). The loss is the f32 forward's; the gradients are those of
 *   the recompute from the rounded inputs. The last layer's input stays f32 (its activations are
 *   the forward's, not recomputed). `TUNELOOM_CKPT_BF16=0` keeps f32 (A/B measurements).
 */
import { type GpuRuntime, type Recorder, type Tensor, convertTensor } from "@tuneloom/kernels";
import type { GpuModel } from "@tuneloom/model";

export type SavedInputDtype = "f32" | "bf16";

/** bf16 for 16-bit weights under checkpointing (module comment), f32 otherwise. */
export function savedInputDtype(model: GpuModel, gradientCheckpointing: boolean): SavedInputDtype {
  const dtype = model.weights.layers[0]?.q.dtype;
  const weights16 = dtype === "f16" || dtype === "bf16";
  return gradientCheckpointing && weights16 && process.env.TUNELOOM_CKPT_BF16 !== "0" ? "bf16" : "f32";
}

export class SavedLayerInputs {
  /** Every tensor this owns (release them with the step's scratch). */
  readonly tensors: Tensor[] = [];
  /** For recordForward: layerInputs and saveInput. */
  readonly forward: { layerInputs: readonly Tensor[]; saveInput?: (rec: Recorder, layer: number, x: Tensor) => void };
  private readonly saved: Tensor[];
  /** bf16 only: the two f32 buffers the forward alternates between (x_l in work[l % 2]). */
  private readonly work: Tensor[] = [];

  constructor(rt: GpuRuntime, readonly L: number, T: number, C: number, readonly dtype: SavedInputDtype) {
    if (dtype === "f32") {
      this.saved = Array.from({ length: L + 1 }, (_, l) => rt.empty("f32", [T, C], `x${l}`));
      this.tensors.push(...this.saved);
      this.forward = { layerInputs: this.saved };
      return;
    }
    this.work = [rt.empty("f32", [T, C], "x_even"), rt.empty("f32", [T, C], "x_odd")];
    // x_0 … x_{L−2} rounded; x_{L−1} stays in its f32 work buffer.
    this.saved = Array.from({ length: Math.max(0, L - 1) }, (_, l) => rt.empty("bf16", [T, C], `x${l}:bf16`));
    this.tensors.push(...this.work, ...this.saved);
    this.forward = {
      layerInputs: Array.from({ length: L + 1 }, (_, l) => this.work[l % 2]!),
      saveInput: (rec, l, x) => { if (l < L - 1) convertTensor(rec, x, this.saved[l]!); },
    };
  }

  /**
   * Layer l's input (T, C) f32 for its recompute and backward. Layers are visited from L − 1 down
   * to 0, after the head's backward has read x_L: in bf16 mode x_l is widened into a work buffer
   * that nothing reads any more by then.
   */
  input(rec: Recorder, l: number): Tensor {
    if (this.dtype === "f32" || l === this.L - 1) return this.forward.layerInputs[l]!;
    const x = this.work[0]!;
    convertTensor(rec, this.saved[l]!, x);
    return x;
  }
}
