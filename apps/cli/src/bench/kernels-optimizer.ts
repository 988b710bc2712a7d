/**
 * Kernel benchmarks of the optimizer step: AdamW and the global grad norm/clip over the flat
 * LoRA parameter set of the model (rank r on q, k, v, o, gate, up, down of every layer, laid
 * out by FlatParamLayout as the trainer does). Both are memory-bound: gbs.
 */
import {
  type GpuRuntime, type Recorder, FlatParamLayout, adamwStep, createAdamWState, createGradClipState, gradNormClip, readGradNorm,
  releaseAdamWState, releaseGradClipState,
} from "@tuneloom/kernels";
import { loraLayerSpecs, parseLoraConfig } from "@tuneloom/model";
import { type KernelBenchLine, type KernelShape, elementsRelError, gbs, modelTag, runOnce, timeKernel, uniform, uniformIn, worst } from "./kernels-common.ts";

const WEIGHT_DECAY = 0.01;

/** The trainer's flat layout of the LoRA A and B matrices of every targeted projection. */
export function loraLayout(s: KernelShape): FlatParamLayout {
  const r = s.loraRank;
  const specs = loraLayerSpecs(s.cfg, parseLoraConfig({ rank: r, targetModules: "all" }));
  return new FlatParamLayout(
    specs.flatMap((sp) => [
      { name: `${sp.base}.lora_A`, shape: [r, sp.inFeatures] },
      { name: `${sp.base}.lora_B`, shape: [sp.outFeatures, r] },
    ]),
    { weightDecay: WEIGHT_DECAY },
  );
}

const layoutShape = (s: KernelShape, layout: FlatParamLayout) => `n=${layout.numel} tensors=${layout.segments.length} (LoRA r=${s.loraRank})`;

/**
 * One AdamW step (step 10, so both bias corrections matter, moments not zero) with the clip
 * coefficient read from a grad-clip state, as the trainer calls it. relErr is the worst of the
 * parameter update (p_new − p, so a wrong update is not hidden behind the much larger p), m and v.
 */
export async function* benchAdamw(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const layout = loraLayout(s), n = layout.numel;
  const p0 = uniform(n, 0.02, 141), g = uniform(n, 1e-3, 142), m0 = uniform(n, 1e-3, 143), v0 = uniformIn(n, 1e-8, 1e-6, 144);
  const state = createAdamWState(rt, layout), clip = createGradClipState(rt); // clip coefficient 1 until a gradNormClip
  rt.write(state.m, m0);
  rt.write(state.v, v0);
  const params = rt.upload("f32", [n], p0), grads = rt.upload("f32", [n], g);
  const o = { lr: 1e-3, step: 10, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
  try {
    const record = (rec: Recorder) => adamwStep(rec, state, params, grads, { ...o, clip });
    await runOnce(rt, "bench adamw", record);
    const p1 = await rt.read(params), m1 = await rt.read(state.m), v1 = await rt.read(state.v);

    // float64 AdamW of element i (alignment gaps between segments stay as they were)
    const inSegment = new Uint8Array(n);
    for (const seg of layout.segments) inSegment.fill(1, seg.offset, seg.offset + seg.numel);
    const bc1 = 1 - o.beta1 ** o.step, bc2Sqrt = Math.sqrt(1 - o.beta2 ** o.step);
    const mRef = (i: number) => (inSegment[i] ? o.beta1 * m0[i]! + (1 - o.beta1) * g[i]! : m0[i]!);
    const vRef = (i: number) => (inSegment[i] ? o.beta2 * v0[i]! + (1 - o.beta2) * g[i]! ** 2 : v0[i]!);
    const updateRef = (i: number) => {
      if (!inSegment[i]) return 0;
      const w = p0[i]! * (1 - o.lr * WEIGHT_DECAY);
      return w - (o.lr / bc1) * mRef(i) / (Math.sqrt(vRef(i)) / bc2Sqrt + o.eps) - p0[i]!;
    };
    const update = Float32Array.from(p1, (x, i) => x - p0[i]!);
    const relErr = worst(elementsRelError(update, updateRef), elementsRelError(m1, mRef), elementsRelError(v1, vRef));
    const ms = await timeKernel(rt, record);
    // reads p, g, m, v; writes p, m, v
    yield { op: "adamw", shape: layoutShape(s, layout), dtype: "f32", ms, gbs: gbs(7 * n * 4, ms), relErr, ...modelTag(s) };
  } finally {
    rt.release(params, grads);
    releaseAdamWState(rt, state);
    releaseGradClipState(rt, clip);
  }
}

/** ‖g‖₂ over the flat gradient buffer and the clip coefficient min(1, 1/(‖g‖ + 1e-6)) (max norm 1). */
export async function* benchGradNorm(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const layout = loraLayout(s), n = layout.numel, maxNorm = 1;
  const g = uniform(n, 1e-3, 151);
  const grads = rt.upload("f32", [n], g), clip = createGradClipState(rt);
  try {
    const record = (rec: Recorder) => gradNormClip(rec, grads, clip, maxNorm);
    await runOnce(rt, "bench grad norm", record);
    const got = await readGradNorm(rt, clip);
    let ss = 0;
    for (let i = 0; i < n; i++) ss += g[i]! ** 2;
    const norm = Math.sqrt(ss), coef = Math.min(1, maxNorm / (norm + 1e-6));
    const relErr = worst(Math.abs(got.norm - norm) / norm, Math.abs(got.coef - coef) / coef, got.nonFinite ? Infinity : 0);
    const ms = await timeKernel(rt, record);
    yield { op: "grad_norm_clip", shape: layoutShape(s, layout), dtype: "f32", ms, gbs: gbs(n * 4, ms), relErr, ...modelTag(s) };
  } finally {
    rt.release(grads);
    releaseGradClipState(rt, clip);
  }
}
