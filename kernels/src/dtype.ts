/**
 * Element types of GPU tensors. 16-bit types are stored packed two per u32 word so that
 * every kernel can read them without the `shader-f16` feature (unpack2x16float for f16,
 * a 16-bit shift for bf16); buffers are padded to a whole word.
 */
export type DType = "f32" | "f16" | "bf16" | "i32" | "u32";

export const BYTES_PER_ELEMENT: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4 };

/** Bytes a tensor of `numel` elements occupies on the GPU (rounded up to 4-byte words). */
export function storageBytes(dtype: DType, numel: number): number {
  return Math.ceil((numel * BYTES_PER_ELEMENT[dtype]) / 4) * 4;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape.join(", ")}]`);
    n *= d;
  }
  return n;
}
