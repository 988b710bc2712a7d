/**
 * LoRA on a frozen linear layer (litgpt's lora.py, in WGSL kernels):
 *
 *   y = x·Wᵀ (+ b) + s · (x·Aᵀ)·Bᵀ        A (r, in), B (out, r), s = α/r (α/√r with rsLoRA)
 *
 * A starts Kaiming-uniform and B at zero, so training starts from the base model exactly.
 * W is frozen: backward gives dx and the gradients of A and B only.
 */
import { matmul, matmulAuto, type Recorder, type Tensor } from "@tuneloom/kernels";

export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

export interface LoraModule {
  A: Tensor; // f32 (r, in)
  B: Tensor; // f32 (out, r)
  scale: number;
  /** Gradients, accumulated (+=) by the backward; absent at inference. */
  dA?: Tensor; // f32 (r, in)
  dB?: Tensor; // f32 (out, r)
}

export type LayerLora = Partial<Record<LoraTarget, LoraModule>>;

/** y (T, out) = x (T, in)·Wᵀ + bias, plus s·h·Bᵀ with h = x·Aᵀ (T, r) saved for the backward. */
export function linearLoraForward(
  rec: Recorder, x: Tensor, w: Tensor, bias: Tensor | undefined, y: Tensor,
  lora: LoraModule | undefined, h: Tensor | undefined,
) {
  const T = x.shape[0]!;
  const [outF, inF] = w.shape as [number, number];
  matmulAuto(rec, { a: x, b: w, c: y, bias, M: T, N: outF, K: inF, transB: true }); // y = x·Wᵀ + b
  if (!lora) return;
  if (!h) throw new Error("linearLoraForward: LoRA needs an (T, r) buffer for h");
  const r = lora.A.shape[0]!;
  matmul(rec, { a: x, b: lora.A, c: h, M: T, N: r, K: inF, transB: true }); // h = x·Aᵀ (T, r)
  matmul(rec, { a: h, b: lora.B, c: y, M: T, N: outF, K: r, transB: true, alpha: lora.scale, beta: 1 }); // y += s·h·Bᵀ
}

/**
 * Backward of linearLoraForward. dx (T, in) = dy·W (+ LoRA's part), written when betaDx = 0,
 * added when 1. dA and dB accumulate (+=) so micro-batches sum. `dh` is (T, r) scratch.
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
  // backward of h = x·Aᵀ:  dA += dhᵀ·x,  dx += dh·A
  matmul(rec, { a: dh, b: x, c: lora.dA, M: r, N: inF, K: T, transA: true, beta: 1 });
  matmul(rec, { a: dh, b: lora.A, c: dx, M: T, N: inF, K: r, beta: 1 });
}
