import { type DType, numelOf, storageBytes } from "./dtype.ts";

/**
 * A typed view of (part of) a GPU buffer. Row-major, contiguous. `byteOffset` lets many
 * tensors share one buffer (it must respect minStorageBufferOffsetAlignment, 256 bytes, when
 * bound on its own).
 */
export class Tensor {
  readonly numel: number;
  readonly byteLength: number;
  constructor(
    readonly buffer: GPUBuffer,
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly byteOffset = 0,
    readonly label = "tensor",
  ) {
    this.numel = numelOf(shape);
    this.byteLength = storageBytes(dtype, this.numel);
  }

  /** The binding entry resource for this tensor (at least 4 bytes: WebGPU rejects empty bindings). */
  get binding(): GPUBufferBinding {
    return { buffer: this.buffer, offset: this.byteOffset, size: Math.max(4, this.byteLength) };
  }

  /** Same storage, new shape with the same element count. */
  view(shape: readonly number[]): Tensor {
    const n = numelOf(shape);
    if (n !== this.numel) throw new Error(`cannot view ${this.label} [${this.shape}] as [${shape}]`);
    return new Tensor(this.buffer, this.dtype, shape, this.byteOffset, this.label);
  }
}

/** Asserts a tensor's dtype and shape; the error names the argument and the kernel. */
export function expectTensor(kernel: string, name: string, t: Tensor, dtype: DType | DType[], shape?: readonly number[]) {
  const dtypes = Array.isArray(dtype) ? dtype : [dtype];
  if (!dtypes.includes(t.dtype)) throw new Error(`${kernel}: ${name} must be ${dtypes.join("|")}, got ${t.dtype}`);
  if (shape && (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i]))) {
    throw new Error(`${kernel}: ${name} must have shape [${shape.join(", ")}], got [${t.shape.join(", ")}]`);
  }
}
