import type { GpuRuntime, Recorder } from "@tuneloom/kernels";

/**
 * GPU time of `record` (one or more dispatches), measured as wall time of `iters` copies in a
 * single submit, after a warm-up submit that also compiles pipelines. Returns ms per copy. Both
 * are recorded before the warm-up is submitted, so the timed submit follows it without the GPU
 * idling while the host records (idle GPUs drop their clocks: warmClocks). Session 11's sweep saw
 * the same configuration 1.4-3× apart between its two repetitions, the copies then recorded in
 * that gap; whether the gap was the cause, the next sweep's repetitions will tell.
 */
export async function timeGpu(rt: GpuRuntime, record: (rec: Recorder) => void, iters: number): Promise<number> {
  const warm = rt.recorder("bench-warmup");
  record(warm);
  const rec = rt.recorder("bench");
  for (let i = 0; i < iters; i++) record(rec);
  warm.submit();
  await rt.sync();
  warm.release();
  const t0 = performance.now();
  rec.submit();
  await rt.sync();
  const ms = (performance.now() - t0) / iters;
  rec.release();
  return ms;
}

/**
 * Keeps the GPU busy with `record` for about `ms` of wall time. GPUs drop their clocks while idle
 * (the host generating a new shape's data is enough): measured on an H100, the first ~0.2 s of
 * GEMMs after such a pause ran at a third of the speed of the same GEMM a moment later (45 against
 * 168 TFLOP/s), which had ranked tile configurations by their place in the sweep order.
 */
export async function warmClocks(rt: GpuRuntime, record: (rec: Recorder) => void, ms = 300): Promise<void> {
  const t0 = performance.now();
  let iters = 1;
  while (performance.now() - t0 < ms) {
    const rec = rt.recorder("bench-clock-warmup");
    for (let i = 0; i < iters; i++) record(rec);
    rec.submit();
    await rt.sync();
    rec.release();
    iters = Math.min(iters * 2, 64);
  }
}

/** Relative error on a sample of output entries: out[i] vs ref(i) computed in float64. */
export function sampledRelError(out: Float32Array, ref: (i: number) => number, samples: number, seed = 1): number {
  let num = 0, den = 0, s = seed >>> 0;
  for (let j = 0; j < samples; j++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const i = s % out.length;
    const r = ref(i), o = out[i]!;
    if (!Number.isFinite(o)) return Infinity;
    num += (o - r) ** 2;
    den += r * r;
  }
  return Math.sqrt(num / den);
}

/**
 * timeGpu with the copy count chosen for about `targetMs` of GPU time: one timed copy first
 * (after the warm-up), then as many copies as fit `targetMs` in one submit (at most
 * `maxIters`). An op slower than targetMs/2 keeps its single-copy time.
 */
export async function timeGpuAdaptive(rt: GpuRuntime, record: (rec: Recorder) => void, targetMs: number, maxIters = 1000): Promise<number> {
  const once = await timeGpu(rt, record, 1);
  const iters = Math.min(maxIters, Math.floor(targetMs / Math.max(once, 1e-3)));
  return iters < 2 ? once : timeGpu(rt, record, iters);
}
