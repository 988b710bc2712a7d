/**
 * GEMV-style y (M, N) = x (M, K) · Wᵀ (+ bias) (+ beta·y) for decode, where M (sequences in the
 * batch) is 1..16 and the product is bound by reading W once.
 *
 * Workgroup: 128 threads = 4 row groups × 32 lanes; the 32 lanes of a group stride along K, so
 * a row of W is read as coalesced 512-byte runs of vec4<u32> words (8 halves, or 4 floats, per
 * lane). M ≤ 8: each group owns RT consecutive rows of W (output columns) and all M rows of x,
 * MS = M accumulators per row in registers. 9 ≤ M ≤ 16: the x rows are split in S = 2 slices
 * of MS = ⌈M/2⌉, and two groups share each set of W rows (one slice each), so a workgroup reads
 * its W rows from memory once (the second group's loads hit L1) while a thread holds at most
 * 8·RT accumulators. x is read from cache. A lane issues U·RT loads of W before using any, and
 * the 32 lanes' partial sums are added through workgroup memory (no subgroup-layout assumption,
 * no second pass): one dispatch, no split-K.
 *
 * The weight dtype (f32/f16/bf16) is a uniform, not a pipeline constant: the loads are the same
 * vec4<u32> words and only the decoding branches (uniformly), so pipelines differ only by
 * (MS, RT). Shapes whose rows are not 16-byte aligned (K or ldb not a multiple of 8 halves / 4
 * floats, lda not a multiple of 4) take a scalar kernel with the same layout, one pipeline for
 * every M (correct, not tuned).
 *
 * A prologue (GemvPrologue, aligned forms only) makes the kernel read x through RMSNorm or SwiGLU
 * (decode: the norm or SwiGLU dispatch before the product goes away); its operand (the norm weight,
 * or up) is binding 5.
 */
import type { MatmulArgs } from "./matmul.ts";
import { cdiv, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor } from "./tensor.ts";
import {
  type GemvConfig, type GemvPrologue, type PrologueKind, G, MAX_M, PROLOGUE_DECLS, WG, TK, defaultRows, depthTag, mSplit, prologueKind, vecParts,
} from "./gemv-rows.ts";

export { gemvDepth, type GemvConfig, type GemvNorm, type GemvPrologue, type GemvSwiglu } from "./gemv-rows.ts";

const PARAMS = `struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, wkind: u32, flags: u32,
  beta: f32, nc: u32, gridX: u32, S: u32,
  eps: f32, _a: u32, _b: u32, _c: u32, // eps: the fused RMSNorm's (GemvNorm)
}
@group(0) @binding(0) var<uniform> p: Params;`;

/** y[m][n] = s (+ bias[n]) (+ beta·y[m][n]): the epilogue of every gemv form (needs bindings bias and y). */
const STORE = `fn store(m: u32, n: u32, s: f32) {
  var v = s;
  if ((p.flags & 1u) != 0u) { v += bias[n]; }
  let idx = m * p.ldc + n;
  // beta == 0 must not read y: it may hold garbage (NaN·0 = NaN).
  if (p.beta != 0.0) { v += p.beta * y[idx]; }
  y[idx] = v;
}`;

const vecSources = new Map<string, KernelSource>();

/** The aligned kernel for MS rows of x and RT rows of W per thread (vecParts). */
const prologueText: Record<PrologueKind, string> = { "": "x", norm: "rmsnorm(x)", swiglu: "silu(x)·up" };

function vecSource(MS: number, RT: number, pk: PrologueKind = ""): KernelSource {
  const key = `${MS}x${RT}${depthTag()}${pk ? `_${pk}` : ""}`;
  let s = vecSources.get(key);
  if (s) return s;
  const parts = vecParts(MS, RT, pk);
  const code = `// gemv: y (M, N) = ${prologueText[pk]} (M, K) · Wᵀ (+ bias) (+ beta·y), aligned rows; MS rows of x, RT rows of W per thread.
${PARAMS}
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
${PROLOGUE_DECLS[pk]}
${parts.decls}

${STORE}

${parts.rows("gemv_rows", "w", "p.N", "store")}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  gemv_rows((wg.y * p.gridX + wg.x) * (${G}u / p.S) * RT, tid);
}
`;
  s = { name: `gemv_m${MS}_r${RT}${depthTag()}${pk ? `_${pk}` : ""}`, code };
  vecSources.set(key, s);
  return s;
}

/**
 * The CPU form for aligned rows: invocation n owns output column n and walks row n of W once,
 * word by word, for all M (≤ 16) rows of x; neighbouring invocations are the SIMD lanes of a
 * software driver, so no workgroup memory or barriers are needed.
 */
const rowSources = new Map<PrologueKind, KernelSource>();
function rowSource(pk: PrologueKind): KernelSource {
  let s = rowSources.get(pk);
  if (!s) rowSources.set(pk, s = rowSourceOf(pk));
  return s;
}
/**
 * Statements binding `name` to x's word i of row m as the row form's product reads it: times the
 * norm weight's word (adding the raw word's squares to ss[m]: the loop over W's words visits every
 * word of x once), or SwiGLU'd.
 */
const rowX = (pk: PrologueKind, i: string, name: string) =>
  pk === "norm" ? `let ${name}r = x[m * lda4 + ${i}]; ss[m] += dot(${name}r, ${name}r); let ${name} = ${name}r * nw[${i}];`
    : pk === "swiglu" ? `let ${name} = swiglu4(x[m * lda4 + ${i}], upv[m * lda4 + ${i}]);` : `let ${name} = x[m * lda4 + ${i}];`;
const rowSourceOf = (pk: PrologueKind): KernelSource => {
  const norm = pk === "norm";
  return {
  name: `gemv_row${pk ? `_${pk}` : ""}`,
  code: `// gemv: y (M, N) = ${prologueText[pk]} (M, K) · Wᵀ (+ bias) (+ beta·y), aligned rows; one row of W per invocation.
${PARAMS}
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
${PROLOGUE_DECLS[pk]}

${STORE}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let n = (wg.y * p.gridX + wg.x) * 64u + lid;
  if (n >= p.N) { return; }
  let lda4 = p.lda / 4u;
  let base = n * p.ldb;
  var acc = array<vec4<f32>, ${MAX_M}>();${norm ? `
  var ss = array<f32, ${MAX_M}>(); // Σ x² of each row of x, over all of K` : ""}
  for (var c = 0u; c < p.nc; c++) {
    let v = w[base + c];
    if (p.wkind == 0u) {
      let wf = bitcast<vec4<f32>>(v);
      for (var m = 0u; m < p.M; m++) { ${rowX(pk, "c", "xv")} acc[m] += xv * wf; }
    } else {
      var lo: vec4<f32>;
      var hi: vec4<f32>;
      if (p.wkind == 1u) {
        lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
        hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
      } else {
        let l = bitcast<vec4<f32>>(v << vec4<u32>(16u));
        let h = bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u));
        lo = vec4<f32>(l.x, h.x, l.y, h.y);
        hi = vec4<f32>(l.z, h.z, l.w, h.w);
      }
      for (var m = 0u; m < p.M; m++) { ${rowX(pk, "2u * c", "xa")} ${rowX(pk, "2u * c + 1u", "xb")} acc[m] += xa * lo + xb * hi; }
    }
  }
  for (var m = 0u; m < p.M; m++) {
    store(m, n, (acc[m].x + acc[m].y + acc[m].z + acc[m].w)${norm ? " * (1.0 / sqrt(ss[m] / f32(p.K) + p.eps))" : ""});
  }
}
`,
  };
};

/** Any alignment: per-element loads, x rows one at a time (W re-read from cache), one row of W per group. */
const scalarSource: KernelSource = {
  name: "gemv_scalar",
  code: `// gemv: y (M, N) = x (M, K) · Wᵀ (+ bias) (+ beta·y), any alignment; one row of W per 32 lanes.
${PARAMS}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
var<workgroup> red: array<f32, ${MAX_M * (WG + 1)}>;

${STORE}

fn loadW(i: u32) -> f32 {
  if (p.wkind == 0u) { return bitcast<f32>(w[i]); }
  let v = w[i >> 1u];
  if (p.wkind == 1u) { return unpack2x16float(v)[i & 1u]; }
  return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i & 1u) == 1u));
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let n0 = (wg.y * p.gridX + wg.x) * ${G}u;
  if (n0 >= p.N) { return; }
  let g = tid / ${TK}u;
  let lane = tid % ${TK}u;
  let base = min(n0 + g, p.N - 1u) * p.ldb;
  for (var m = 0u; m < p.M; m++) {
    var s = 0.0;
    for (var k = lane; k < p.K; k += ${TK}u) { s = fma(x[m * p.lda + k], loadW(base + k), s); }
    red[m * ${WG + 1}u + tid] = s;
  }
  workgroupBarrier();
  if (tid < ${G}u * p.M) {
    let m = tid / ${G}u;
    let gg = tid % ${G}u;
    let n = n0 + gg;
    var s = 0.0;
    for (var l = 0u; l < ${TK}u; l++) { s += red[m * ${WG + 1}u + gg * ${TK}u + l]; }
    if (n < p.N) { store(m, n, s); }
  }
}
`,
};

/** True when gemv() handles these matmul() arguments: y = x·Wᵀ (+ bias) (+ y) with 1 ≤ M ≤ 16. */
export function gemvSupported(args: MatmulArgs): boolean {
  return args.M >= 1 && args.M <= MAX_M && args.transB === true && !args.transA &&
    (args.alpha ?? 1) === 1 && ((args.beta ?? 0) === 0 || args.beta === 1) && (args.batch ?? 1) === 1 &&
    !args.offsetA && !args.offsetB && !args.offsetC &&
    ["f32", "f16", "bf16"].includes(args.b.dtype);
}


/**
 * Records y = x·Wᵀ (+ bias) (+ y) for matmul() arguments with transB (W (N, K) stored
 * row-major with row stride ldb), M ≤ 16, alpha 1, beta 0 or 1. `a` is x (row stride lda), `c`
 * is y (row stride ldc); W may be a row chunk of a larger matrix bound on its own (a Tensor
 * view at the chunk's byte offset) with y's columns offset the same way, as logitsRows does.
 * `cfg` overrides the rows of W per thread (for benchmarks).
 */
export function gemv(rec: Recorder, args: MatmulArgs, cfg?: GemvConfig, pre?: GemvPrologue) {
  const { a, b, c, M, N, K } = args;
  const pk = prologueKind(pre);
  const norm = pre && "norm" in pre ? pre.norm : undefined;
  if (!gemvSupported(args)) {
    throw new Error(`gemv: needs transB, !transA, alpha 1, beta 0|1, batch 1 and 1 <= M <= ${MAX_M} (got M=${M}, transB=${args.transB}, transA=${args.transA}, alpha=${args.alpha}, beta=${args.beta})`);
  }
  expectTensor("gemv", "a", a, "f32");
  expectTensor("gemv", "b", b, ["f32", "f16", "bf16"]);
  expectTensor("gemv", "c", c, "f32");
  const lda = args.lda ?? K, ldb = args.ldb ?? K, ldc = args.ldc ?? N;
  if (lda < K || ldb < K || ldc < N) throw new Error(`gemv: strides lda=${lda} ldb=${ldb} ldc=${ldc} shorter than rows (K=${K}, N=${N})`);
  if (N === 0) return;
  if ((M - 1) * lda + K > a.numel) throw new Error(`gemv: a has ${a.numel} elements, too few for M=${M} K=${K} lda=${lda}`);
  if ((N - 1) * ldb + K > b.numel) throw new Error(`gemv: b has ${b.numel} elements, too few for N=${N} K=${K} ldb=${ldb}`);
  if ((M - 1) * ldc + N > c.numel) throw new Error(`gemv: c has ${c.numel} elements, too few for M=${M} N=${N} ldc=${ldc}`);
  if (args.bias) expectTensor("gemv", "bias", args.bias, "f32", [N]);
  if (norm) expectTensor("gemv", "norm weight", norm.weight, "f32", [K]);
  if (pre && "swiglu" in pre) expectTensor("gemv", "up", pre.swiglu.up, "f32", a.shape);
  if (pre && !gemvPrologueSupported(args, pre)) {
    throw new Error(`gemv: a fused ${pk} needs 16-byte aligned rows (K=${K}, lda=${args.lda ?? K}, ldb=${args.ldb ?? K}) and its operand aligned like x`);
  }

  const rt = rec.rt;
  const wide = b.dtype === "f32";
  const per = wide ? 4 : 8; // elements of W per vec4<u32> word
  const aligned = K > 0 && K % per === 0 && ldb % per === 0 && lda % 4 === 0 && a.byteOffset % 16 === 0 && b.byteOffset % 16 === 0;
  const wkind = wide ? 0 : b.dtype === "f16" ? 1 : 2;
  const flags = args.bias ? 1 : 0;
  const beta = args.beta ?? 0;
  let pipeline: GPUComputePipeline, rowsPerWg: number, label: string, S = 1;
  const form = cfg?.form ?? (rt.caps.isSoftware ? "row" : "lanes");
  const normTag = pk ? ` +${pk === "norm" ? "rmsnorm" : "swiglu"}` : "";
  if (aligned && form === "row") {
    pipeline = rt.pipeline(rowSource(pk));
    rowsPerWg = 64;
    label = `gemv ${M}x${N}x${K} ${b.dtype} row${normTag}`;
  } else if (aligned) {
    const split = mSplit(M);
    S = split.S;
    const RT = cfg?.rows ?? defaultRows(N, G / S);
    pipeline = rt.pipeline(vecSource(split.MS, RT, pk));
    rowsPerWg = (G / S) * RT;
    label = `gemv ${M}x${N}x${K} ${b.dtype} r${RT}${normTag}`;
  } else {
    pipeline = rt.pipeline(scalarSource);
    rowsPerWg = G;
    label = `gemv ${M}x${N}x${K} ${b.dtype} scalar`;
  }
  const groups = cdiv(N, rowsPerWg);
  const gridX = Math.min(groups, rt.caps.limits.maxComputeWorkgroupsPerDimension);
  const gridY = cdiv(groups, gridX);
  const params = new Params(16)
    .u32(M).u32(N).u32(K).u32(lda)
    .u32(aligned ? ldb / per : ldb).u32(ldc).u32(wkind).u32(flags)
    .f32(beta).u32(aligned ? K / per : 0).u32(gridX).u32(S)
    .f32(norm?.eps ?? 0).u32(0).u32(0).u32(0);
  const bound = [a, b, args.bias ?? rt.placeholder, c];
  const extra = norm ? [norm.weight] : pre && "swiglu" in pre ? [pre.swiglu.up] : [];
  rec.dispatch(label, pipeline, params.buffer, [...bound, ...extra], [gridX, gridY, 1]);
}

/**
 * Whether gemv() can fuse this prologue in front of these arguments: gemvSupported, rows of x and W
 * 16-byte aligned (the vector forms), x and the prologue's operand at 16-byte offsets, the norm
 * weight K long, up shaped like x.
 */
export function gemvPrologueSupported(args: MatmulArgs, pre: GemvPrologue): boolean {
  const { a, b, K } = args;
  const per = b.dtype === "f32" ? 4 : 8, lda = args.lda ?? K, ldb = args.ldb ?? K;
  const operand = "norm" in pre ? pre.norm.weight : pre.swiglu.up;
  const shaped = "norm" in pre ? operand.numel === K : operand.dtype === "f32" && operand.numel === a.numel && operand.shape.join() === a.shape.join();
  return gemvSupported(args) && K > 0 && K % per === 0 && ldb % per === 0 && lda % 4 === 0 &&
    a.byteOffset % 16 === 0 && b.byteOffset % 16 === 0 && operand.byteOffset % 16 === 0 && shaped;
}
