/**
 * Tensor-core matmul through Dawn's subgroup matrices (chromium_experimental_subgroup_matrix):
 * C (f32) = A (f16) · op(B) (f16) (+ C), f32 accumulation. The forms a frozen 16-bit linear layer
 * needs in training and inference:
 *   y  = x · Wᵀ   (transB, W (N, K))       forward
 *   dx = dy · W   (W (K, N))               input gradient
 *
 * Two kernels share the tiling: a workgroup holds SGM×SGN subgroups of 32 lanes; each subgroup
 * owns TM×TN 16×16 result matrices, so a workgroup covers a (SGM·TM·16) × (SGN·TN·16) tile of C.
 * - staged (matmul-tc-staged.ts, chosen per shape by tcConfigFor in gemm-tiles.ts): A and B slices go through
 *   workgroup memory with 16-byte loads, the next slice prefetched into registers.
 * - global (this file's `source`): operands loaded straight from global memory into subgroup
 *   matrices, the caches serving the reuse. Tile origins past M or N are clamped back inside
 *   (the duplicate tile computes values another subgroup owns and skips its store).
 * M, N and K need to be multiples of 16; `matmulAuto` sends anything else to the portable kernel.
 *
 * A may be f32: matmulAuto then rounds it to f16 into a pooled scratch buffer first. Callers
 * that feed the same activations to several matmuls convert once (`toF16`) and pass the f16
 * tensor.
 */
import { convertTensor, convertTransposedF16 } from "./convert.ts";
import { cdiv, Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import { fillRowsWithBias, matmul, type MatmulArgs, splitKReduce } from "./matmul.ts";
import { AUX_BINDINGS, auxSliceCode, fitWorkgroupStorage, stagedSource, TC_PREAMBLE } from "./matmul-tc-staged.ts";
import { gemv, gemvSupported } from "./gemv.ts";
import { type TcConfig, stagedForm, stagedSmallProducts, tcConfigFor, tcConfigName } from "./gemm-tiles.ts";

export type { TcConfig } from "./gemm-tiles.ts";

const LANES = 32;

function source(transB: boolean, cfg: TcConfig): KernelSource {
  const { tm, tn, sgm, sgn } = cfg;
  const cs = cfg.constStrides ?? false;
  const lda = cs ? "LDA" : "p.lda", ldb = cs ? "LDB" : "p.ldb", ldc = cs ? "LDC" : "p.ldc";
  const ids = (n: number) => Array.from({ length: n }, (_, i) => i);
  const pairs = ids(tm).flatMap((i) => ids(tn).map((j) => [i, j] as const));
  const rightLoad = (j: number) =>
    transB
      ? `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&b, bBase + c${j} * ${ldb} + k, ${ldb})`
      : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&b, bBase + k * ${ldb} + c${j}, ${ldb})`;
  const leftLoad = (i: number) => `subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&a, aBase + r${i} * ${lda} + k, ${lda})`;
  const code = `${TC_PREAMBLE}
${cs ? "override LDA: u32;\noverride LDB: u32;\noverride LDC: u32;\n" : ""}@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
${cfg.aux ? AUX_BINDINGS : ""}

@compute @workgroup_size(${LANES * sgm * sgn}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let sg = lid / ${LANES}u;
  let rowTile = wg.y * ${sgm * tm * 16}u + (sg / ${sgn}u) * ${tm * 16}u;
  let colTile = wg.x * ${sgn * tn * 16}u + (sg % ${sgn}u) * ${tn * 16}u;
  let aBase = wg.z * p.strideA + p.offA;
  let bBase = wg.z * p.strideB + p.offB;
  let cBase = wg.z * p.strideC + p.offC;
  // Row/column origins of this subgroup's result matrices, clamped inside C.
${ids(tm).map((i) => `  let r${i} = min(rowTile + ${i * 16}u, p.M - 16u);`).join("\n")}
${ids(tn).map((j) => `  let c${j} = min(colTile + ${j * 16}u, p.N - 16u);`).join("\n")}
${pairs.map(([i, j]) => `  var acc${i}${j} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
  if (ACCUMULATE) {
${pairs.map(([i, j]) => `    acc${i}${j} = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&c, cBase + r${i} * ${ldc} + c${j}, ${ldc});`).join("\n")}
  }
  for (var k = 0u; k < p.K; k += 16u) {
${ids(tm).map((i) => `    let l${i} = ${leftLoad(i)};`).join("\n")}
${ids(tn).map((j) => `    let q${j} = ${rightLoad(j)};`).join("\n")}
${pairs.map(([i, j]) => `    acc${i}${j} = subgroupMatrixMultiplyAccumulate(l${i}, q${j}, acc${i}${j});`).join("\n")}
  }
${cfg.aux ? auxSliceCode(transB, tm, tn, (i) => `r${i}`, (j) => `c${j}`) : ""}
${pairs
  .map(([i, j]) => `  if (rowTile + ${i * 16}u < p.M && colTile + ${j * 16}u < p.N) { subgroupMatrixStore<row_major>(&c, cBase + r${i} * ${ldc} + c${j}, acc${i}${j}, ${ldc}); }`)
  .join("\n")}
}
`;
  return { name: `matmul_tc${transB ? "_tB" : ""}_${tm}x${tn}_${sgm}x${sgn}${cs ? "_cs" : ""}${cfg.aux ? "_aux" : ""}`, code };
}

const sources = new Map<string, KernelSource>();

/** True when this device can run the tensor-core path (f16 16×16×16 → f32, subgroup size 32). */
export function hasTensorCoreMatmul(rt: GpuRuntime): boolean {
  const c = rt.caps;
  return (
    c.subgroupMatrix && c.shaderF16 && ((c.subgroupMinSize === 32 && c.subgroupMaxSize === 32) || c.subgroupMatrixEmulated) &&
    c.subgroupMatrixConfigs.some((x) => x.M === 16 && x.N === 16 && x.K === 16 && x.componentType === "f16" && x.resultComponentType === "f32")
  );
}

/** Why these operands cannot take the tensor-core path, or null when they can. */
export function tensorCoreUnsupported(args: MatmulArgs): string | null {
  const { M, N, K } = args;
  const transB = args.transB ?? false;
  if (args.transA) return "transposed A";
  // Offsets stay 16-byte aligned, as the staged kernel's vector loads need.
  if ((args.offsetA ?? 0) % 8 || (args.offsetB ?? 0) % 8 || (args.offsetC ?? 0) % 4) return "element offsets not 16-byte multiples";
  if (args.b.dtype !== "f16") return `B is ${args.b.dtype}`;
  if (args.a.dtype !== "f16" && args.a.dtype !== "f32") return `A is ${args.a.dtype}`;
  if (args.bias) return "bias";
  if ((args.alpha ?? 1) !== 1) return "alpha ≠ 1";
  const beta = args.beta ?? 0;
  if (beta !== 0 && beta !== 1) return "beta not 0 or 1";
  if (M % 16 || N % 16 || K % 16) return "M, N or K not a multiple of 16";
  const lda = args.lda ?? K, ldb = args.ldb ?? (transB ? K : N), ldc = args.ldc ?? N;
  if (lda % 8 || ldb % 8 || ldc % 4) return "leading dimensions not 16-byte multiples";
  return null;
}

/**
 * A second product added into the same output tile (matmul-tc-staged.ts auxSliceCode):
 * C (+)= A·op(B) + a2·op(b2), a2 (M, K2) f16 starting at element `offsetA2` with row stride
 * `lda2` (default K2), b2 f16 (K2, N) (or (N, K2) when the main product is transB), contiguous.
 */
export interface AuxSlice {
  a2: Tensor;
  b2: Tensor;
  K2: number;
  lda2?: number;
  offsetA2?: number;
}

/** Records the tensor-core matmul; `a` must already be f16 (see matmulAuto for f32 A). */
export function matmulTensorCore(
  rec: Recorder, args: MatmulArgs, picked: TcConfig = tcConfigFor(args.M, args.N, args.K, args.transB ?? false), aux?: AuxSlice,
) {
  const { a, b, c, M, N, K } = args;
  const transB = args.transB ?? false;
  const cfg = fitWorkgroupStorage(picked, transB, rec.rt.caps.limits.maxComputeWorkgroupStorageSize);
  const why = tensorCoreUnsupported(args);
  if (why) throw new Error(`matmulTensorCore: ${why} is not supported (use matmulAuto)`);
  expectTensor("matmulTensorCore", "a", a, "f16");
  expectTensor("matmulTensorCore", "c", c, "f32");
  const batch = args.batch ?? 1;
  const lda = args.lda ?? K, ldb = args.ldb ?? (transB ? K : N), ldc = args.ldc ?? N;
  const strideA = args.strideA ?? M * K, strideB = args.strideB ?? K * N, strideC = args.strideC ?? M * N;
  const offA = args.offsetA ?? 0, offB = args.offsetB ?? 0, offC = args.offsetC ?? 0;
  const need = (off: number, rows: number, cols: number, ld: number, stride: number) => off + (batch - 1) * stride + (rows - 1) * ld + cols;
  if (need(offA, M, K, lda, strideA) > a.numel) throw new Error(`matmulTensorCore: a has ${a.numel} elements, too few for M=${M} K=${K}`);
  if (need(offB, transB ? N : K, transB ? K : N, ldb, strideB) > b.numel) throw new Error(`matmulTensorCore: b has ${b.numel} elements, too few for K=${K} N=${N}`);
  if (need(offC, M, N, ldc, strideC) > c.numel) throw new Error(`matmulTensorCore: c has ${c.numel} elements, too few for M=${M} N=${N}`);
  if (cfg.staged && (strideA % 8 || strideB % 8)) throw new Error("matmulTensorCore: staged kernel needs batch strides that are multiples of 8");
  if (cfg.bk !== undefined && ![16, 32, 64].includes(cfg.bk)) throw new Error(`matmulTensorCore: bk must be 16, 32 or 64, got ${cfg.bk}`);
  if (cfg.group && !cfg.staged) throw new Error("matmulTensorCore: a grouped raster applies to the staged kernel only");
  let auxParams = [0, 0, 0, 0];
  if (aux) {
    const { a2, b2, K2 } = aux;
    const lda2 = aux.lda2 ?? K2, offA2 = aux.offsetA2 ?? 0;
    expectTensor("matmulTensorCore", "aux a2", a2, "f16");
    expectTensor("matmulTensorCore", "aux b2", b2, "f16");
    if (batch !== 1) throw new Error("matmulTensorCore: an aux slice needs batch = 1");
    if (cfg.diag || (cfg.constStrides && !cfg.staged)) throw new Error("matmulTensorCore: an aux slice does not combine with diag or global constStrides kernels");
    if (!(Number.isInteger(K2) && K2 > 0 && K2 % 16 === 0)) throw new Error(`matmulTensorCore: aux K2 must be a positive multiple of 16, got ${K2}`);
    if (lda2 < K2 || !Number.isInteger(offA2) || offA2 < 0) throw new Error(`matmulTensorCore: aux lda2 ${lda2} < K2 ${K2} or bad offsetA2 ${offA2}`);
    if (offA2 + (M - 1) * lda2 + K2 > a2.numel) throw new Error(`matmulTensorCore: aux a2 has ${a2.numel} elements, too few for M=${M} K2=${K2}`);
    if (K2 * N > b2.numel) throw new Error(`matmulTensorCore: aux b2 has ${b2.numel} elements, too few for K2=${K2} N=${N}`);
    auxParams = [K2, lda2, offA2, transB ? K2 : N];
  }
  const kernelCfg: TcConfig = aux ? { ...cfg, aux: true } : cfg;
  // Every field of the config is in its name (tcConfigName), so two configs never share a kernel.
  const key = `${transB}:${tcConfigName(cfg)}${aux ? ":aux" : ""}`;
  let s = sources.get(key);
  if (!s) sources.set(key, (s = kernelCfg.staged ? stagedSource(transB, kernelCfg) : source(transB, kernelCfg)));
  const constants: Record<string, number> = { ACCUMULATE: (args.beta ?? 0) === 1 ? 1 : 0 };
  if (cfg.constStrides) Object.assign(constants, cfg.staged ? { K_C: K, LDA_C: lda, LDB_C: ldb } : { LDA: lda, LDB: ldb, LDC: ldc });
  const pipeline = rec.rt.pipeline(s, constants);
  const params = new Params(16)
    .u32(M).u32(N).u32(K).u32(lda)
    .u32(ldb).u32(ldc).u32(strideA).u32(strideB)
    .u32(strideC).u32(offA).u32(offB).u32(offC)
    .u32(auxParams[0]!).u32(auxParams[1]!).u32(auxParams[2]!).u32(auxParams[3]!);
  rec.dispatch(`matmulTC ${M}x${N}x${K}${transB ? " tB" : ""}${aux ? ` +${aux.K2}` : ""}`, pipeline, params.buffer,
    aux ? [a, b, c, aux.a2, aux.b2] : [a, b, c],
    [cdiv(N, 16 * cfg.tn * cfg.sgn), cdiv(M, 16 * cfg.tm * cfg.sgm), batch]);
}

/**
 * Tile and K-split for a thin product (N ≤ 64: a LoRA rank or a few of them side by side, K the
 * model width or the MLP width): the staged kernel over 128-row tiles as wide as N (4 subgroups of
 * 2 × N/16 result matrices), K split into chunks (each ≥ 128) until about 4 workgroups per SM of
 * an H100 run, the partial sums reduced after. Staged, because subgroup-matrix loads straight from
 * global memory are slow on NVIDIA's driver (session 7: the global kernel made these products
 * 20× slower than their memory traffic).
 */
export function thinTcPlan(M: number, N: number, K: number, transB = true): { cfg: TcConfig; splits: number } {
  const tn = N % 64 === 0 ? 4 : N % 48 === 0 ? 3 : N % 32 === 0 ? 2 : 1;
  if (!stagedSmallProducts.enabled) return globalThinPlan(M, N, K, tn);
  const cfg = stagedForm({ tm: 2, tn, sgm: 4, sgn: 1, staged: true, bk: 64 }, transB);
  const workgroups = cdiv(M, 128) * cdiv(N, 16 * tn);
  let splits = 1;
  while (splits < 16 && workgroups * splits < 528 && K % (32 * splits) === 0 && K / (2 * splits) >= 128) splits *= 2;
  return { cfg, splits };
}

/**
 * C = alpha·A·op(B) + beta·C on tensor cores for thin outputs (see thinTcPlan): A f16, B f16, any
 * alpha, beta 0 or 1, element offsets and ldc allowed (C may be a column block of a wider matrix).
 * The K chunks write f32 partials into a scratch that one pass reduces into C.
 */
export function matmulTensorCoreThin(rec: Recorder, args: MatmulArgs) {
  const { cfg, splits } = thinTcPlan(args.M, args.N, args.K, args.transB ?? false);
  matmulTensorCoreSplitK(rec, args, cfg, splits, "matmulTensorCoreThin");
}

/** Session 6's thin plan: one 16-row strip per subgroup on the global kernel, about 1,024 subgroups. */
function globalThinPlan(M: number, N: number, K: number, tn: number): { cfg: TcConfig; splits: number } {
  const subgroups = cdiv(M, 16) * cdiv(N, 16 * tn);
  let splits = 1;
  while (splits < 16 && subgroups * splits < 1024 && K % (32 * splits) === 0 && K / (2 * splits) >= 128) splits *= 2;
  return { cfg: { tm: 1, tn, sgm: 4, sgn: 1 }, splits };
}

/**
 * K split for a product whose output tiles are too few to fill the GPU (weight gradients of
 * narrow layers: M×N a few tiles, K = tokens): 128×128 staged tiles, K split in halves while
 * there are fewer than 264 workgroups (2 per SM of an H100) and each chunk keeps ≥ 256 of K.
 */
export function splitKPlan(M: number, N: number, K: number): { cfg: TcConfig; splits: number } {
  const cfg = stagedForm({ tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, group: 8 }, false);
  const tiles = cdiv(M, 128) * cdiv(N, 128);
  let splits = 1;
  while (stagedSmallProducts.enabled && splits < 16 && tiles * splits < 264 && K % (32 * splits) === 0 && K / (2 * splits) >= 256) splits *= 2;
  return { cfg, splits };
}

/**
 * C = alpha·A·op(B) + beta·C on tensor cores with K in `splits` chunks: each chunk's product goes to
 * an f32 partial (one batched dispatch), one pass reduces them into C (alpha, beta 0 or 1, element
 * offsets and ldc allowed). splits 1 is one product straight into a scratch, then the same reduce.
 */
export function matmulTensorCoreSplitK(
  rec: Recorder, args: MatmulArgs, cfg: TcConfig, splits: number, caller = "matmulTensorCoreSplitK", o: { transposeC?: boolean } = {},
) {
  const { M, N, K } = args;
  const transB = args.transB ?? false;
  const why = tensorCoreUnsupported({ ...args, alpha: 1, offsetC: 0, ldc: N });
  if (why) throw new Error(`${caller}: ${why} is not supported`);
  if ((args.batch ?? 1) !== 1) throw new Error(`${caller}: batch must be 1`);
  if (!(Number.isInteger(splits) && splits >= 1 && K % (16 * splits) === 0)) throw new Error(`${caller}: K=${K} does not split into ${splits} chunks of a multiple of 16`);
  expectTensor(caller, "c", args.c, "f32");
  const lda = args.lda ?? K, ldb = args.ldb ?? (transB ? K : N);
  const Kc = K / splits;
  const part = rec.scratch("f32", [splits, M, N], "tc_splitk_partials");
  matmulTensorCore(rec, {
    a: args.a, b: args.b, c: part, M, N, K: Kc, transB, lda, ldb, ldc: N, batch: splits,
    offsetA: args.offsetA, offsetB: args.offsetB,
    strideA: Kc, strideB: transB ? Kc : Kc * ldb, strideC: M * N,
  }, cfg);
  splitKReduce(rec, part, args.c, {
    M, N, ldc: args.ldc ?? (o.transposeC ? M : N), splits, alpha: args.alpha ?? 1, beta: args.beta ?? 0, offsetC: args.offsetC ?? 0, transposeC: o.transposeC,
  });
  rec.recycle(part);
}

/**
 * Tile and K-split for a product with few rows (a LoRA rank or a few: LoRA's dA = dhᵀ·x and
 * dBᵀ = hᵀ·dy, K = tokens): staged 16-row tiles 256 wide (4 subgroups of 1×4 result matrices), K
 * split into chunks (each ≥ 128) until about 4 workgroups per SM run.
 */
export function shortTcPlan(M: number, N: number, K: number): { cfg: TcConfig; splits: number } {
  const cfg = stagedForm({ tm: 1, tn: 4, sgm: 1, sgn: 4, staged: true, bk: 64 }, false);
  const workgroups = cdiv(M, 16) * cdiv(N, 256);
  let splits = 1;
  while (splits < 16 && workgroups * splits < 528 && K % (32 * splits) === 0 && K / (2 * splits) >= 128) splits *= 2;
  return { cfg, splits };
}

/**
 * Records dst (f16) = src (f32) rounded to nearest even; returns dst (a scratch tensor of the
 * recording unless given: recycle it after its last use).
 */
export function toF16(rec: Recorder, src: Tensor, dst?: Tensor): Tensor {
  expectTensor("toF16", "src", src, "f32");
  const out = dst ?? rec.scratch("f16", src.shape, `${src.label}:f16`);
  convertTensor(rec, src, out);
  return out;
}

/**
 * Whether weight gradients (dW = dyᵀ·x, full fine-tuning) run on tensor cores. On by default since
 * session 7: its GPU test ("weight gradient on tensor cores") passed on an H100 and Qwen2.5-0.5B's
 * full step went from 0.35× to 0.46× of HF's; `TUNELOOM_DW_TC=0` turns it off (A/B).
 */
export const weightGradTensorCores = { enabled: process.env.TUNELOOM_DW_TC !== "0" };

/**
 * Whether linearBackwardWeightTensorCore runs dW (out, in) = dyᵀ·x on tensor cores: switched on,
 * a device with subgroup matrices, T, in and out multiples of 16, f32 operands. Callers with
 * several products on one x use it to round x to f16 once.
 */
export function weightGradOnTensorCores(rec: Recorder, x: Tensor, dy: Tensor, dw: Tensor): boolean {
  const [T, inF] = x.shape as [number, number];
  const [T2, outF] = dy.shape as [number, number];
  if (T !== T2) throw new Error(`linearBackwardWeightTensorCore: x has ${T} rows, dy has ${T2}`);
  if (!weightGradTensorCores.enabled || !hasTensorCoreMatmul(rec.rt)) return false;
  return T % 16 === 0 && inF % 16 === 0 && outF % 16 === 0 && x.dtype === "f32" && dy.dtype === "f32" && dw.dtype === "f32" && dw.numel === outF * inF;
}

/**
 * dW (out, in) (+)= dyᵀ·x on tensor cores: dy (T, out) f32 is transposed and rounded to f16
 * (out, T) in one pass, x (T, in) rounded to f16 (or passed as `x16`), and the product runs in the
 * input-gradient form A·B with A = dyᵀ (M = out, K = T) and B = x (K = T, N = in), f32
 * accumulation. `beta` 1 adds to dW. Returns false, recording nothing, where it cannot run
 * (switched off, no subgroup matrices, a dimension not a multiple of 16, not f32 operands): the
 * caller then uses the portable kernel (linearBackwardWeight). The backward runs in summed-loss
 * units (lora-trainer.ts gradUnit), so dy sits well inside f16's range.
 */
export function linearBackwardWeightTensorCore(rec: Recorder, x: Tensor, dy: Tensor, dw: Tensor, beta: 0 | 1, x16?: Tensor): boolean {
  if (!weightGradOnTensorCores(rec, x, dy, dw)) return false;
  const T = x.shape[0]!, inF = x.shape[1]!, outF = dy.shape[1]!;
  const dyT = rec.scratch("f16", [outF, T], `${dy.label}:f16ᵀ`);
  convertTransposedF16(rec, dy, dyT);
  const xh = x16 ?? toF16(rec, x);
  // Narrow layers (k/v of small models, the LM head's last chunk) have too few output tiles for
  // the GPU: K (tokens) is split, the partials reduced into dW.
  const args = { a: dyT, b: xh, c: dw, M: outF, N: inF, K: T, beta };
  const { cfg, splits } = splitKPlan(outF, inF, T);
  if (splits > 1) matmulTensorCoreSplitK(rec, args, cfg, splits, "linearBackwardWeightTensorCore");
  else matmulTensorCore(rec, args);
  rec.recycle(dyT);
  if (!x16) rec.recycle(xh);
  return true;
}

/**
 * The fastest correct matmul for these operands on this device: GEMV for up to 16 rows of
 * y = x·Wᵀ (decode), the tensor-core kernel when B is f16 and the shape fits (A rounded to f16
 * first if it is f32), else the portable kernel (f16 A is not accepted there).
 */
export function matmulAuto(rec: Recorder, args: MatmulArgs) {
  // A handful of rows (decode): one pass over W for all of them.
  if (args.a.dtype === "f32" && gemvSupported(args)) return gemv(rec, args);
  // A bias on an overwritten C: fill C's rows with it, then accumulate the product on top.
  if (args.bias && (args.beta ?? 0) === 0 && hasTensorCoreMatmul(rec.rt) && tensorCoreUnsupported({ ...args, bias: undefined }) === null) {
    fillRowsWithBias(rec, args.bias, args.c, args.M, args.N, args.ldc ?? args.N);
    return matmulAuto(rec, { ...args, bias: undefined, beta: 1 });
  }
  if (hasTensorCoreMatmul(rec.rt) && tensorCoreUnsupported(args) === null) {
    if (args.a.dtype === "f16") return matmulTensorCore(rec, args);
    const a16 = toF16(rec, args.a);
    matmulTensorCore(rec, { ...args, a: a16 });
    rec.recycle(a16);
    return;
  }
  if (args.a.dtype === "f16") throw new Error("matmulAuto: f16 A needs the tensor-core path, which these operands or this device cannot take");
  matmul(rec, args);
}
