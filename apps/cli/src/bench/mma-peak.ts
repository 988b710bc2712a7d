/**
 * The ceiling of WGSL subgroup matrices on this GPU, without a GEMM around them:
 *   bun apps/cli/src/bench/mma-peak.ts [--iters 4096]
 * One JSON line per variant, `{"op":"mma_peak", "variant", "tile", "tflops", "ms"}`:
 *   regs   each subgroup keeps TM left and TN right 16×16 f16 matrices in registers and runs
 *          `iters` rounds of TM·TN multiply-accumulates into f32 result matrices: the MMA
 *          issue rate alone.
 *   smem   the same, but every round loads its TM + TN matrices from workgroup memory first
 *          (the staged GEMM's product stage: workgroup memory → subgroup matrices → MMA), with
 *          the staged kernel's padded row stride (BK + 8 halves: 40 for K slices of 32).
 *   smem-k64  the same at the stride of K slices of 64 (72 halves): session 11's 8-warp x·Wᵀ tile
 *          with those slices lost most in its product stage, though `smem` ran at 589-624.
 * 4 subgroups per workgroup, 8 workgroups per SM-ish (1,056 workgroups). The staged GEMM reached
 * 150-189 TFLOP/s on an H100 (dense f16 peak ~990 with wgmma; mma.sync-class paths ~60-70% of it):
 * if `regs` is near the GEMM, the subgroup-matrix path itself is the ceiling; if `smem` is, the
 * workgroup-memory loads are; if both are far above it, the GEMM's staging and pipelining are.
 */
import { type GpuRuntime, getRuntime, hasTensorCoreMatmul } from "@tuneloom/kernels";
import type { KernelSource } from "@tuneloom/kernels/runtime.ts";
import { timeGpu, warmClocks } from "./timing.ts";

const WORKGROUPS = 1056;
const SUBGROUPS = 4;
type Variant = "regs" | "smem" | "smem-k64";
/** Halves per staged row: BK + 8 of padding, as matmul-tc-staged.ts (BK = 32, or 64 for smem-k64). */
const strideOf = (variant: Variant) => (variant === "smem-k64" ? 72 : 40);

/** The kernel of one variant: TM×TN result matrices per subgroup, `iters` rounds (an override). */
export function mmaPeakSource(variant: Variant, tm: number, tn: number): KernelSource {
  const STRIDE = strideOf(variant);
  // Workgroup-memory regions, one per subgroup (smem-k64: two, shared by pairs of subgroups, so
  // that 4×4 tiles at stride 72 fit 48 KB).
  const REGIONS = variant === "smem-k64" ? 2 : SUBGROUPS;
  const region = REGIONS === SUBGROUPS ? "sg" : `(sg % ${REGIONS}u)`;
  const ids = (n: number) => Array.from({ length: n }, (_, i) => i);
  const pairs = ids(tm).flatMap((i) => ids(tn).map((j) => [i, j] as const));
  const left = (i: number, from: string) => `subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(${from}, ${from === "&src" ? `${i * 256}u, 16u` : `${region} * ${tm * 16 * STRIDE}u + ${i * 16 * STRIDE}u + (it & 1u) * 16u, ${STRIDE}u`})`;
  const right = (j: number, from: string) => `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(${from}, ${from === "&src" ? `${(tm + j) * 256}u, 16u` : `${region} * ${tn * 16 * STRIDE}u + ${j * 16 * STRIDE}u + (it & 1u) * 16u, ${STRIDE}u`})`;
  const body = variant === "regs"
    ? `${ids(tm).map((i) => `  let l${i} = ${left(i, "&src")};`).join("\n")}
${ids(tn).map((j) => `  let q${j} = ${right(j, "&src")};`).join("\n")}
  for (var it = 0u; it < ITERS; it++) {
${pairs.map(([i, j]) => `    acc${i}${j} = subgroupMatrixMultiplyAccumulate(l${i}, q${j}, acc${i}${j});`).join("\n")}
  }`
    : `  for (var e = lid; e < ${REGIONS * Math.max(tm, tn) * 16 * STRIDE}u; e += ${32 * SUBGROUPS}u) {
    As[e] = src[e % 4096u];
    Bs[e] = src[(e + 7u) % 4096u];
  }
  workgroupBarrier();
  for (var it = 0u; it < ITERS; it++) {
${ids(tm).map((i) => `    let l${i} = ${left(i, "&As")};`).join("\n")}
${ids(tn).map((j) => `    let q${j} = ${right(j, "&Bs")};`).join("\n")}
${pairs.map(([i, j]) => `    acc${i}${j} = subgroupMatrixMultiplyAccumulate(l${i}, q${j}, acc${i}${j});`).join("\n")}
  }`;
  const code = `enable f16;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
override ITERS: u32 = 1024u;
@group(0) @binding(0) var<storage, read> src: array<f16>;     // 4,096 random halves
@group(0) @binding(1) var<storage, read_write> dst: array<f32>; // 16 result slots of 16×16 per subgroup
${variant !== "regs" ? `var<workgroup> As: array<f16, ${REGIONS * Math.max(tm, tn) * 16 * STRIDE}>;
var<workgroup> Bs: array<f16, ${REGIONS * Math.max(tm, tn) * 16 * STRIDE}>;` : ""}
@compute @workgroup_size(${32 * SUBGROUPS})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let sg = lid / 32u;
${pairs.map(([i, j]) => `  var acc${i}${j} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
${body}
  // Every accumulator reaches memory, so none of the products can be dropped.
${pairs.map(([i, j], n) => `  subgroupMatrixStore<row_major>(&dst, ((wg.x * ${SUBGROUPS}u + sg) * 16u + ${n}u) * 256u, acc${i}${j}, 16u);`).join("\n")}
}
`;
  return { name: `mma_peak_${variant.replace("-", "_")}_${tm}x${tn}`, code };
}

export async function* mmaPeak(rt: GpuRuntime, iters: number) {
  const src = rt.upload("f16", [4096], Uint16Array.from({ length: 4096 }, (_, i) => 0x3000 + (i % 1024))); // small positive halves
  const dst = rt.empty("f32", [WORKGROUPS * SUBGROUPS * 16 * 256]);
  for (const variant of ["regs", "smem", "smem-k64"] as const) {
    for (const [tm, tn] of [[2, 2], [2, 4], [4, 4]] as const) {
      const source = mmaPeakSource(variant, tm, tn);
      try {
        const pipeline = rt.pipeline(source, { ITERS: iters });
        const record = (rec: ReturnType<GpuRuntime["recorder"]>) => rec.dispatch(source.name, pipeline, null, [src, dst], [WORKGROUPS]);
        await warmClocks(rt, record, 300);
        let best = Infinity;
        for (let rep = 0; rep < 3; rep++) best = Math.min(best, await timeGpu(rt, record, 5));
        const flops = WORKGROUPS * SUBGROUPS * iters * tm * tn * 2 * 16 ** 3;
        yield { op: "mma_peak", variant, tile: `${tm}x${tn}`, iters, ms: +best.toFixed(4), tflops: +(flops / best / 1e9).toFixed(1) };
      } catch (e) {
        yield { op: "mma_peak", variant, tile: `${tm}x${tn}`, error: String((e as Error).message).slice(0, 300) };
      }
    }
  }
}

if (import.meta.main) {
  const i = process.argv.indexOf("--iters");
  const iters = i > 0 ? Number(process.argv[i + 1]) : 4096;
  if (!Number.isInteger(iters) || iters < 1) throw new Error(`--iters must be a positive integer, got ${process.argv[i + 1]}`);
  const rt = await getRuntime();
  if (!hasTensorCoreMatmul(rt)) {
    console.error("mma-peak: this GPU has no subgroup matrices (f16 16×16); nothing to measure");
    process.exit(2);
  }
  for await (const line of mmaPeak(rt, iters)) console.log(JSON.stringify(line));
}
