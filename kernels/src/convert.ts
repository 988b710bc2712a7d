/**
 * GPU float-format conversion for loading checkpoints: bf16 → f32, f16 → f32 (exact),
 * f32 → bf16, f32 → f16, bf16 → f16 (round to nearest even, overflow → ±inf, f16
 * subnormals, NaN stays NaN). All on raw bits, so results are identical on every driver.
 */
import type { DType } from "./dtype.ts";
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import type { Tensor } from "./tensor.ts";
import convertWgsl from "./convert.wgsl" with { type: "text" };

const source: KernelSource = { name: "convert", code: convertWgsl };

const ENTRY: Record<string, string> = {
  "bf16>f32": "bf16_to_f32",
  "f16>f32": "f16_to_f32",
  "f32>bf16": "f32_to_bf16",
  "f32>f16": "f32_to_f16",
  "bf16>f16": "bf16_to_f16",
};

/** The conversions convertTensor supports, as [from, to]. */
export const SUPPORTED_CONVERSIONS = Object.keys(ENTRY).map((k) => k.split(">") as [DType, DType]);

/** dst = src converted to dst's dtype (same element count; src and dst must be different buffers). */
export function convertTensor(rec: Recorder, src: Tensor, dst: Tensor) {
  const entry = ENTRY[`${src.dtype}>${dst.dtype}`];
  if (!entry) {
    const list = Object.keys(ENTRY).map((k) => k.replace(">", " → ")).join(", ");
    throw new Error(`convertTensor: no ${src.dtype} → ${dst.dtype} conversion (supported: ${list}); same-dtype data needs no kernel, copy it`);
  }
  if (src.numel !== dst.numel) throw new Error(`convertTensor: src has ${src.numel} elements, dst has ${dst.numel}`);
  const n = src.numel;
  rec.dispatch(`convert ${src.dtype}→${dst.dtype} ${n}`, rec.rt.pipeline(source, {}, entry),
    new Params(4).u32(n).u32(0).u32(0).u32(0).buffer, [src, dst], flatGrid(Math.ceil(n / 2)));
}
