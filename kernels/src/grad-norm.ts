/**
 * Global gradient norm, clip coefficient and non-finite detection, all on the GPU.
 *
 *   norm = ‖g‖₂ over the flat gradient buffer;  coef = min(1, maxNorm / (norm + 1e-6))
 *
 * as torch.nn.utils.clip_grad_norm_. The coefficient stays in `state.stats` for adamwStep to
 * read (it scales the gradient as it reads it: nothing rewrites the grad buffer); the trainer
 * reads norm only when it logs. `state.nonFinite` is a sticky u32 flag: gradNormClip,
 * checkFinite and crossEntropy({nonFinite}) set it, adamwStep skips its update while it is
 * set, and the trainer reads it to stop (or skip the step) cleanly, then clears it.
 *
 * The gradients may be split over several buffers (full fine-tuning of a model whose flat
 * buffer would exceed the device's binding limit): stage 1 runs once per buffer into its own
 * 256-byte-aligned range of one partials array, stage 2 sums them all, so the norm and the
 * coefficient are those of the concatenation.
 */
import { Params, cdiv } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, Tensor } from "./tensor.ts";
import gradNormWgsl from "./grad-norm.wgsl" with { type: "text" };

const source: KernelSource = { name: "grad_norm", code: gradNormWgsl };
const WG = 256;
const MAX_GROUPS = 1024;
const CLIP = 1;

/** Workgroups of stage 1: fixed by n alone, so the summation order is too (deterministic). */
const groupsFor = (n: number) => Math.max(1, Math.min(cdiv(n, WG * 4), MAX_GROUPS));

export interface GradClipState {
  /** f32 (1024, or gradNormPartialCount of the buffers) stage-1 partial sums. */
  partials: Tensor;
  /** f32 (4): [norm, clip coefficient, sum of squares, 0]. */
  stats: Tensor;
  /** u32 (1): 1 once any checked value was NaN/±inf. */
  nonFinite: Tensor;
}

/**
 * Stage-1 workgroups per gradient buffer: groupsFor(n) each; with several buffers, each but the
 * last rounded up to a multiple of 64, so every buffer's partials start 256 bytes into the array.
 */
export function gradNormGroups(numels: readonly number[]): number[] {
  return numels.map((n, i) => (i + 1 < numels.length ? Math.ceil(groupsFor(n) / 64) * 64 : groupsFor(n)));
}

/** The partials a state needs for these gradient buffers (createGradClipState's `partials`). */
export const gradNormPartialCount = (numels: readonly number[]) => Math.max(MAX_GROUPS, gradNormGroups(numels).reduce((a, g) => a + g, 0));

/** `partials`: 1024 for one buffer; gradNormPartialCount(numels) for gradients split over several. */
export function createGradClipState(rt: GpuRuntime, partials = MAX_GROUPS): GradClipState {
  const stats = rt.zeros("f32", [4], "gradclip:stats");
  rt.write(stats, new Float32Array([0, 1, 0, 0])); // coef 1 until the first gradNormClip
  return {
    partials: rt.empty("f32", [partials], "gradclip:partials"),
    stats,
    nonFinite: rt.zeros("u32", [1], "gradclip:nonfinite"),
  };
}

export function releaseGradClipState(rt: GpuRuntime, s: GradClipState) {
  rt.release(s.partials, s.stats, s.nonFinite);
}

/**
 * Records norm and clip coefficient of `grads` (f32, any shape; or several such buffers, taken as
 * one concatenated vector) into state.stats. maxNorm ≤ 0 or ∞: coef 1.
 */
export function gradNormClip(rec: Recorder, grads: Tensor | readonly Tensor[], state: GradClipState, maxNorm = 0) {
  const list: readonly Tensor[] = Array.isArray(grads) ? grads : [grads as Tensor];
  if (list.length === 0) throw new Error("gradNormClip: no gradient buffers");
  list.forEach((g, i) => expectTensor("gradNormClip", `grads[${i}]`, g, "f32"));
  const rt = rec.rt;
  const groups = gradNormGroups(list.map((g) => g.numel));
  const total = groups.reduce((a, g) => a + g, 0);
  if (total > state.partials.numel)
    throw new Error(`gradNormClip: ${list.length} gradient buffers need ${total} partial sums, the state holds ${state.partials.numel}: createGradClipState(rt, gradNormPartialCount(numels))`);
  const clip = maxNorm > 0 && Number.isFinite(maxNorm);
  const flags = (n: number, g: number) => new Params(4).u32(n).u32(g).f32(clip ? maxNorm : 0).u32(clip ? CLIP : 0).buffer;
  let base = 0;
  list.forEach((g, i) => {
    // Buffer i's partial sums: partials[base, base + groups[i]) (base a multiple of 64: 256 bytes).
    const partials = list.length === 1 ? state.partials
      : new Tensor(state.partials.buffer, "f32", [groups[i]!], state.partials.byteOffset + 4 * base, "gradclip:partials");
    rec.dispatch("gn_partial", rt.pipeline(source, {}, "gn_partial"), flags(g.numel, groups[i]!), [g, partials], [groups[i]!]);
    base += groups[i]!;
  });
  rec.dispatch("gn_finalize", rt.pipeline(source, {}, "gn_finalize"), flags(list.length === 1 ? list[0]!.numel : 0, total), [state.partials, state.stats, state.nonFinite], [1]);
}

/** Records: flag[0] = 1 if any element of x (f32) is NaN or ±inf. */
export function checkFinite(rec: Recorder, x: Tensor, flag: Tensor) {
  expectTensor("checkFinite", "x", x, "f32");
  expectTensor("checkFinite", "flag", flag, "u32", [1]);
  const rt = rec.rt;
  const groups = groupsFor(x.numel);
  const params = new Params(4).u32(x.numel).u32(groups).f32(0).u32(0).buffer;
  rec.dispatch("check_finite", rt.pipeline(source, {}, "check_finite"), params, [x, flag], [groups]);
}

/** Records clearing the sticky non-finite flag. */
export function clearNonFinite(rec: Recorder, state: GradClipState) {
  rec.clear(state.nonFinite);
}

/** Records zeroing gradient buffers (before the first micro-batch of a step). */
export function zeroGrad(rec: Recorder, ...grads: Tensor[]) {
  for (const g of grads) rec.clear(g);
}

/** Reads [norm, coef] and the flag back (waits for the GPU): for logging and stopping. */
export async function readGradNorm(rt: GpuRuntime, state: GradClipState): Promise<{ norm: number; coef: number; nonFinite: boolean }> {
  const [norm, coef] = await rt.read(state.stats);
  const [flag] = await rt.readU32(state.nonFinite);
  return { norm: norm!, coef: coef!, nonFinite: flag !== 0 };
}
