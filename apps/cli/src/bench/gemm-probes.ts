/**
 * Probes of the staged GEMM's copy, each a few milliseconds of GPU time (session 17's research,
 * docs/kernels.md): which of its costs a new tile design has to remove.
 *   bun apps/cli/src/bench/gemm-probes.ts [--iters 2048]
 * One JSON line per case, `{"op":"gemm_probe", "probe", "form", "gbs", "ms"}` (gbs: bytes moved per
 * second over the whole GPU, GB/s):
 *   stores  every thread writes two 16-byte chunks into workgroup memory per round, at the unrolled
 *           copy's addresses (rows of 40 halves, a thread per 8-half column chunk), between two
 *           barriers: as eight f16 stores (`f16`, staged-stores.ts chunkStore, what the GEMM does),
 *           four u32 stores (`u32`), one vec4<u32> store (`vec4`), or none (`none`: barriers and
 *           the read-back alone). f16 ≈ vec4: the stores are not the lever; f16 ≈ u32 ≪ vec4: the
 *           compiler pairs the halves; f16 ≪ u32: each half is its own store.
 *   loads   every thread loads `D` 16-byte chunks per round from an 8 MiB buffer (L2-resident, the
 *           GEMM's row-per-thread pattern), all issued before any is used (`D` = 2, 4, 8, 16), each
 *           under a bounds test as in the GEMM's copy (`guarded`) or not (`free`): bandwidth
 *           against bytes in flight, and whether the tests keep the loads from batching.
 * 256 threads a workgroup, 1,056 workgroups. Results (the stores' read-back sums) land in a buffer
 * so nothing is optimised away; their values mean nothing.
 */
import { type GpuRuntime, getRuntime } from "@tuneloom/kernels";
import type { KernelSource } from "@tuneloom/kernels/runtime.ts";
import { chunkStore } from "@tuneloom/kernels/staged-stores.ts";
import { timeGpu, warmClocks } from "./timing.ts";

const WORKGROUPS = 1056;
const THREADS = 256;
const ROW = 40; // halves a staged row (K slice 32 + 8 of padding), as matmul-tc-staged.ts
export type StoreForm = "f16" | "u32" | "vec4" | "none";
export type LoadForm = "guarded" | "free";

/** The stores probe: two chunks a thread a round, rows of ROW halves, 4 chunks a row (BK = 32). */
export function storeProbeSource(form: StoreForm): KernelSource {
  const halves = 2 * (THREADS / 4) * ROW; // 128 rows
  const decl = { f16: `array<f16, ${halves}>`, u32: `array<u32, ${halves / 2}>`, vec4: `array<vec4<u32>, ${halves / 8}>`, none: `array<u32, ${halves / 2}>` }[form];
  const store = (w: string, at: string) => ({
    f16: chunkStore("W", at, w),
    u32: `W[${at} / 2u] = ${w}.x; W[${at} / 2u + 1u] = ${w}.y; W[${at} / 2u + 2u] = ${w}.z; W[${at} / 2u + 3u] = ${w}.w;`,
    vec4: `W[${at} / 8u] = ${w};`,
    none: "",
  })[form];
  const readBack = { f16: "f32(W[(lid * 7u + it) % HALVES])", u32: "f32(W[(lid * 7u + it) % (HALVES / 2u)] & 1023u)", vec4: "f32(W[(lid * 7u + it) % (HALVES / 8u)].x & 1023u)", none: "f32(W[(lid * 7u + it) % (HALVES / 2u)] & 1023u)" }[form];
  return {
    name: `gemm_probe_stores_${form}`,
    code: `enable f16;
override ITERS: u32 = 1024u;
const HALVES = ${halves}u;
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
var<workgroup> W: ${decl};
@compute @workgroup_size(${THREADS})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  var w0 = src[(wg.x * ${THREADS}u + lid) % 4096u];
  var w1 = src[(wg.x * ${THREADS}u + lid + 1u) % 4096u];
  let at = (lid / 4u) * ${ROW}u + (lid % 4u) * 8u; // row lid / 4, chunk lid % 4 (the unrolled copy's)
  var acc = 0.0;
  for (var it = 0u; it < ITERS; it++) {
    workgroupBarrier();
    ${store("w0", "at")}
    ${store("w1", `at + ${(THREADS / 4) * ROW}u`)}
    workgroupBarrier();
    acc += ${readBack};
    w0 = w0 ^ vec4<u32>(it); w1 = w1 ^ vec4<u32>(it); // new values each round
  }
  dst[wg.x * ${THREADS}u + lid] = acc;
}
`,
  };
}

/** The loads probe: D chunks a thread a round from rows of an 8 MiB buffer, then one XOR each. */
export function loadProbeSource(form: LoadForm, depth: number): KernelSource {
  const ids = Array.from({ length: depth }, (_, i) => i);
  // Thread t reads chunk t % 8 of row t / 8 (+ 32 rows a load): 8 chunks = 128 bytes a row, the
  // lda of a 4096-wide f16 matrix between rows, a 128-row panel per workgroup and round.
  const load = (i: number) => form === "guarded"
    ? `var v${i} = vec4<u32>(); if (row + ${32 * i}u < M && k + c8 * 8u < K) { v${i} = src[((row + ${32 * i}u) * LDA + k) / 8u + c8]; }`
    : `let v${i} = src[((row + ${32 * i}u) * LDA + k) / 8u + c8];`;
  return {
    name: `gemm_probe_loads_${form}_d${depth}`,
    code: `override ITERS: u32 = 1024u;
override M: u32 = 1024u;  // rows of the panel (the bounds the guarded form tests)
override K: u32 = 4096u;
const LDA = 4096u;
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>; // 1024 × 4096 halves (8 MiB)
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@compute @workgroup_size(${THREADS})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = ((wg.x * 32u) % 1024u + lid / 8u) % (1024u - ${32 * depth}u); // keeps row + 32·(D − 1) inside
  let c8 = lid % 8u;
  var x = vec4<u32>();
  for (var it = 0u; it < ITERS; it++) {
    let k = (it * 64u) % K;
${ids.map((i) => `    ${load(i)}`).join("\n")}
    x = x ^ ${ids.map((i) => `v${i}`).join(" ^ ")};
  }
  dst[wg.x * ${THREADS}u + lid] = x.x ^ x.y ^ x.z ^ x.w;
}
`,
  };
}

export async function* gemmProbes(rt: GpuRuntime, iters: number) {
  const src = rt.upload("u32", [1024 * 4096 / 2], Uint32Array.from({ length: 1024 * 4096 / 2 }, (_, i) => (i * 2654435761) >>> 0));
  const dst = rt.empty("f32", [WORKGROUPS * THREADS]);
  const cases: { probe: "stores" | "loads"; form: string; source: KernelSource; bytes: number }[] = [
    ...(["f16", "u32", "vec4", "none"] as const).map((form) => ({ probe: "stores" as const, form, source: storeProbeSource(form), bytes: WORKGROUPS * THREADS * 32 * iters })),
    ...([2, 4, 8, 16] as const).flatMap((d) => (["guarded", "free"] as const).map((form) => ({ probe: "loads" as const, form: `${form}-d${d}`, source: loadProbeSource(form, d), bytes: WORKGROUPS * THREADS * 16 * d * iters }))),
  ];
  for (const c of cases) {
    try {
      const pipeline = rt.pipeline(c.source, { ITERS: iters });
      const record = (rec: ReturnType<GpuRuntime["recorder"]>) => rec.dispatch(c.source.name, pipeline, null, [src, dst], [WORKGROUPS]);
      await warmClocks(rt, record, 200);
      let best = Infinity;
      for (let rep = 0; rep < 3; rep++) best = Math.min(best, await timeGpu(rt, record, 3));
      yield { op: "gemm_probe", probe: c.probe, form: c.form, iters, ms: +best.toFixed(4), gbs: +(c.bytes / best / 1e6).toFixed(1) };
    } catch (e) {
      yield { op: "gemm_probe", probe: c.probe, form: c.form, error: String((e as Error).message).slice(0, 300) };
    }
  }
  rt.release(src, dst);
}

if (import.meta.main) {
  const i = process.argv.indexOf("--iters");
  const iters = i > 0 ? Number(process.argv[i + 1]) : 2048;
  if (!Number.isInteger(iters) || iters < 1) throw new Error(`--iters must be a positive integer, got ${process.argv[i + 1]}`);
  const rt = await getRuntime();
  if (!rt.device.features.has("shader-f16")) {
    console.error("gemm-probes: this device has no shader-f16; the f16 store form cannot run");
    process.exit(2);
  }
  for await (const line of gemmProbes(rt, iters)) console.log(JSON.stringify(line));
}
