/**
 * LoRA on a frozen linear layer (litgpt's lora.py, in WGSL kernels), with PEFT's lora_dropout:
 *
 *   x̃ = dropout(x)                                        (T, in), x̃ = x when not training
 *   y  = x·Wᵀ (+ b) + s · (x̃·Aᵀ)·Bᵀ      A (r, in), B (out, r), s = α/r (α/√r with rsLoRA)
 *
 * Only the LoRA branch sees dropout; the frozen path sees x. A starts Kaiming-uniform and B at
 * zero, so training starts from the base model exactly. W is frozen: backward gives dx and the
 * gradients of A and B only.
 *
 * The dropout mask is never stored: it is a hash of (seed, element index) (kernels' dropout),
 * so the backward, and a gradient-checkpointing recompute of the forward, regenerate exactly
 * the forward's x̃ from x and the module's seed.
 */
import { type Recorder, Tensor, dropoutBackward, dropoutForward, matmul, matmulAuto, tensorCoreUnsupported } from "@tuneloom/kernels";

export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

/** Training-time dropout on a module's LoRA input; absent at inference and evaluation. */
export interface LoraDropout {
  /** Probability of zeroing an input element, in (0, 1). */
  p: number;
  /**
   * u32 mask seed, unique per (run seed, step, layer, module, micro-batch); the trainer makes it
   * with kernels' `dropoutSeed`. Forward, recompute and backward must see the same value.
   */
  seed: number;
  /**
   * f32 scratch of at least T·in elements, for x̃ and then the LoRA part of dx. One buffer can
   * serve every module of a step: each call uses it only between its own dispatches.
   */
  scratch: Tensor;
}

export interface LoraModule {
  A: Tensor; // f32 (r, in)
  B: Tensor; // f32 (out, r)
  scale: number;
  /** Gradients, accumulated (+=) by the backward; absent at inference. */
  dA?: Tensor; // f32 (r, in)
  dB?: Tensor; // f32 (out, r)
  dropout?: LoraDropout;
}

export type LayerLora = Partial<Record<LoraTarget, LoraModule>>;

/** x̃ (T, in) = dropout(x) written into the module's scratch. */
function droppedInput(rec: Recorder, x: Tensor, d: LoraDropout, fn: string): Tensor {
  const [T, inF] = x.shape as [number, number];
  if (d.scratch.dtype !== "f32" || d.scratch.numel < T * inF) {
    throw new Error(`${fn}: LoRA dropout scratch must be f32 with at least ${T}·${inF} elements, got ${d.scratch.dtype} [${d.scratch.shape}]`);
  }
  const xd = new Tensor(d.scratch.buffer, "f32", [T, inF], d.scratch.byteOffset, "lora_x_dropped");
  dropoutForward(rec, x, xd, d.p, d.seed);
  return xd;
}

/**
 * y (T, out) = x (T, in)·Wᵀ + bias, plus s·h·Bᵀ with h = x̃·Aᵀ (T, r) saved for the backward.
 * `x16`: x already rounded to f16 (shared by the projections that read the same input), used
 * for the frozen product on tensor cores; the LoRA branch always reads the f32 x.
 */
export function linearLoraForward(
  rec: Recorder, x: Tensor, w: Tensor, bias: Tensor | undefined, y: Tensor,
  lora: LoraModule | undefined, h: Tensor | undefined, x16?: Tensor,
) {
  const T = x.shape[0]!;
  const [outF, inF] = w.shape as [number, number];
  const base = { b: w, c: y, bias, M: T, N: outF, K: inF, transB: true };
  const a = x16 && tensorCoreUnsupported({ ...base, a: x16, bias: undefined }) === null ? x16 : x;
  matmulAuto(rec, { ...base, a }); // y = x·Wᵀ + b
  if (!lora) return;
  if (!h) throw new Error("linearLoraForward: LoRA needs an (T, r) buffer for h");
  const r = lora.A.shape[0]!;
  const xl = lora.dropout ? droppedInput(rec, x, lora.dropout, "linearLoraForward") : x; // x̃ (T, in)
  matmul(rec, { a: xl, b: lora.A, c: h, M: T, N: r, K: inF, transB: true }); // h = x̃·Aᵀ (T, r)
  matmul(rec, { a: h, b: lora.B, c: y, M: T, N: outF, K: r, transB: true, alpha: lora.scale, beta: 1 }); // y += s·h·Bᵀ
}

/**
 * Backward of linearLoraForward. dx (T, in) = dy·W (+ LoRA's part), written when betaDx = 0,
 * added when 1. dA and dB accumulate (+=) so micro-batches sum. `dh` is (T, r) scratch. With
 * dropout, x̃ is regenerated from x and the module's seed (so `lora.dropout` must be the
 * forward's).
 */
export function linearLoraBackward(
  rec: Recorder, x: Tensor, w: Tensor, dy: Tensor, dx: Tensor, betaDx: 0 | 1,
  lora: LoraModule | undefined, h: Tensor | undefined, dh: Tensor | undefined,
) {
  const T = x.shape[0]!;
  const [outF, inF] = w.shape as [number, number];
  // backward of y = x·Wᵀ:  dx = dy·W
  matmulAuto(rec, { a: dy, b: w, c: dx, M: T, N: inF, K: outF, beta: betaDx });
  if (!lora) return;
  if (!h || !dh || !lora.dA || !lora.dB) throw new Error("linearLoraBackward: LoRA backward needs h, dh, dA and dB");
  const r = lora.A.shape[0]!;
  const s = lora.scale;
  // backward of y += s·h·Bᵀ:  dB += s·dyᵀ·h,  dh = s·dy·B
  matmul(rec, { a: dy, b: h, c: lora.dB, M: outF, N: r, K: T, transA: true, alpha: s, beta: 1 });
  matmul(rec, { a: dy, b: lora.B, c: dh, M: T, N: r, K: outF, alpha: s });
  if (!lora.dropout) {
    // backward of h = x·Aᵀ:  dA += dhᵀ·x,  dx += dh·A
    matmul(rec, { a: dh, b: x, c: lora.dA, M: r, N: inF, K: T, transA: true, beta: 1 });
    matmul(rec, { a: dh, b: lora.A, c: dx, M: T, N: inF, K: r, beta: 1 });
    return;
  }
  const d = lora.dropout;
  // backward of h = x̃·Aᵀ:  dA += dhᵀ·x̃,  dx̃ = dh·A
  const xd = droppedInput(rec, x, d, "linearLoraBackward"); // x̃ regenerated into the scratch
  matmul(rec, { a: dh, b: xd, c: lora.dA, M: r, N: inF, K: T, transA: true, beta: 1 });
  const dxd = xd; // x̃ is no longer needed: the scratch now holds dx̃ (T, in)
  matmul(rec, { a: dh, b: lora.A, c: dxd, M: T, N: inF, K: r });
  // backward of x̃ = dropout(x):  dx += dx̃ · keep / (1 − p)
  dropoutBackward(rec, dxd, dx, d.p, d.seed, 1);
}
