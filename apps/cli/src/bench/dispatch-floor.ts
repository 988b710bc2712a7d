/**
 * What one dispatch costs when it does almost nothing: decode at batch 1 runs ~13 dispatches a
 * layer, most of them tiny (RMSNorm of one row, a residual add, RoPE of one token), and the 1B
 * decode profile gives each 9-12 µs of GPU time. This says whether that is the kernels or the
 * per-dispatch floor of Dawn's Vulkan backend (barriers between dependent dispatches, the pass).
 * One JSON line per case:
 *   {"op":"dispatch-floor", "case", "dispatches", "us", "cpu_us", "prepared_us"} (µs per dispatch: timed())
 * Cases: a chain of dependent tiny dispatches (each reads what the last wrote: Dawn puts a barrier
 * between them), the same count over distinct buffers (no dependencies), the dependent chain
 * timed per dispatch as the profiler does (one pass each, timestamps), and the decode shapes'
 * RMSNorm and GEMVs (1B: 2048 wide) dependent and independent.
 *   bun apps/cli/src/bench/dispatch-floor.ts [--count 2000] [--width 2048]
 */
import { type Recorder, type Tensor, axpby, gemv, getRuntime, rmsnormForward } from "@tuneloom/kernels";
import { randn, toF16Bits } from "@tuneloom/kernels/host-data.ts";
import { warmClocks } from "./timing.ts";

const argv = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const rt = await getRuntime();
const count = opt("--count", rt.caps.isSoftware ? 50 : 1000);
const C = opt("--width", 2048);

const perDispatch = (ms: number, n: number) => +((ms * 1000) / n).toFixed(2);
const line = (kase: string, dispatches: number, ms: number, more: Record<string, number> = {}) =>
  console.log(JSON.stringify({ op: "dispatch-floor", case: kase, dispatches, us: perDispatch(ms, dispatches), ...more }));

/**
 * `count` dispatches recorded by `one(rec, i)`, submitted once to warm up, then timed three ways
 * (µs a dispatch): `us` a replayed submit and its wait (the recording encoded again, as decode did
 * before session 16's pre-encoding); `cpu_us` that submit's own CPU time (encode + queue.submit);
 * `prepared_us` a buffer encoded ahead (Recorder.prepare) submitted and waited for: the GPU's share.
 */
async function timed(kase: string, one: (rec: Recorder, i: number) => void) {
  const all = (rec: Recorder) => { for (let i = 0; i < count; i++) one(rec, i); };
  await warmClocks(rt, all, 300);
  const rec = rt.recorder("dispatch-floor");
  all(rec);
  rec.submit();
  await rt.sync();
  const t0 = performance.now();
  rec.submit();
  const t1 = performance.now();
  await rt.sync();
  const t2 = performance.now();
  const prepared = rec.prepare();
  const t3 = performance.now();
  rec.submit(prepared);
  await rt.sync();
  const t4 = performance.now();
  rec.release();
  line(kase, count, t2 - t0, { cpu_us: perDispatch(t1 - t0, count), prepared_us: perDispatch(t4 - t3, count) });
}

const x = rt.upload("f32", [C], randn(C));
const y = rt.upload("f32", [C], randn(C));
const many: Tensor[] = Array.from({ length: count }, () => rt.upload("f32", [C], randn(C)));
// 1. y = 0.5·x + 0.5·y over and over (each reads the y the last one wrote)
await timed(`axpby ${C} dependent`, (rec) => axpby(rec, x, y, 0.5, 0.5));
// 2. the same into `count` distinct buffers (no dispatch reads another's output)
await timed(`axpby ${C} independent`, (rec, i) => axpby(rec, x, many[i]!, 0.5, 0.5));
// 3. the dependent chain as the profiler times it: one pass with timestamps per dispatch
if (rt.caps.timestampQuery) {
  const rec = rt.recorder("dispatch-floor profiled");
  for (let i = 0; i < count; i++) axpby(rec, x, y, 0.5, 0.5);
  rt.profiled = [];
  const t0 = performance.now();
  rec.submit();
  const timings = (await Promise.all(rt.profiled)).flat();
  const wall = performance.now() - t0;
  rt.profiled = null;
  rec.release();
  const gpuMs = timings.reduce((s, t) => s + t.ms, 0);
  line(`axpby ${C} dependent, profiled (timestamps' sum)`, count, gpuMs);
  line(`axpby ${C} dependent, profiled (wall)`, count, wall);
}
// 4. decode's RMSNorm of one row, dependent (y in, y out) and not
const g = rt.upload("f32", [C], randn(C));
const rstd = rt.empty("f32", [1]);
const xr = rt.upload("f32", [1, C], randn(C)), yr = rt.empty("f32", [1, C]);
await timed(`rmsnorm 1x${C} chain`, (rec, i) => rmsnormForward(rec, i % 2 ? yr : xr, g, i % 2 ? xr : yr, rstd, 1e-5));
// 5. decode's GEMVs at 1B (C = 2048) and 8B shapes, each weight from its own copy as layers are (enough
// copies to defeat L2), in a dependent chain (every product writes the same y: a barrier between them),
// with the rows of W per thread the wrapper picks and each of 1, 2, 4 (which defaultRows should pick)
const shapes: [number, number][] = rt.caps.isSoftware ? [[C, C]] :
  [[C, C], [C / 4, C], [4 * C, C], [C, 4 * C], [4096, 4096], [1024, 4096], [14336, 4096], [4096, 14336]];
for (const [N, K] of shapes) {
  const host = toF16Bits(randn(N * K, 0.02));
  const copies = Math.min(64, Math.max(2, Math.ceil((3 << 30) / (N * K * 2) / 8)));
  const ws = Array.from({ length: copies }, () => rt.upload("f16", [N, K], host));
  const xin = rt.upload("f32", [1, K], randn(K)), yout = rt.empty("f32", [1, N]);
  for (const rows of [undefined, 1, 2, 4] as const) {
    await timed(`gemv 1x${N}x${K} f16 rows ${rows ?? "auto"}, ${copies} weights round robin`, (rec, i) =>
      gemv(rec, { a: xin, b: ws[i % copies]!, c: yout, M: 1, N, K, transB: true }, rows ? { rows } : undefined));
  }
  rt.release(...ws, xin, yout);
}
rt.release(x, y, ...many, g, rstd, xr, yr);
rt.trimPool();
