/**
 * Streams checkpoint tensors from disk to the GPU, converting on the GPU:
 *
 *   file ──positioned read──▶ staging slot (MAP_WRITE) ──copy──▶ destination tensor        same dtype
 *                                                      └─copy─▶ raw scratch ──convert──▶ destination   e.g. bf16 → f16
 *
 * A ring of `slots` staging buffers of `slotBytes` each bounds host memory (4 × 64 MiB by
 * default); a slot is filled again once the GPU has consumed it (its mapAsync resolves), so disk
 * reads overlap the GPU's copies and conversions. Reads run on I/O threads (readIntoAsync): every
 * slot being filled has its reads in flight at once, and a slot goes to the GPU when they land. Small tensors share a slot; a tensor larger
 * than a slot, or than a storage binding (128 MiB on lavapipe), goes in pieces of whole
 * 256-element blocks, so every piece's binding offset is 256-byte aligned on both sides.
 * Narrowing conversions count what they lose per tensor (convertTensorCounted: overflow to ±inf,
 * flushed to zero, subnormal); finish() reads every count back in one round trip.
 */
import {
  BYTES_PER_ELEMENT, CONVERT_COUNTS_PER_SLOT, type DType, type GpuRuntime, type Recorder, Tensor,
  convertTensor, convertTensorCounted, isCountedConversion, storageBytes,
} from "@tuneloom/kernels";
import type { WeightStore } from "../checkpoint.ts";
import { ModelFileError } from "../config.ts";

const MAP_WRITE = 0x0002, COPY_SRC = 0x0004, MAP_MODE_WRITE = 0x0002;
const ALIGN = 256;
const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

const GPU_DTYPE: Record<string, DType | undefined> = { F32: "f32", F16: "f16", BF16: "bf16" };

/** What one narrowing conversion lost, per tensor. */
export interface TensorLoss {
  name: string;
  from: DType;
  to: DType;
  numel: number;
  /** Finite values beyond the target's range (f16: |x| ≥ 65520), now ±inf. */
  overflow: number;
  /** Nonzero values now ±0. */
  zeroed: number;
  /** Values now subnormal in the target (f16: |x| < 6.1e-5), with fewer significant bits. */
  subnormal: number;
}

export interface LoadReport {
  seconds: number;
  /** Checkpoint bytes read. */
  bytes: number;
  tensors: number;
  /** Tensors converted on the GPU, per "from→to". */
  conversions: Record<string, number>;
  /** Every counted (narrowing) conversion, including those that lost nothing. */
  losses: TensorLoss[];
  /** Host staging memory used (bytes). */
  stagingBytes: number;
  /**
   * Where the seconds went on the host: reading the file into the staging slots (wall time with
   * any read in flight; reads overlap), and waiting for a slot the GPU has not finished with while
   * no read was in flight (the rest is opening, recording and the last GPU work). Reading near
   * `seconds` means the disk (or page-cache copy) bounds the load; waiting, the GPU.
   */
  readSeconds: number;
  waitSeconds: number;
}

interface Piece {
  dst: Tensor;
  from: DType;
  /** First element of the piece within its tensor, and its element count. */
  at: number;
  elems: number;
  stagingOffset: number;
  countSlot: number;
}

interface Slot {
  staging: GPUBuffer;
  /** The staged bytes as a storage buffer, for the convert kernel (MAP_WRITE buffers cannot be bound). */
  raw: GPUBuffer;
  mapped: ArrayBuffer | null;
  /** Mapped again and free to fill (never rejects: failures land in WeightStream.failure). */
  ready: Promise<void>;
  /** Reads into the mapped range still in flight. */
  reads: Promise<void>[];
  used: number;
  pieces: Piece[];
}

export interface WeightStreamOptions {
  /** Tensors that may need a counted conversion (an upper bound: the counts buffer is sized by it). */
  maxTensors: number;
  /** Bytes per staging slot (default 64 MiB, at most the device's storage binding limit). */
  slotBytes?: number;
  /** Staging slots in the ring (default 4). */
  slots?: number;
  /** Bytes that will be streamed, when known: caps the slot size for small checkpoints. */
  totalBytes?: number;
}

export class WeightStream {
  private readonly slots: Slot[] = [];
  private current = 0;
  private readonly rec: Recorder;
  private readonly counts: Tensor;
  private readonly counted: Omit<TensorLoss, "overflow" | "zeroed" | "subnormal">[] = [];
  private readonly created: Tensor[] = [];
  private readonly conversions: Record<string, number> = {};
  private readonly t0 = performance.now();
  private readonly slotBytes: number;
  private readonly maxTensors: number;
  private bytes = 0;
  /** Wall time with at least one read in flight (reads overlap), and how many are. */
  private readMs = 0;
  private inFlight = 0;
  private inFlightSince = 0;
  private waitMs = 0;
  private failure: Error | null = null;

  constructor(private readonly rt: GpuRuntime, private readonly store: WeightStore, opts: WeightStreamOptions) {
    const limit = rt.caps.limits.maxStorageBufferBindingSize;
    // A small checkpoint gets small slots: a tiny model must not pay for 256 MiB of staging.
    const wanted = Math.min(opts.slotBytes ?? 64 * 2 ** 20, Math.max(ALIGN * 4, alignUp(opts.totalBytes ?? Infinity, ALIGN)));
    this.slotBytes = Math.floor(Math.min(wanted, limit) / ALIGN) * ALIGN;
    if (this.slotBytes < ALIGN * 4) throw new Error(`WeightStream: slotBytes must be at least ${ALIGN * 4} (one 256-element block of f32), got ${opts.slotBytes}`);
    this.maxTensors = opts.maxTensors;
    this.rec = rt.recorder("load weights");
    this.counts = rt.zeros("u32", [Math.max(1, opts.maxTensors) * CONVERT_COUNTS_PER_SLOT], "load:loss-counts");
    for (let i = 0; i < (opts.slots ?? 4); i++) {
      const staging = rt.createBuffer(this.slotBytes, `load:staging${i}`, MAP_WRITE | COPY_SRC);
      const raw = rt.createBuffer(this.slotBytes, `load:raw${i}`);
      this.slots.push({ staging, raw, mapped: null, ready: this.mapForWriting(staging), reads: [], used: 0, pieces: [] });
    }
  }

  /**
   * Starts streaming tensor `name` into a new GPU tensor of `dtype` and returns it; its contents
   * are complete once finish() resolves. F32, F16 and BF16 convert to f32, f16 or bf16.
   */
  async upload(name: string, dtype: DType): Promise<Tensor> {
    const info = this.store.info(name);
    const from = GPU_DTYPE[info.dtype];
    if (!from) throw new ModelFileError(`${info.file}: tensor '${name}' has dtype ${info.dtype}; weights must be F32, F16 or BF16`);
    if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") throw new Error(`WeightStream: cannot load '${name}' as ${dtype}`);
    const numel = info.shape.reduce((a, b) => a * b, 1);
    const dst = new Tensor(this.rt.createBuffer(storageBytes(dtype, numel), name), dtype, info.shape, 0, name);
    this.created.push(dst);
    let countSlot = -1;
    if (from !== dtype) {
      const key = `${from}→${dtype}`;
      this.conversions[key] = (this.conversions[key] ?? 0) + 1;
      if (isCountedConversion(from, dtype)) {
        if (this.counted.length >= this.maxTensors) throw new Error(`WeightStream: more than maxTensors (${this.maxTensors}) counted conversions`);
        countSlot = this.counted.length;
        this.counted.push({ name, from, to: dtype, numel });
      }
    }
    const srcBytes = BYTES_PER_ELEMENT[from];
    // Whole 256-element blocks per piece: aligned offsets in staging, raw and destination alike.
    const perPiece = Math.floor(this.slotBytes / Math.max(srcBytes, BYTES_PER_ELEMENT[dtype]) / ALIGN) * ALIGN;
    for (let at = 0; at < numel; at += perPiece) {
      const elems = Math.min(perPiece, numel - at);
      const len = elems * srcBytes;
      const slot = await this.slotWithRoom(len);
      const view = new Uint8Array(slot.mapped!, slot.used, alignUp(len, 4));
      slot.reads.push(this.read(name, view.subarray(0, len), at * srcBytes));
      view.fill(0, len); // a trailing odd 16-bit element's word: zero, as rt.write pads
      slot.pieces.push({ dst, from, at, elems, stagingOffset: slot.used, countSlot });
      slot.used = alignUp(slot.used + len, ALIGN);
    }
    this.bytes += info.byteLength;
    return dst;
  }

  /** Waits for every upload and conversion, frees the staging memory and reports. */
  async finish(): Promise<LoadReport> {
    this.submit(this.slots[this.current]!);
    await Promise.all(this.slots.map((s) => s.ready));
    if (this.failure) throw this.failure;
    const counts = await this.rt.readU32(this.counts);
    const stagingBytes = this.slotBytes * this.slots.length;
    this.freeStaging();
    const losses = this.counted.map((c, i) => ({
      ...c,
      overflow: counts[CONVERT_COUNTS_PER_SLOT * i]!,
      zeroed: counts[CONVERT_COUNTS_PER_SLOT * i + 1]!,
      subnormal: counts[CONVERT_COUNTS_PER_SLOT * i + 2]!,
    }));
    return {
      seconds: (performance.now() - this.t0) / 1000, bytes: this.bytes, tensors: this.created.length,
      conversions: this.conversions, losses, stagingBytes, readSeconds: this.readMs / 1000, waitSeconds: this.waitMs / 1000,
    };
  }

  /** Frees everything, the uploaded tensors included (after an error, or a refused load). */
  async abort(): Promise<void> {
    // No read may still write into a mapped range when its buffer is destroyed.
    await Promise.allSettled(this.slots.flatMap((s) => s.reads));
    await Promise.all(this.slots.map((s) => s.ready));
    this.freeStaging();
    for (const t of this.created) this.rt.destroyBuffer(t.buffer);
    this.created.length = 0;
  }

  private freeStaging() {
    if (this.slots.length === 0) return; // freed already (abort after finish)
    for (const s of this.slots) {
      this.rt.destroyBuffer(s.staging);
      this.rt.destroyBuffer(s.raw);
    }
    this.slots.length = 0;
    this.rt.release(this.counts);
    this.rec.release();
  }

  /** Wall time with reads in flight, up to `now`. */
  private readWall(now: number): number {
    return this.readMs + (this.inFlight > 0 ? now - this.inFlightSince : 0);
  }

  /** One positioned read into a mapped range, timed as part of the reads' wall time. */
  private read(name: string, dst: Uint8Array, offset: number): Promise<void> {
    if (this.inFlight++ === 0) this.inFlightSince = performance.now();
    const done = this.store.readIntoAsync(name, dst, offset).finally(() => {
      if (--this.inFlight === 0) this.readMs += performance.now() - this.inFlightSince;
    });
    done.catch((e: Error) => { this.failure ??= e; }); // handled here; submit awaits it too
    return done;
  }

  private mapForWriting(staging: GPUBuffer): Promise<void> {
    return staging.mapAsync(MAP_MODE_WRITE).catch((e: Error) => {
      this.failure ??= e;
    });
  }

  /** The current slot, or the next one once the GPU is done with it, with `len` bytes free. */
  private async slotWithRoom(len: number): Promise<Slot> {
    let slot = this.slots[this.current]!;
    if (slot.used > 0 && slot.used + len > this.slotBytes) {
      this.submit(slot);
      this.current = (this.current + 1) % this.slots.length;
      slot = this.slots[this.current]!;
    }
    if (!slot.mapped) {
      // Waiting for the GPU: the part of the wait with no read in flight (reading is counted apart).
      const t0 = performance.now(), r0 = this.readWall(t0);
      await slot.ready;
      const t1 = performance.now();
      this.waitMs += t1 - t0 - (this.readWall(t1) - r0);
      if (this.failure) throw this.failure;
      slot.mapped = slot.staging.getMappedRange();
    }
    return slot;
  }

  /**
   * Hands a filled slot to the GPU once its reads have landed: direct copies, one copy of the
   * staged bytes to raw, the conversions; then maps it again (slot.ready).
   */
  private submit(slot: Slot) {
    if (slot.pieces.length === 0) return;
    const { pieces, reads } = slot;
    slot.mapped = null;
    slot.used = 0;
    slot.pieces = [];
    slot.reads = [];
    slot.ready = Promise.all(reads)
      .then(() => { this.record(slot, pieces); return this.mapForWriting(slot.staging); })
      .catch((e: Error) => { this.failure ??= e; });
  }

  private record(slot: Slot, pieces: Piece[]) {
    slot.staging.unmap();
    const rec = this.rec;
    const staging = new Tensor(slot.staging, "u32", [this.slotBytes / 4], 0, "load:staging");
    let convertedEnd = 0;
    for (const p of pieces) {
      const srcBytes = BYTES_PER_ELEMENT[p.from];
      if (p.from === p.dst.dtype) rec.copy(staging, p.dst, alignUp(p.elems * srcBytes, 4), p.stagingOffset, p.at * srcBytes);
      else convertedEnd = p.stagingOffset + alignUp(p.elems * srcBytes, 4);
    }
    if (convertedEnd > 0) {
      const raw = new Tensor(slot.raw, "u32", [this.slotBytes / 4], 0, "load:raw");
      rec.copy(staging, raw, convertedEnd);
      for (const p of pieces) {
        if (p.from === p.dst.dtype) continue;
        const src = new Tensor(slot.raw, p.from, [p.elems], p.stagingOffset, p.dst.label);
        const dst = new Tensor(p.dst.buffer, p.dst.dtype, [p.elems], p.at * BYTES_PER_ELEMENT[p.dst.dtype], p.dst.label);
        if (p.countSlot >= 0) convertTensorCounted(rec, src, dst, this.counts, p.countSlot);
        else convertTensor(rec, src, dst);
      }
    }
    rec.flush();
  }
}

/** One line on the load: time, bytes, throughput, what was converted on the GPU. */
export function formatLoadReport(r: LoadReport): string {
  const gb = r.bytes / 1e9;
  const conv = Object.entries(r.conversions).map(([k, n]) => `${k} ×${n}`).join(", ");
  return `${r.seconds.toFixed(2)} s for ${r.tensors} tensors, ${gb.toFixed(2)} GB (${(gb / Math.max(r.seconds, 1e-9)).toFixed(2)} GB/s; ` +
    `reading ${r.readSeconds.toFixed(2)} s, waiting for the GPU ${r.waitSeconds.toFixed(2)} s)` + (conv ? `; converted on the GPU: ${conv}` : "");
}

/** A summary of precision lost to narrowing (flushed to zero, subnormal), or null when none was. */
export function formatUnderflow(losses: readonly TensorLoss[]): string | null {
  const hit = losses.filter((l) => l.zeroed + l.subnormal > 0);
  if (!hit.length) return null;
  const zeroed = hit.reduce((a, l) => a + l.zeroed, 0), sub = hit.reduce((a, l) => a + l.subnormal, 0);
  const total = hit.reduce((a, l) => a + l.numel, 0);
  const worst = hit.reduce((a, l) => ((l.zeroed + l.subnormal) / l.numel > (a.zeroed + a.subnormal) / a.numel ? l : a));
  const pct = (x: number, n: number) => `${((100 * x) / n).toPrecision(2)}%`;
  const kinds = [...new Set(hit.map((l) => `${l.from}→${l.to}`))].join(", ");
  return `underflow in ${hit.length} tensor(s) (${kinds}): ${zeroed.toLocaleString("en-US")} values flushed to zero, ` +
    `${sub.toLocaleString("en-US")} became subnormal (${pct(zeroed + sub, total)} of their values; most: '${worst.name}', ${pct(worst.zeroed + worst.subnormal, worst.numel)})`;
}
