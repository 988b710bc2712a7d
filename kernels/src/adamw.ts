/**
 * AdamW over many parameter tensors in one dispatch (torch.optim.AdamW semantics):
 *
 *   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   p ← p − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)      (eps outside the sqrt)
 *
 * with g = coef·grad, coef the clip coefficient gradNormClip left on the GPU. All trainable
 * tensors (e.g. every LoRA A and B) live in ONE flat f32 buffer described by a
 * FlatParamLayout: each tensor is a segment starting on a 256-byte boundary, so
 * `layout.view(flat, name)` is a tensor that kernels can bind on its own; the gradients use
 * the same layout in a second flat buffer, so gradNormClip and adamwStep each see one buffer.
 * Each segment carries its own weight decay (e.g. 0 for norms/biases) and lr multiplier
 * (LoRA+ style). `lr` and `step` (1-based, for bias correction) come with every call, so
 * schedules stay on the CPU and a resumed run passes the restored step.
 */
import { Params, cdiv } from "./params.ts";
import type { GradClipState } from "./grad-norm.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, Tensor } from "./tensor.ts";
import { numelOf } from "./dtype.ts";
import adamwWgsl from "./adamw.wgsl" with { type: "text" };

const source: KernelSource = { name: "adamw", code: adamwWgsl };
const WG = 256;
const HAS_CLIP = 1, HAS_FLAG = 2;
const ALIGN_ELEMS = 64; // 256 bytes of f32

export interface ParamSpec {
  name: string;
  shape: readonly number[];
  /** Overrides the layout's weight decay for this tensor. */
  weightDecay?: number;
  /** Multiplies the step's lr for this tensor (default 1). */
  lrScale?: number;
}

export interface ParamSegment {
  name: string;
  shape: readonly number[];
  /** First element in the flat buffer (a multiple of 64: 256 bytes). */
  offset: number;
  numel: number;
  weightDecay: number;
  lrScale: number;
}

/** Where each trainable tensor lives in one flat f32 buffer (params, grads, m and v share it). */
export class FlatParamLayout {
  readonly segments: ParamSegment[] = [];
  readonly numel: number;
  private readonly byName = new Map<string, ParamSegment>();

  /** Elements each tensor's start is aligned to: 64 (256 bytes of f32), or 128 so that f16 mirrors align too. */
  readonly alignElements: number;

  constructor(specs: readonly ParamSpec[], opts: { weightDecay: number; alignElements?: 64 | 128 }) {
    this.alignElements = opts.alignElements ?? ALIGN_ELEMS;
    let offset = 0;
    for (const s of specs) {
      if (this.byName.has(s.name)) throw new Error(`FlatParamLayout: duplicate tensor name ${s.name}`);
      const numel = numelOf(s.shape);
      const seg: ParamSegment = {
        name: s.name, shape: [...s.shape], offset, numel,
        weightDecay: s.weightDecay ?? opts.weightDecay, lrScale: s.lrScale ?? 1,
      };
      this.segments.push(seg);
      this.byName.set(s.name, seg);
      offset += Math.ceil(numel / this.alignElements) * this.alignElements;
    }
    this.numel = Math.max(offset, 1);
  }

  segment(name: string): ParamSegment {
    const s = this.byName.get(name);
    if (!s) throw new Error(`FlatParamLayout: no tensor named ${name}`);
    return s;
  }

  /** The tensor `name` inside a flat buffer of this layout (bindable: 256-byte aligned). */
  view(flat: Tensor, name: string): Tensor {
    const s = this.segment(name);
    if (flat.numel !== this.numel) throw new Error(`FlatParamLayout.view: ${flat.label} has ${flat.numel} elements, the layout ${this.numel}`);
    return new Tensor(flat.buffer, "f32", s.shape, flat.byteOffset + s.offset * 4, name);
  }

  /**
   * The tensor `name` inside an f16 mirror of this layout (the same element offsets, numel f16
   * elements), e.g. the f16 copy of every LoRA weight made in one conversion. Bindable only when
   * the layout aligns starts to 128 elements (256 bytes of f16).
   */
  view16(flat16: Tensor, name: string): Tensor {
    const s = this.segment(name);
    if (flat16.dtype !== "f16" || flat16.numel !== this.numel) throw new Error(`FlatParamLayout.view16: ${flat16.label} must be f16 with ${this.numel} elements, got ${flat16.dtype} ${flat16.numel}`);
    if (this.alignElements % 128) throw new Error("FlatParamLayout.view16: the layout must align tensors to 128 elements (alignElements: 128)");
    return new Tensor(flat16.buffer, "f16", s.shape, flat16.byteOffset + s.offset * 2, `${name}:f16`);
  }

  /** A zeroed flat f32 buffer of this layout (params to fill, or grads). */
  allocate(rt: GpuRuntime, label: string): Tensor {
    return rt.zeros("f32", [this.numel], label);
  }

  /** The segment table adamw.wgsl reads: {start, end, lrScale, weightDecay} per tensor. */
  table(): Uint32Array {
    const buf = new ArrayBuffer(Math.max(1, this.segments.length) * 16);
    const u = new Uint32Array(buf), f = new Float32Array(buf);
    this.segments.forEach((s, i) => {
      u[4 * i] = s.offset;
      u[4 * i + 1] = s.offset + s.numel;
      f[4 * i + 2] = s.lrScale;
      f[4 * i + 3] = s.weightDecay;
    });
    return u;
  }
}

/** Moments of a flat parameter buffer plus the uploaded segment table. */
export interface AdamWState {
  layout: FlatParamLayout;
  /** f32 (numel) first moment (exp_avg). */
  m: Tensor;
  /** f32 (numel) second moment (exp_avg_sq). */
  v: Tensor;
  segments: Tensor;
}

export function createAdamWState(rt: GpuRuntime, layout: FlatParamLayout): AdamWState {
  const table = layout.table();
  return {
    layout,
    m: rt.zeros("f32", [layout.numel], "adamw:m"),
    v: rt.zeros("f32", [layout.numel], "adamw:v"),
    segments: rt.upload("u32", [table.length], table, "adamw:segments"),
  };
}

export function releaseAdamWState(rt: GpuRuntime, s: AdamWState) {
  rt.release(s.m, s.v, s.segments);
}

export interface AdamWOptions {
  lr: number;
  /** 1-based step number after this update (bias correction uses β^step). */
  step: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Clip coefficient (stats[1]) and non-finite flag from gradNormClip: the update skips when the flag is set. */
  clip?: GradClipState;
  /** A non-finite flag without clipping. */
  nonFinite?: Tensor;
}

function adamwParams(n: number, numSegments: number, groups: number, flags: number, o: AdamWOptions, weightDecay: number) {
  const beta1 = o.beta1 ?? 0.9, beta2 = o.beta2 ?? 0.999, eps = o.eps ?? 1e-8;
  if (!(o.step >= 1) || !Number.isInteger(o.step)) throw new Error(`adamwStep: step must be an integer ≥ 1, got ${o.step}`);
  if (!Number.isFinite(o.lr)) throw new Error(`adamwStep: lr must be finite, got ${o.lr}`);
  const bc1 = 1 - beta1 ** o.step;
  const bc2Sqrt = Math.sqrt(1 - beta2 ** o.step);
  return new Params(12).u32(n).u32(numSegments).u32(groups).u32(flags)
    .f32(o.lr).f32(beta1).f32(beta2).f32(eps)
    .f32(bc1).f32(bc2Sqrt).f32(weightDecay).u32(0).buffer;
}

function flagsAndBindings(rec: Recorder, o: AdamWOptions): [number, Tensor, Tensor] {
  const rt = rec.rt;
  const flagT = o.clip?.nonFinite ?? o.nonFinite;
  if (o.nonFinite) expectTensor("adamwStep", "nonFinite", o.nonFinite, "u32", [1]);
  const flags = (o.clip ? HAS_CLIP : 0) | (flagT ? HAS_FLAG : 0);
  return [flags, o.clip?.stats ?? rt.placeholder, flagT ?? rt.placeholder];
}

const groupsFor = (n: number) => Math.max(1, Math.min(cdiv(n, WG), 4096));

/** Records one AdamW update of the flat parameter buffer `params` with the flat `grads`. */
export function adamwStep(rec: Recorder, state: AdamWState, params: Tensor, grads: Tensor, opts: AdamWOptions) {
  const n = state.layout.numel;
  expectTensor("adamwStep", "params", params, "f32", [n]);
  expectTensor("adamwStep", "grads", grads, "f32", [n]);
  if (state.layout.segments.length === 0) return;
  const [flags, stats, flag] = flagsAndBindings(rec, opts);
  const groups = groupsFor(n);
  rec.dispatch("adamw_step", rec.rt.pipeline(source, {}, "adamw_step"),
    adamwParams(n, state.layout.segments.length, groups, flags, opts, 0),
    [params, grads, state.m, state.v, state.segments, stats, flag], [groups]);
}

export interface AdamWTensor {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  weightDecay: number;
  lrScale?: number;
}

/** The same update over separate tensors (one dispatch each, same pipeline). */
export function adamwStepTensors(rec: Recorder, tensors: readonly AdamWTensor[], opts: AdamWOptions) {
  const [flags, stats, flag] = flagsAndBindings(rec, opts);
  const pipeline = rec.rt.pipeline(source, {}, "adamw_step");
  for (const t of tensors) {
    const n = t.param.numel;
    for (const [k, x] of [["grad", t.grad], ["m", t.m], ["v", t.v]] as const) expectTensor("adamwStepTensors", k, x, "f32", t.param.shape);
    expectTensor("adamwStepTensors", "param", t.param, "f32");
    const groups = groupsFor(n);
    rec.dispatch(`adamw_step ${t.param.label}`, pipeline,
      adamwParams(n, 0, groups, flags, { ...opts, lr: opts.lr * (t.lrScale ?? 1) }, t.weightDecay),
      [t.param, t.grad, t.m, t.v, rec.rt.placeholder, stats, flag], [groups]);
  }
}
