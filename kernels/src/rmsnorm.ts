/**
 * RMSNorm with a frozen weight: y = x / sqrt(mean(x²) + eps) · w over the last axis.
 * x, y, dy, dx are f32 (T, C); w is (C) in f32, f16 or bf16; rstd (T) f32 is written by the
 * forward and read by the backward. Per-head norms (T·nH, hd) work through a view. Full
 * fine-tuning also differentiates w (rmsnormWeightBackward, rmsnorm_weight.wgsl).
 */
import type { DType } from "./dtype.ts";
import { wgslLoader } from "./load16.ts";
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import { splitKReduce } from "./matmul.ts";
import rmsnormWgsl from "./rmsnorm.wgsl" with { type: "text" };
import rmsnormWeightWgsl from "./rmsnorm_weight.wgsl" with { type: "text" };
import f16BitsWgsl from "./f16-bits.wgsl" with { type: "text" };
import { convertTensor } from "./convert.ts";

const weightGradSource: KernelSource = { name: "rmsnorm_weight", code: rmsnormWeightWgsl };

const sources = new Map<DType, KernelSource>();
function rmsnormSource(wDtype: DType): KernelSource {
  let s = sources.get(wDtype);
  if (!s) {
    s = { name: `rmsnorm_w${wDtype}`, code: `${rmsnormWgsl.replace("//!LOAD_W", wgslLoader("w", 2, wDtype))}\n${f16BitsWgsl}` };
    sources.set(wDtype, s);
  }
  return s;
}

/**
 * Threads per row: about 4 elements each, a power of two from 32 to 256, or to `maxThreads` (up to
 * 1024) for few rows. Rows of the published models (C ≥ 576) get 256; short rows (tiny models,
 * per-head norms) leave fewer threads idle and need fewer barrier steps in the reduction. Few
 * rows (decode: one per sequence) run one workgroup per row on a mostly idle GPU, where the time is
 * each thread's chain of dependent loads: 16 per thread at C = 4096 took ~17 µs per norm on an
 * H100 (session 8's 8B decode profile, 2 norms per layer); up to 1024 threads cut that chain to 4.
 */
export function rmsnormThreads(C: number, maxThreads = 256): number {
  let wg = 32;
  while (wg < maxThreads && wg * 4 < C) wg *= 2;
  return wg;
}

/** Rows up to which a norm takes more than 256 threads per row (fewer workgroups than half the SMs of an H100). */
const FEW_ROWS = 64;

/** Threads per row for T rows of C on this device. */
function threadsFor(rec: Recorder, T: number, C: number): number {
  return rmsnormThreads(C, T <= FEW_ROWS ? Math.min(1024, rec.rt.caps.limits.maxComputeInvocationsPerWorkgroup) : 256);
}

function rowsOf(kernel: string, x: Tensor, w: Tensor): [number, number] {
  expectTensor(kernel, "x", x, "f32");
  const C = x.shape[x.shape.length - 1] ?? 1;
  expectTensor(kernel, "w", w, ["f32", "f16", "bf16"], [C]);
  return [C === 0 ? 0 : x.numel / C, C];
}

/**
 * y (T, C) = x / sqrt(mean(x²) + eps) · w, and rstd (T) = 1 / sqrt(mean(x²) + eps). y must not alias x.
 * With `y16` also y rounded to f16 (the bits of toF16(y)) in the same pass, for the tensor-core
 * products that read it.
 */
export function rmsnormForward(rec: Recorder, x: Tensor, w: Tensor, y: Tensor, rstd: Tensor, eps: number, y16?: Tensor) {
  const [T, C] = rowsOf("rmsnormForward", x, w);
  expectTensor("rmsnormForward", "y", y, "f32", x.shape);
  expectTensor("rmsnormForward", "rstd", rstd, "f32", [T]);
  if (y16) expectTensor("rmsnormForward", "y16", y16, "f16", x.shape);
  const fused = y16 !== undefined && C % 2 === 0;
  rec.dispatch(`rmsnormForward ${T}x${C}${fused ? " +f16" : ""}`, rec.rt.pipeline(rmsnormSource(w.dtype), { WG: threadsFor(rec, T, C) }, fused ? "rmsnorm_forward_f16" : "rmsnorm_forward"),
    new Params(4).u32(T).u32(C).f32(eps).f32(0).buffer, fused ? [x, w, y, rstd, y16] : [x, w, y, rstd], flatGrid(T, 1));
  if (y16 && !fused) convertTensor(rec, y, y16);
}

/**
 * dx (T, C) from dy (T, C), the forward's input x, w and saved rstd. `beta = 1` adds into dx
 * (the residual stream's gradient), `beta = 0` overwrites it. dx must not alias x or dy.
 */
export function rmsnormBackward(rec: Recorder, x: Tensor, w: Tensor, rstd: Tensor, dy: Tensor, dx: Tensor, beta = 0) {
  const [T, C] = rowsOf("rmsnormBackward", x, w);
  expectTensor("rmsnormBackward", "rstd", rstd, "f32", [T]);
  expectTensor("rmsnormBackward", "dy", dy, "f32", x.shape);
  expectTensor("rmsnormBackward", "dx", dx, "f32", x.shape);
  rec.dispatch(`rmsnormBackward ${T}x${C}`, rec.rt.pipeline(rmsnormSource(w.dtype), { WG: threadsFor(rec, T, C) }, "rmsnorm_backward"),
    new Params(4).u32(T).u32(C).f32(0).f32(beta).buffer, [x, w, rstd, dy, dx], flatGrid(T, 1));
}

/**
 * dw (C) = Σ_t dy[t]·x[t]·rstd[t] (elementwise over C): the norm weight's gradient (full
 * fine-tuning; LoRA keeps norms frozen). `beta = 1` adds into dw.
 */
export function rmsnormWeightBackward(rec: Recorder, x: Tensor, rstd: Tensor, dy: Tensor, dw: Tensor, beta = 0) {
  expectTensor("rmsnormWeightBackward", "x", x, "f32");
  const C = x.shape[x.shape.length - 1] ?? 1;
  const T = C === 0 ? 0 : x.numel / C;
  expectTensor("rmsnormWeightBackward", "rstd", rstd, "f32", [T]);
  expectTensor("rmsnormWeightBackward", "dy", dy, "f32", x.shape);
  expectTensor("rmsnormWeightBackward", "dw", dw, "f32", [C]);
  if (T <= WEIGHT_GRAD_ROWS) {
    rec.dispatch(`rmsnormWeightBackward ${T}x${C}`, rec.rt.pipeline(weightGradSource, {}, "rmsnorm_weight_backward"),
      new Params(4).u32(T).u32(C).f32(0).f32(beta).buffer, [x, rstd, dy, dw], flatGrid(C, 64));
    return;
  }
  // Chunks of rows in parallel, then their sum in chunk order (rmsnorm_weight.wgsl).
  const chunks = Math.ceil(T / WEIGHT_GRAD_ROWS);
  const part = rec.scratch("f32", [chunks, C], "rmsnorm_dw_partials");
  rec.dispatch(`rmsnormWeightBackward ${T}x${C} partials`, rec.rt.pipeline(weightGradSource, {}, "rmsnorm_weight_partial"),
    new Params(4).u32(T).u32(C).f32(0).f32(0).buffer, [x, rstd, dy, part], [Math.ceil(C / 64), chunks]);
  splitKReduce(rec, part, dw, { M: 1, N: C, ldc: C, splits: chunks, alpha: 1, beta, offsetC: 0 });
  rec.recycle(part);
}

/** Rows per partial sum of rmsnormWeightBackward (ROWS in rmsnorm_weight.wgsl). */
const WEIGHT_GRAD_ROWS = 64;
