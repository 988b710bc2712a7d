/**
 * Storage buffers of one device: created and destroyed with memory accounting, and a pool of
 * released buffers by bucketed size (memory.ts) so that recordings reuse them.
 *
 * The pool hands out the oldest free buffer of a size (creation order), whatever order buffers came
 * back in. A training step acquires and releases the same sizes at the same points every step, so
 * from the second step on every tensor gets the same buffer as the step before, and the bind groups
 * cached for its dispatches (bind-cache.ts, keyed by buffer) hit. Handing out the last released
 * one instead permuted the buffers from step to step: a tiny 2-layer model's step created ~90 new
 * bind groups every step (~11 µs each), SmolLM2-135M's recording took 36 ms a step (session 14).
 */
import { type MemoryTracker, poolBucketSize } from "./memory.ts";

export const STORAGE_USAGE = 0x80 | 0x04 | 0x08; // STORAGE | COPY_SRC | COPY_DST

export class BufferPool {
  private readonly pool = new Map<string, GPUBuffer[]>();
  private readonly sizes = new WeakMap<GPUBuffer, number>();
  /** Creation order of each buffer: free lists are kept sorted by it. */
  private readonly serial = new WeakMap<GPUBuffer, number>();
  private nextSerial = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly maxBufferSize: number,
    private readonly memory: MemoryTracker,
    /** Called before a buffer is destroyed (bind groups that name it must go). */
    private readonly forget: (b: GPUBuffer) => void,
    /** Called before any allocation (a lost device or an earlier error throws there). */
    private readonly checkErrors: () => void,
  ) {}

  /** A fresh buffer from the device (tracked), at least 4 bytes. */
  create(bytes: number, label: string, usage = STORAGE_USAGE): GPUBuffer {
    this.checkErrors();
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    if (size > this.maxBufferSize) {
      throw new Error(`${label}: ${size} bytes exceeds the device's maxBufferSize ${this.maxBufferSize}`);
    }
    const buffer = this.device.createBuffer({ size, usage, label });
    this.sizes.set(buffer, size);
    this.serial.set(buffer, this.nextSerial++);
    this.memory.allocated(size);
    this.memory.acquired(size);
    return buffer;
  }

  /** Frees a buffer made by create or acquire now (not back to the pool). */
  destroy(buffer: GPUBuffer) {
    const size = this.sizes.get(buffer);
    if (size === undefined) return; // not ours, or destroyed already
    this.sizes.delete(buffer);
    this.memory.released(size);
    this.memory.freed(size);
    this.forget(buffer);
    buffer.destroy();
  }

  /** A storage buffer from the pool (bucketed sizes), or a new one. Give it back with release. */
  acquire(bytes: number, label: string): GPUBuffer {
    const size = poolBucketSize(Math.max(4, bytes));
    const reused = this.pool.get(String(size))?.shift(); // the oldest free buffer (module comment)
    if (reused) {
      this.memory.acquired(size);
      return reused;
    }
    return this.create(size, label);
  }

  release(buffer: GPUBuffer) {
    const size = this.sizes.get(buffer);
    if (size === undefined) return;
    this.memory.released(size);
    const key = String(size);
    let list = this.pool.get(key);
    if (!list) this.pool.set(key, (list = []));
    // insert in creation order (free lists are short: the tensors of one size a step uses)
    const n = this.serial.get(buffer)!;
    let i = list.length;
    while (i > 0 && this.serial.get(list[i - 1]!)! > n) i--;
    list.splice(i, 0, buffer);
  }

  /** Frees every pooled (unused) buffer. */
  trim() {
    for (const list of this.pool.values()) {
      for (const b of list) {
        const size = this.sizes.get(b)!;
        this.sizes.delete(b);
        this.memory.freed(size);
        this.forget(b);
        b.destroy();
      }
    }
    this.pool.clear();
  }
}
