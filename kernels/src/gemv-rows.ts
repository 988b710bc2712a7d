/**
 * The aligned GEMV kernel's building blocks, shared by gemv.ts (one product, gemv()) and gemv-group.ts
 * (two or three products that read one x, in one dispatch): the workgroup layout (WG threads = G row
 * groups of TK lanes along K), the x slices (mSplit), the rows of W a thread takes (defaultRows), the
 * words in flight (gemvDepth), the prologues (GemvPrologue: RMSNorm or SwiGLU read in front of the
 * product) and the row function itself (vecParts). gemv.ts says how the kernel reads W and reduces.
 */
import { cdiv } from "./params.ts";
import type { Tensor } from "./tensor.ts";

export const WG = 128;
export const TK = 32; // lanes along K per row group
export const G = WG / TK; // row groups per workgroup
export const JB_MAX = 16; // accumulators reduced per round through workgroup memory
export const MAX_M = 16;

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
export function mSplit(M: number): { MS: number; S: number } {
  return M <= 8 ? { MS: M, S: 1 } : { MS: Math.ceil(M / 2), S: 2 };
}


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
export type PrologueKind = "" | "norm" | "swiglu";
export const prologueKind = (pre: GemvPrologue | undefined): PrologueKind => (!pre ? "" : "norm" in pre ? "norm" : "swiglu");

/** The prologue's binding (5) and helpers: the norm weight g or up, as vec4 words like x. */
export const normDecl = (binding: number) => `@group(0) @binding(${binding}) var<storage, read> nw: array<vec4<f32>>;`;
export const PROLOGUE_DECLS: Record<PrologueKind, string> = {
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
export const depthTag = () => (gemvDepth.words === 8 ? "" : `_d${gemvDepth.words}`);

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
export function vecParts(MS: number, RT: number, pk: PrologueKind = "") {
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

/**
 * Rows of W per thread: more where N still leaves enough workgroups to fill the GPU (2 per SM
 * on the H200's 132 SMs); `sets` = row sets per workgroup (4 / S).
 */
export function defaultRows(N: number, sets: number): 1 | 2 | 4 {
  if (cdiv(N, sets * 4) >= 528) return 4;
  if (cdiv(N, sets * 2) >= 264) return 2;
  return 1;
}
