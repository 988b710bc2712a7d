/**
 * GPU float-format conversion for loading checkpoints: bf16 → f32, f16 → f32 (exact),
 * f32 → bf16, f32 → f16, bf16 → f16, f16 → bf16 (round to nearest even, overflow → ±inf, f16
 * subnormals, NaN stays NaN). All on raw bits, so results are identical on every driver.
 * convertTensorCounted also counts what a narrowing lost (overflow, flushed to zero, subnormal).
 */
import type { DType } from "./dtype.ts";
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import convertWgsl from "./convert.wgsl" with { type: "text" };
import f16BitsWgsl from "./f16-bits.wgsl" with { type: "text" };

const source: KernelSource = { name: "convert", code: `${convertWgsl}\n${f16BitsWgsl}` };

const ENTRY: Record<string, string> = {
  "bf16>f32": "bf16_to_f32",
  "f16>f32": "f16_to_f32",
  "f32>bf16": "f32_to_bf16",
  "f32>f16": "f32_to_f16",
  "bf16>f16": "bf16_to_f16",
  "f16>bf16": "f16_to_bf16",
};

/** Conversions with an eight-per-thread form (`<entry>_x8`) for element counts that are multiples of 8. */
const WIDE = new Set(["f32_to_f16", "f32_to_bf16", "bf16_to_f32"]);

/** Narrowings whose loss can be counted; the others (widenings, f16 → bf16) lose no range. */
const COUNTED: Record<string, string> = {
  "bf16>f16": "bf16_to_f16_counted",
  "f32>f16": "f32_to_f16_counted",
  "f32>bf16": "f32_to_bf16_counted",
};

/** Order of the counts convertTensorCounted adds into its slot (4 u32 per slot, the 4th unused). */
export const CONVERT_LOSS_KINDS = ["overflow", "zeroed", "subnormal"] as const;
export const CONVERT_COUNTS_PER_SLOT = 4;

/** Whether a src → dst conversion can lose range, so convertTensorCounted applies. */
export function isCountedConversion(from: DType, to: DType): boolean {
  return `${from}>${to}` in COUNTED;
}


/** dst = src converted to dst's dtype (same element count; src and dst must be different buffers). */
export function convertTensor(rec: Recorder, src: Tensor, dst: Tensor) {
  dispatchConvert(rec, "convertTensor", ENTRY, src, dst);
}

/**
 * convertTensor for a narrowing (see isCountedConversion), that also adds to `counts` (u32,
 * CONVERT_COUNTS_PER_SLOT per slot) at `slot` how many elements overflowed to ±inf, were flushed
 * to ±0 and became subnormal (CONVERT_LOSS_KINDS order). Chunks of one tensor may share a slot.
 */
export function convertTensorCounted(rec: Recorder, src: Tensor, dst: Tensor, counts: Tensor, slot: number) {
  expectTensor("convertTensorCounted", "counts", counts, "u32");
  if (!Number.isInteger(slot) || slot < 0 || CONVERT_COUNTS_PER_SLOT * (slot + 1) > counts.numel)
    throw new Error(`convertTensorCounted: slot ${slot} outside counts (${counts.numel} u32 = ${counts.numel / CONVERT_COUNTS_PER_SLOT} slots)`);
  dispatchConvert(rec, "convertTensorCounted", COUNTED, src, dst, counts, slot);
}

/**
 * dst (C, R) f16 = srcᵀ for src (R, C) f32, rounded exactly as convertTensor's f32 → f16 (the
 * transposed operand of a tensor-core product, e.g. dyᵀ of a weight gradient). R must be even.
 */
export function convertTransposedF16(rec: Recorder, src: Tensor, dst: Tensor) {
  expectTensor("convertTransposedF16", "src", src, "f32");
  expectTensor("convertTransposedF16", "dst", dst, "f16");
  const [R, C] = src.shape as [number, number];
  if (src.shape.length !== 2 || dst.shape.length !== 2 || dst.shape[0] !== C || dst.shape[1] !== R)
    throw new Error(`convertTransposedF16: src (${src.shape.join(", ")}) and dst (${dst.shape.join(", ")}) are not (R, C) and (C, R)`);
  if (R % 2) throw new Error(`convertTransposedF16: R = ${R} rows must be even (two halves per word)`);
  rec.dispatch(`convert f32→f16ᵀ ${R}x${C}`, rec.rt.pipeline(source, {}, "f32_to_f16_t"),
    new Params(4).u32(R * C).u32(0).u32(C).u32(0).buffer, [src, dst], [Math.ceil(C / 32), Math.ceil(R / 64)]);
}

function dispatchConvert(rec: Recorder, fn: string, entries: Record<string, string>, src: Tensor, dst: Tensor, counts?: Tensor, slot = 0) {
  const entry = entries[`${src.dtype}>${dst.dtype}`];
  if (!entry) {
    const list = Object.keys(entries).map((k) => k.replace(">", " → ")).join(", ");
    throw new Error(`${fn}: no ${src.dtype} → ${dst.dtype} conversion (supported: ${list}); same-dtype data needs no kernel, copy it`);
  }
  if (src.numel !== dst.numel) throw new Error(`${fn}: src has ${src.numel} elements, dst has ${dst.numel}`);
  const n = src.numel;
  // The wide form where it applies (16-byte accesses, 8 elements per thread): same bits.
  const wide = WIDE.has(entry) && n % 8 === 0;
  rec.dispatch(`convert ${src.dtype}→${dst.dtype} ${n}`, rec.rt.pipeline(source, {}, wide ? `${entry}_x8` : entry),
    new Params(4).u32(n).u32(slot).u32(0).u32(0).buffer, counts ? [src, dst, counts] : [src, dst], flatGrid(Math.ceil(n / (wide ? 8 : 2))));
}
