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
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";

const WG = 128;
const TK = 32; // lanes along K per row group
const G = WG / TK; // row groups per workgroup
const JB_MAX = 16; // accumulators reduced per round through workgroup memory
const MAX_M = 16;

export interface GemvConfig {
  /** Rows of W per thread (1, 2 or 4); a workgroup covers 4·rows output columns (2·rows when M > 8). */
  rows?: 1 | 2 | 4;
  /**
   * `lanes` (the kernel above: 32 lanes per row of W, reduced through workgroup memory; for GPUs)
   * or `row` (one invocation walks a whole row of W for every x row, no workgroup memory; 2-3×
   * faster on CPU drivers such as lavapipe). Default: `row` on software adapters. Rows that are
   * not 16-byte aligned take the scalar kernel either way.
   */
  form?: "lanes" | "row";
}

/** x rows per thread (MS) and slices of x (S) for M rows. */
function mSplit(M: number): { MS: number; S: number } {
  return M <= 8 ? { MS: M, S: 1 } : { MS: Math.ceil(M / 2), S: 2 };
}

const PARAMS = `struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, wkind: u32, flags: u32,
  beta: f32, nc: u32, gridX: u32, S: u32,
  eps: f32, _a: u32, _b: u32, _c: u32, // eps: the fused RMSNorm's (GemvNorm)
}
@group(0) @binding(0) var<uniform> p: Params;`;

/**
 * RMSNorm fused in front of the product (decode): y = rmsnorm(x)·Wᵀ with rmsnorm(x) = x·r∘g,
 * r = 1/√(mean(x²) + eps) per row of x, computed as r·(x∘g)·Wᵀ. Every workgroup sums x² over the
 * chunks its lanes read anyway, so the separate RMSNorm dispatch (and its xn tensor) goes away.
 */
export interface GemvNorm {
  /** g (K) f32, the norm's weight. */
  weight: Tensor;
  eps: number;
}

/**
 * SwiGLU fused in front of the product (decode's down_proj): y = (silu(x)·up)·Wᵀ, x being the gate
 * (M, K) and `up` (M, K) laid out like it (same row stride), with swigluForward's formula element
 * by element, so the act tensor and its dispatch go away.
 */
export interface GemvSwiglu {
  up: Tensor;
}

/** What a gemv computes in front of the product: nothing, the RMSNorm (GemvNorm) or SwiGLU (GemvSwiglu). */
export type GemvPrologue = { norm: GemvNorm } | { swiglu: GemvSwiglu };
type PrologueKind = "" | "norm" | "swiglu";
const prologueKind = (pre: GemvPrologue | undefined): PrologueKind => (!pre ? "" : "norm" in pre ? "norm" : "swiglu");

/** The prologue's binding (5) and helpers: the norm weight g or up, as vec4 words like x. */
const normDecl = (binding: number) => `@group(0) @binding(${binding}) var<storage, read> nw: array<vec4<f32>>;`;
const PROLOGUE_DECLS: Record<PrologueKind, string> = {
  "": "",
  norm: normDecl(5),
  swiglu: `@group(0) @binding(5) var<storage, read> upv: array<vec4<f32>>;
// swigluForward's σ and silu(g)·up, four at a time
fn sigmoid4(g: vec4<f32>) -> vec4<f32> {
  let e = exp(-abs(g));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), g >= vec4<f32>(0.0));
}
fn swiglu4(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> { return g * sigmoid4(g) * u; }`,
};

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

/**
 * Words of W (16 bytes each) a thread loads before using any, across its RT rows: 8 (the default
 * since session 11: Llama-3.1-8B batch-1 decode 86.6 → 95.9 tok/s on an H100, same call) or 4
 * (sessions 5-10; at batch 1 the 8B model's down and o products read at 1.4-1.8 TB/s with it).
 * `TUNELOOM_GEMV_DEPTH=4` or `16` for A/B measurements (the device script's decode-8b); tests flip
 * `words`.
 */
export const gemvDepth = { words: gemvDepthFrom(process.env.TUNELOOM_GEMV_DEPTH) };

function gemvDepthFrom(v: string | undefined): 4 | 8 | 16 {
  if (v === undefined || v === "" || v === "8") return 8;
  if (v === "4") return 4;
  if (v === "16") return 16;
  throw new Error(`TUNELOOM_GEMV_DEPTH must be 4, 8 or 16, got ${JSON.stringify(v)}`);
}

/** The part of a pipeline's name and cache key that depends on gemvDepth (empty at the default). */
const depthTag = () => (gemvDepth.words === 8 ? "" : `_d${gemvDepth.words}`);

/**
 * The aligned kernel's pieces for MS rows of x and RT rows of W per thread: module-scope
 * declarations (constants, workgroup memory, decode16) and `rows(fn, w, N, store)`, a function
 * `fn(n0, tid)` that computes output columns n0 … of y = x·wᵀ (N columns, written through
 * `store(m, n, s)`). Chunk c of a row is its c-th vec4<u32> word: 8 halves (x: vec4 words 2c,
 * 2c+1 of the row) or 4 floats (x: word c). Written with constant-bound loops over small private
 * arrays (GPU compilers unroll them into registers). Cold compile on lavapipe's LLVM: 1-2 s for
 * MS ≤ 8 with RT = 1, about 6 s for MS = 8, RT = 2; MS = 16 in one thread took 6-90 s there,
 * hence the x slices.
 */
function vecParts(MS: number, RT: number, pk: PrologueKind = "") {
  const norm = pk === "norm";
  // x's word at index i as the product reads it (SwiGLU applied where fused)
  const xw = (i: string) => pk === "swiglu" ? `swiglu4(x[${i}], upv[${i}])` : `x[${i}]`;
  const U = Math.max(1, Math.min(gemvDepth.words / RT, Math.floor(8 / MS)));
  const J = MS * RT;
  const JB = Math.min(J, JB_MAX);
  const rounds = (N: string, store: string) => {
    const out: string[] = [];
    for (let j0 = 0; j0 < J; j0 += JB) {
      // The last round holds the J − j0 accumulators left (fewer than JB when JB does not divide J).
      const count = Math.min(JB, J - j0);
      const writes = Array.from({ length: count }, (_, jj) => `  red[${jj}u * WG1 + tid] = acc[${Math.floor((j0 + jj) / RT)}][${(j0 + jj) % RT}];`);
      out.push(`${writes.join("\n")}
  workgroupBarrier();
  if (tid < JB * ${G}u && tid % JB < ${count}u) {
    let gg = tid / JB;
    let jj = tid % JB;
    let j = ${j0}u + jj;
    let m = (gg % p.S) * MS + j / RT;
    let n = n0 + (gg / p.S) * RT + j % RT;
    var s = 0.0;
    for (var l = 0u; l < TK; l++) { s += red[jj * WG1 + gg * TK + l]; }
    if (m < p.M && n < ${N}) { ${store}(m, n, ${norm ? "s * rstdW[m]" : "s"}); }
  }
  workgroupBarrier();`);
    }
    return out.join("\n");
  };
  const decls = `const MS = ${MS}u;
const RT = ${RT}u;
const U = ${U}u;   // chunks per lane loaded before any is used
const TK = ${TK}u; // lanes along K per row group
const JB = ${JB}u; // accumulators reduced per round
const WG1 = ${WG + 1}u;
var<workgroup> red: array<f32, ${JB * (WG + 1)}>;
${norm ? `var<workgroup> rstdW: array<f32, ${MAX_M}>; // the fused norm's r per x row` : ""}

// 8 halves of one vec4<u32> word as two vec4<f32> (element 2i is the low half of word i).
fn decode16(v: vec4<u32>) -> array<vec4<f32>, 2> {
  if (p.wkind == 1u) {
    return array<vec4<f32>, 2>(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)),
                               vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)));
  }
  let lo = bitcast<vec4<f32>>(v << vec4<u32>(16u));
  let hi = bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u));
  return array<vec4<f32>, 2>(vec4<f32>(lo.x, hi.x, lo.y, hi.y), vec4<f32>(lo.z, hi.z, lo.w, hi.w));
}`;
  const rows = (fn: string, w: string, N: string, store: string) => `// Output columns n0 … n0 + (${G}/S)·RT − 1 of y = x·${w}ᵀ (${N} columns); called in uniform control flow.
fn ${fn}(n0: u32, tid: u32) {
  if (n0 >= ${N}) { return; }
  let g = tid / TK;
  let lane = tid % TK;
  let nc = p.nc;
  let lda4 = p.lda / 4u;
  var base = array<u32, RT>();
  for (var r = 0u; r < RT; r++) { base[r] = min(n0 + (g / p.S) * RT + r, ${N} - 1u) * p.ldb; }
  // This thread's x rows (a slice past M re-reads row M-1; its sums are not stored).
  var xrow = array<u32, MS>();
  for (var m = 0u; m < MS; m++) { xrow[m] = min((g % p.S) * MS + m, p.M - 1u) * lda4; }
  var acc = array<array<f32, RT>, MS>();${norm ? `
  var ss = array<f32, MS>(); // Σ x² over this lane's chunks, per x row` : ""}
  for (var c0 = lane; c0 < nc; c0 += U * TK) {
    // All U·RT words first, so that many loads are in flight before the first is used.
    var wv = array<array<vec4<u32>, RT>, U>();
    for (var u = 0u; u < U; u++) {
      let cc = min(c0 + u * TK, nc - 1u);
      for (var r = 0u; r < RT; r++) { wv[u][r] = ${w}[base[r] + cc]; }
    }
    for (var u = 0u; u < U; u++) {
      let c = c0 + u * TK;
      if (c >= nc) { break; }
      if (p.wkind == 0u) {
        for (var m = 0u; m < MS; m++) {
          ${norm ? `let xr = x[xrow[m] + c];
          ss[m] += dot(xr, xr);
          let xv = xr * nw[c];` : `let xv = ${xw("xrow[m] + c")};`}
          for (var r = 0u; r < RT; r++) { acc[m][r] += dot(xv, bitcast<vec4<f32>>(wv[u][r])); }
        }
      } else {
        var d = array<array<vec4<f32>, 2>, RT>();
        for (var r = 0u; r < RT; r++) { d[r] = decode16(wv[u][r]); }
        for (var m = 0u; m < MS; m++) {
          ${norm ? `let xra = x[xrow[m] + 2u * c];
          let xrb = x[xrow[m] + 2u * c + 1u];
          ss[m] += dot(xra, xra) + dot(xrb, xrb);
          let xa = xra * nw[2u * c];
          let xb = xrb * nw[2u * c + 1u];` : `let xa = ${xw("xrow[m] + 2u * c")};
          let xb = ${xw("xrow[m] + 2u * c + 1u")};`}
          for (var r = 0u; r < RT; r++) { acc[m][r] += dot(xa, d[r][0]) + dot(xb, d[r][1]); }
        }
      }
    }
  }${norm ? `
  // r per x row: the TK lanes of row group sl (whose x slice is sl) cover all of K between them
  for (var m = 0u; m < MS; m++) { red[m * WG1 + tid] = ss[m]; }
  workgroupBarrier();
  if (tid < p.S * MS) {
    let sl = tid / MS;
    var t = 0.0;
    for (var l = 0u; l < TK; l++) { t += red[(tid % MS) * WG1 + sl * TK + l]; }
    rstdW[tid] = 1.0 / sqrt(t / f32(p.K) + p.eps);
  }
  workgroupBarrier();` : ""}
  // The TK lanes' partial sums → y, JB accumulators per round through workgroup memory.
${rounds(N, store)}
}`;
  return { decls, rows };
}

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
 * Rows of W per thread: more where N still leaves enough workgroups to fill the GPU (2 per SM
 * on the H200's 132 SMs); `sets` = row sets per workgroup (4 / S).
 */
function defaultRows(N: number, sets: number): 1 | 2 | 4 {
  if (cdiv(N, sets * 4) >= 528) return 4;
  if (cdiv(N, sets * 2) >= 264) return 2;
  return 1;
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

/** One projection of a grouped GEMV: y (M, N) = x·wᵀ (+ bias), y contiguous (row stride N). */
export interface GemvPart {
  w: Tensor;
  y: Tensor;
  bias?: Tensor;
}

const groupSources = new Map<string, KernelSource>();

/**
 * gemvGroup (session 9): on by default since session 16's call (H100, 2026-12-08T01:35Z, same call):
 * Llama-3.2-1B batch-1 decode 272.3 → 368.8 tok/s (its k and v GEMVs of 512 rows ran on 128
 * workgroups, and each dispatch costs ~10 µs on Dawn's Vulkan backend whatever it does: the
 * dispatch-floor bench), Llama-3.1-8B 87.5 → 98.4 (session 11 had measured 8B neutral at depth 4).
 * `TUNELOOM_GEMV_GROUP=0` turns it off. Tests flip `enabled`.
 */
export const gemvGrouping = { enabled: process.env.TUNELOOM_GEMV_GROUP !== "0" };

/**
 * The grouped aligned kernel: `n` parts, each a vecParts row function over its own w, bias and y;
 * with `norm`, every part reads x through the RMSNorm (GemvNorm, binding 2 + 3n): each workgroup
 * sums x² over the chunks it reads anyway, as the single fused GEMV does.
 *
 * `swiglu` (two parts, gate and up, of one N): one output, act = silu(gate)·up, and no gate or up
 * written. Each workgroup makes the same block of columns of both: gate's into workgroup memory,
 * then up's, whose stores read them back (the thread that stores up's (m, n) stored gate's: the
 * two row functions share one thread layout) and write swigluForward's value.
 */
function groupSource(MS: number, RT: number, n: number, norm = false, swiglu = false): KernelSource {
  if (swiglu && n !== 2) throw new Error("gemv group: the SwiGLU epilogue takes two parts (gate, up)");
  const key = `${MS}x${RT}x${n}${depthTag()}${norm ? "_norm" : ""}${swiglu ? "_swiglu" : ""}`;
  let s = groupSources.get(key);
  if (s) return s;
  const parts = vecParts(MS, RT, norm ? "norm" : "");
  const js = Array.from({ length: n }, (_, j) => j);
  const outs = swiglu ? 1 : n; // output bindings
  const store = (j: number) => !swiglu
    ? `fn store${j}(m: u32, n: u32, s: f32) {
  var v = s;
  if ((p.flags & ${1 << j}u) != 0u) { v += bias${j}[n]; }
  y${j}[m * p.n${j} + n] = v;
}`
    : j === 0
    ? `fn store0(m: u32, n: u32, s: f32) {
  var v = s;
  if ((p.flags & 1u) != 0u) { v += bias0[n]; }
  gateW[m * ${G * RT}u + n % ((${G}u / p.S) * RT)] = v;
}`
    : `fn store1(m: u32, n: u32, s: f32) {
  var u = s;
  if ((p.flags & 2u) != 0u) { u += bias1[n]; }
  let g = gateW[m * ${G * RT}u + n % ((${G}u / p.S) * RT)];
  y0[m * p.n0 + n] = g * sigmoid(g) * u;
}`;
  const code = `// gemv group: ${swiglu ? "act (M, N) = silu(gate)·up, gate|up" : "y_j (M, N_j)"} = ${norm ? "rmsnorm(x)" : "x"} (M, K) · W_jᵀ (+ bias_j) for ${n} weights read with one x; MS rows of x, RT rows of W per thread.
struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, wkind: u32, flags: u32,
  beta: f32, nc: u32, gridX: u32, S: u32,
  n0: u32, n1: u32, n2: u32, b1: u32, // N_j; b1, b2: each part's first workgroup
  b2: u32, eps: f32, _b: u32, _c: u32, // eps: the fused RMSNorm's
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
${js.map((j) => `@group(0) @binding(${2 + j}) var<storage, read> w${j}: array<vec4<u32>>;
@group(0) @binding(${2 + n + j}) var<storage, read> bias${j}: array<f32>;`).join("\n")}
${js.slice(0, outs).map((j) => `@group(0) @binding(${2 + 2 * n + j}) var<storage, read_write> y${j}: array<f32>;`).join("\n")}
${norm ? normDecl(2 + 2 * n + outs) : ""}
${parts.decls}
${swiglu ? `var<workgroup> gateW: array<f32, ${MAX_M * G * RT}>; // gate's block, [m][column in the block]

// swigluForward's σ (swiglu.wgsl): exp of a non-positive argument only
fn sigmoid(g: f32) -> f32 {
  if (g >= 0.0) { return 1.0 / (1.0 + exp(-g)); }
  let e = exp(g);
  return e / (1.0 + e);
}` : ""}

${js.map((j) => `${store(j)}

${parts.rows(`rows${j}`, `w${j}`, `p.n${j}`, `store${j}`)}`).join("\n\n")}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wg.y * p.gridX + wg.x; // this workgroup's block of output columns${swiglu ? "" : " across the parts"}
  let perWg = (${G}u / p.S) * RT;
  ${swiglu ? "rows0(b * perWg, tid);\n  rows1(b * perWg, tid);" : js.map((j) => {
    const first = j === 0 ? "0u" : `p.b${j}`;
    const call = `rows${j}((b - ${first}) * perWg, tid);`;
    if (j === n - 1) return j === 0 ? call : `{ ${call} }`;
    return `if (b < p.b${j + 1}) { ${call} } else `;
  }).join("")}
}
`;
  s = { name: `gemv_group${n}_m${MS}_r${RT}${depthTag()}${norm ? "_norm" : ""}${swiglu ? "_swiglu" : ""}`, code };
  groupSources.set(key, s);
  return s;
}

/**
 * y_j = x·W_jᵀ (+ bias_j) for two or three weights that read the same x (decode's q/k/v and
 * gate/up) in ONE dispatch of the aligned GPU kernel: the parts' workgroups side by side in one
 * grid, so the narrow k and v products (1024 rows for an 8B model: 256 workgroups each, too few to
 * keep an H100's memory busy) run beside q instead of after it, and one launch replaces three.
 * x (M, K) f32 with row stride K, 1 ≤ M ≤ 16; every W (N_j, K) of one dtype. Returns false and
 * records nothing where this does not apply (rows not 16-byte aligned, the CPU form, too many
 * storage buffers for the device): the caller then runs gemv per part. With `norm`, every part
 * reads rmsnorm(x) (GemvNorm: the decode layer's norm and its q/k/v or gate/up products, one
 * dispatch); a norm weight that is not f32 of K elements at a 16-byte offset declines too.
 */
export function gemvGroup(rec: Recorder, x: Tensor, M: number, K: number, parts: readonly GemvPart[], cfg?: GemvConfig, norm?: GemvNorm): boolean {
  return recordGroup(rec, x, M, K, parts, parts.map((p) => p.y), cfg, norm, false);
}

/**
 * act (M, N) = silu(x·W_gateᵀ (+ b)) · (x·W_upᵀ (+ b)) in ONE dispatch of the grouped kernel (decode's
 * gate/up products and SwiGLU; gate and up are never written), with `norm` rmsnorm(x) for x: a decode
 * layer's norm, gate/up and SwiGLU, three dispatches, become one. Same conditions as gemvGroup (and
 * gemvGrouping on), gate and up of one shape and dtype, act f32 with M·N elements or more; returns
 * false and records nothing otherwise.
 */
export function gemvGateUpSwiglu(
  rec: Recorder, x: Tensor, M: number, K: number, gate: Omit<GemvPart, "y">, up: Omit<GemvPart, "y">, act: Tensor, cfg?: GemvConfig, norm?: GemvNorm,
): boolean {
  return gemvGateUpSwigluSupported(rec.rt, x, M, K, gate, up, act, cfg, norm) && recordGroup(rec, x, M, K, [gate, up], [act], cfg, norm, true);
}

/** Whether gemvGateUpSwiglu records with these arguments (for callers that must decide before recording what it reads). */
export function gemvGateUpSwigluSupported(
  rt: GpuRuntime, x: Tensor, M: number, K: number, gate: Omit<GemvPart, "y">, up: Omit<GemvPart, "y">, act: Tensor, cfg?: GemvConfig, norm?: GemvNorm,
): boolean {
  return gate.w.shape.join() === up.w.shape.join() && groupApplies(rt, x, M, K, [gate, up], [act], cfg, norm);
}

/** The conditions of gemvGroup and gemvGateUpSwiglu (recordGroup's arguments). */
function groupApplies(
  rt: GpuRuntime, x: Tensor, M: number, K: number, parts: readonly Omit<GemvPart, "y">[], outs: readonly Tensor[],
  cfg: GemvConfig | undefined, norm: GemvNorm | undefined,
): boolean {
  const n = parts.length;
  if (!gemvGrouping.enabled || n < 2 || n > 3 || M < 1 || M > MAX_M || K <= 0) return false;
  if (norm && (norm.weight.dtype !== "f32" || norm.weight.numel !== K || norm.weight.byteOffset % 16 !== 0)) return false;
  const dtype = parts[0]!.w.dtype;
  const per = dtype === "f32" ? 4 : 8;
  if ((cfg?.form ?? (rt.caps.isSoftware ? "row" : "lanes")) !== "lanes") return false;
  if (x.dtype !== "f32" || K % per !== 0 || K % 4 !== 0 || x.byteOffset % 16 !== 0 || M * K > x.numel) return false;
  if (rt.caps.limits.maxStorageBuffersPerShaderStage < 1 + 2 * n + outs.length + (norm ? 1 : 0)) return false;
  for (const { w, bias } of parts) {
    const N = w.shape[0]!;
    if (w.dtype !== dtype || !["f32", "f16", "bf16"].includes(dtype) || w.shape.length !== 2 || w.shape[1] !== K || w.byteOffset % 16 !== 0) return false;
    if (bias && (bias.dtype !== "f32" || bias.numel !== N)) return false;
  }
  const Ns = parts.map((p) => p.w.shape[0]!);
  if (outs.some((y, j) => y.dtype !== "f32" || y.numel < M * Ns[j]!)) return false;
  // Each y is a read_write binding: two views of one buffer would be aliased writable bindings.
  return new Set(outs.map((y) => y.buffer)).size === outs.length;
}

/** gemvGroup and gemvGateUpSwiglu: `parts` (their y unread) and the output tensors the kernel writes. */
function recordGroup(
  rec: Recorder, x: Tensor, M: number, K: number, parts: readonly Omit<GemvPart, "y">[], outs: readonly Tensor[],
  cfg: GemvConfig | undefined, norm: GemvNorm | undefined, swiglu: boolean,
): boolean {
  const rt = rec.rt;
  if (!groupApplies(rt, x, M, K, parts, outs, cfg, norm)) return false;
  const n = parts.length;
  const dtype = parts[0]!.w.dtype;
  const per = dtype === "f32" ? 4 : 8;
  const Ns = parts.map((p) => p.w.shape[0]!);
  const { MS, S } = mSplit(M);
  const RT = cfg?.rows ?? defaultRows(Ns.reduce((a, b) => a + b, 0), G / S);
  const perWg = (G / S) * RT;
  // swiglu: each workgroup makes one block of columns of both parts; else the parts' blocks side by side
  const blocks = swiglu ? [cdiv(Ns[0]!, perWg)] : Ns.map((N) => cdiv(N, perWg));
  const firsts = blocks.map((_, j) => blocks.slice(0, j).reduce((a, b) => a + b, 0)); // each part's first block
  const groups = blocks.reduce((a, b) => a + b, 0);
  const gridX = Math.min(groups, rt.caps.limits.maxComputeWorkgroupsPerDimension);
  const gridY = cdiv(groups, gridX);
  const flags = parts.reduce((f, p, j) => f | (p.bias ? 1 << j : 0), 0);
  const params = new Params(20)
    .u32(M).u32(0).u32(K).u32(K)
    .u32(K / per).u32(0).u32(dtype === "f32" ? 0 : dtype === "f16" ? 1 : 2).u32(flags)
    .f32(0).u32(K / per).u32(gridX).u32(S)
    .u32(Ns[0]!).u32(Ns[1]!).u32(Ns[2] ?? 0).u32(firsts[1] ?? groups)
    .u32(firsts[2] ?? groups).f32(norm?.eps ?? 0).u32(0).u32(0);
  const ph = rt.placeholder;
  const label = `gemv group ${M}x(${Ns.join(swiglu ? "|" : "+")})x${K} ${dtype} r${RT}${norm ? " +rmsnorm" : ""}${swiglu ? " +swiglu" : ""}`;
  rec.dispatch(label, rt.pipeline(groupSource(MS, RT, n, !!norm, swiglu)), params.buffer,
    [x, ...parts.map((p) => p.w), ...parts.map((p) => p.bias ?? ph), ...outs, ...(norm ? [norm.weight] : [])], [gridX, gridY, 1]);
  return true;
}
