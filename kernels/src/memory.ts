/**
 * Accounting of every GPU buffer the runtime allocates, plus a size-bucketed pool for reuse.
 * `liveBytes` counts what is allocated from the device (pooled buffers included: they still
 * hold device memory); `inUseBytes` only what callers hold. Benchmarks and the trainer report
 * `peakBytes` from here.
 */
export class MemoryTracker {
  liveBytes = 0;
  peakBytes = 0;
  inUseBytes = 0;
  peakInUseBytes = 0;
  buffers = 0;

  allocated(bytes: number) {
    this.liveBytes += bytes;
    this.buffers++;
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
  }
  freed(bytes: number) {
    this.liveBytes -= bytes;
    this.buffers--;
  }
  acquired(bytes: number) {
    this.inUseBytes += bytes;
    if (this.inUseBytes > this.peakInUseBytes) this.peakInUseBytes = this.inUseBytes;
  }
  released(bytes: number) {
    this.inUseBytes -= bytes;
  }
  /** Start a new peak window (e.g. per benchmark) from the current level. */
  resetPeak() {
    this.peakBytes = this.liveBytes;
    this.peakInUseBytes = this.inUseBytes;
  }
  snapshot() {
    return {
      liveBytes: this.liveBytes,
      peakBytes: this.peakBytes,
      inUseBytes: this.inUseBytes,
      peakInUseBytes: this.peakInUseBytes,
      buffers: this.buffers,
    };
  }
}

/** Pool buckets: sizes rounded up to 1/8-octave steps above 64 KiB, so reuse wastes at most ~9%. */
export function poolBucketSize(bytes: number): number {
  if (bytes <= 256) return 256;
  if (bytes <= 65536) return 2 ** Math.ceil(Math.log2(bytes));
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / 8;
  return Math.ceil(bytes / step) * step;
}
