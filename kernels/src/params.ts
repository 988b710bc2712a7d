/** Packs a kernel's uniform parameter block: 4-byte fields in WGSL struct order. */
export class Params {
  private readonly view: DataView;
  private offset = 0;
  constructor(fields: number) {
    this.view = new DataView(new ArrayBuffer(Math.max(16, Math.ceil(fields / 4) * 16)));
  }
  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`u32 param out of range: ${v}`);
    this.view.setUint32(this.offset, v, true);
    this.offset += 4;
    return this;
  }
  i32(v: number): this {
    this.view.setInt32(this.offset, v, true);
    this.offset += 4;
    return this;
  }
  f32(v: number): this {
    this.view.setFloat32(this.offset, v, true);
    this.offset += 4;
    return this;
  }
  get buffer(): ArrayBuffer {
    return this.view.buffer as ArrayBuffer;
  }
}

/** ceil(a / b) for positive integers: workgroup counts. */
export const cdiv = (a: number, b: number) => Math.ceil(a / b);

/** Threads per workgroup of every flat (one thread per element) kernel here. */
export const FLAT_WORKGROUP = 256;

/**
 * Grid for `units` work items at `perWorkgroup` each: x up to `maxX` (the device's 65535
 * per-dimension limit), the rest wrapped into y. Shaders rebuild the flat workgroup index as
 * `wg.y * num_workgroups.x + wg.x` and bounds-check it (the last row of the grid overshoots).
 */
export function flatGrid(units: number, perWorkgroup = FLAT_WORKGROUP, maxX = 65535): [number, number] {
  const groups = Math.ceil(units / perWorkgroup);
  if (groups <= maxX) return [groups, 1];
  return [maxX, Math.ceil(groups / maxX)];
}
