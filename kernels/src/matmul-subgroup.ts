/**
 * Tensor-core matmul through Dawn's subgroup matrices (chromium_experimental_subgroup_matrix):
 * f16 operands staged in workgroup memory, f32 accumulation. The forms a frozen 16-bit linear
 * layer needs in training and inference:
 *   y  = x · Wᵀ   (TRANS_B, W (N, K))       forward
 *   dx = dy · W   (W (K, N))                input gradient
 * A (activations) is f32 in global memory and rounded to f16 while staged; B is f16, packed two
 * per u32 word. C = alpha·A·op(B) (+ bias) + beta·C in f32.
 *
 * Tiling: a workgroup is one subgroup of 32 lanes (so every matrix offset is workgroup-uniform,
 * as WGSL's uniformity rules demand) owning a 64×64 tile of C = 4×4 result matrices of 16×16.
 * K advances 32 per stage through workgroup memory.
 * Only available where the adapter lists an f16→f32 16×16×16 subgroup-matrix config; callers
 * use `matmulAuto`, which falls back to the portable kernel.
 */
import { cdiv, Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import { matmul, type MatmulArgs } from "./matmul.ts";

const BM = 64, BN = 64, BK = 32, PAD = 8;
const AS = BK + PAD; // row stride of the staged A tile [m][k] (halves)
const LANES = 32; // one subgroup per workgroup: every matrix offset is then workgroup-uniform, as WGSL requires

function source(transB: boolean): KernelSource {
  // B staged as [n][k] (transB: contiguous along k) or [k][n] (contiguous along n).
  const bStride = transB ? BK + PAD : BN + PAD;
  const bTileHalves = transB ? BN * bStride : BK * bStride;
  const tiles: string[] = [];
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) tiles.push(`${i}${j}`);
  const decl = tiles.map((t) => `  var acc${t}: subgroup_matrix_result<f32, 16, 16>;`).join("\n");
  const rightLoad = (j: number) =>
    transB
      ? `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>>(&Bs, ${j * 16}u * ${bStride}u + kk, true, ${bStride}u)`
      : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>>(&Bs, kk * ${bStride}u + ${j * 16}u, false, ${bStride}u)`;
  const mma = [0, 1, 2, 3]
    .map((i) => `      let l${i} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>>(&As, ${i * 16 * AS}u + kk, false, ${AS}u);`)
    .concat([0, 1, 2, 3].map((j) => `      let r${j} = ${rightLoad(j)};`))
    .concat(tiles.map((t) => `      acc${t} = subgroupMatrixMultiplyAccumulate(l${t[0]}, r${t[1]}, acc${t});`))
    .join("\n");
  const epilogue = tiles
    .map(
      (t) => `  subgroupMatrixStore(&scratch, 0u, acc${t}, false, 16u);
  workgroupBarrier();
  epilogueTile(lane, row0 + ${Number(t[0]) * 16}u, col0 + ${Number(t[1]) * 16}u, cBase);
  workgroupBarrier();`,
    )
    .join("\n");
  // B staging: BN×BK (transB) or BK×BN halves = 2048, read as 1024 u32 words, 32 per lane.
  const stageB = transB
    ? `    for (var i = 0u; i < 32u; i++) {
      let w = lane + ${LANES}u * i;        // word index in the [n][k/2] tile
      let n = w / ${BK / 2}u; let k2 = (w % ${BK / 2}u) * 2u;
      let gn = col0 + n; let gk = k0 + k2;
      var v = vec2<f32>(0.0);
      if (gn < p.N && gk < p.K) {
        v = unpack2x16float(b[(bBase + gn * p.ldb + gk) >> 1u]);
        if (gk + 1u >= p.K) { v.y = 0.0; }
      }
      Bs[n * ${bStride}u + k2] = f16(v.x);
      Bs[n * ${bStride}u + k2 + 1u] = f16(v.y);
    }`
    : `    for (var i = 0u; i < 32u; i++) {
      let w = lane + ${LANES}u * i;        // word index in the [k][n/2] tile
      let k = w / ${BN / 2}u; let n2 = (w % ${BN / 2}u) * 2u;
      let gk = k0 + k; let gn = col0 + n2;
      var v = vec2<f32>(0.0);
      if (gk < p.K && gn < p.N) {
        v = unpack2x16float(b[(bBase + gk * p.ldb + gn) >> 1u]);
        if (gn + 1u >= p.N) { v.y = 0.0; }
      }
      Bs[k * ${bStride}u + n2] = f16(v.x);
      Bs[k * ${bStride}u + n2 + 1u] = f16(v.y);
    }`;
  const code = `enable f16;
enable chromium_experimental_subgroup_matrix;

override HAS_BIAS: bool = false;

struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, strideA: u32, strideB: u32,
  strideC: u32, alpha: f32, beta: f32, _pad: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> As: array<f16, ${BM * AS}>;
var<workgroup> Bs: array<f16, ${bTileHalves}>;
var<workgroup> scratch: array<f32, 256>;

// Applies alpha, bias and beta to one 16×16 result tile staged in scratch, bounds-checked.
fn epilogueTile(lane: u32, r0: u32, c0: u32, cBase: u32) {
  for (var e = lane; e < 256u; e += ${LANES}u) {
    let r = r0 + e / 16u; let col = c0 + e % 16u;
    if (r < p.M && col < p.N) {
      let idx = cBase + r * p.ldc + col;
      var v = p.alpha * scratch[e];
      if (HAS_BIAS) { v += bias[col]; }
      if (p.beta != 0.0) { v += p.beta * c[idx]; }
      c[idx] = v;
    }
  }
}

@compute @workgroup_size(${LANES}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let row0 = wg.y * ${BM}u;
  let col0 = wg.x * ${BN}u;
  let aBase = wg.z * p.strideA;
  let bBase = wg.z * p.strideB;
  let cBase = wg.z * p.strideC;
${decl}
  for (var k0 = 0u; k0 < p.K; k0 += ${BK}u) {
    // A tile: 64×32 f32 → f16, 64 elements per lane along k (contiguous).
    for (var i = 0u; i < 64u; i++) {
      let e = lane + ${LANES}u * i;
      let m = e / ${BK}u; let k = e % ${BK}u;
      let gm = row0 + m; let gk = k0 + k;
      var v = 0.0;
      if (gm < p.M && gk < p.K) { v = a[aBase + gm * p.lda + gk]; }
      As[m * ${AS}u + k] = f16(v);
    }
${stageB}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk += 16u) {
${mma}
    }
    workgroupBarrier();
  }
${epilogue}
}
`;
  return { name: `matmul_subgroup_f16${transB ? "_tB" : ""}`, code };
}

const sources = new Map<boolean, KernelSource>();

/** True when this device can run the tensor-core path (f16 16×16×16 → f32, subgroup size 32). */
export function hasTensorCoreMatmul(rt: GpuRuntime): boolean {
  const c = rt.caps;
  return (
    c.subgroupMatrix && c.shaderF16 && c.subgroupMinSize <= 32 && c.subgroupMaxSize >= 32 &&
    c.subgroupMatrixConfigs.some((x) => x.M === 16 && x.N === 16 && x.K === 16 && x.componentType === "f16" && x.resultComponentType === "f32") &&
    c.limits.maxComputeWorkgroupStorageSize >= 16 * 1024
  );
}

/** Records the tensor-core matmul. Requires B in f16 with an even leading dimension, A not transposed. */
export function matmulTensorCore(rec: Recorder, args: MatmulArgs) {
  const { a, b, c, M, N, K } = args;
  const transB = args.transB ?? false;
  if (args.transA) throw new Error("matmulTensorCore: transposed A is not supported (use matmul)");
  expectTensor("matmulTensorCore", "a", a, "f32");
  expectTensor("matmulTensorCore", "b", b, "f16");
  expectTensor("matmulTensorCore", "c", c, "f32");
  const batch = args.batch ?? 1;
  const lda = args.lda ?? K;
  const ldb = args.ldb ?? (transB ? K : N);
  const ldc = args.ldc ?? N;
  const strideB = args.strideB ?? K * N;
  if (ldb % 2 !== 0 || strideB % 2 !== 0) throw new Error("matmulTensorCore: B's leading dimension and batch stride must be even");
  let s = sources.get(transB);
  if (!s) sources.set(transB, (s = source(transB)));
  const pipeline = rec.rt.pipeline(s, { HAS_BIAS: args.bias ? 1 : 0 });
  const params = new Params(12)
    .u32(M).u32(N).u32(K).u32(lda)
    .u32(ldb).u32(ldc).u32(args.strideA ?? M * K).u32(strideB)
    .u32(args.strideC ?? M * N).f32(args.alpha ?? 1).f32(args.beta ?? 0).u32(0);
  rec.dispatch(`matmulTC ${M}x${N}x${K}${transB ? " tB" : ""}`, pipeline, params.buffer,
    [a, b, args.bias ?? rec.rt.placeholder, c], [cdiv(N, BN), cdiv(M, BM), batch]);
}

/** The fastest correct matmul for these operands on this device. */
export function matmulAuto(rec: Recorder, args: MatmulArgs) {
  const ldb = args.ldb ?? (args.transB ? args.K : args.N);
  if (!args.transA && args.b.dtype === "f16" && ldb % 2 === 0 && hasTensorCoreMatmul(rec.rt) && args.M >= 16) {
    matmulTensorCore(rec, args);
  } else matmul(rec, args);
}

/** The generated WGSL (for inspecting compiler messages on a device that has the feature). */
export const tcSourceForDebug = (transB: boolean) => source(transB).code;
