/**
 * Attention forward on tensor cores (subgroup matrices, f16 operands, f32 accumulation), the
 * same contract as attentionForward in attention.ts (packed sequences, GQA, padding, sliding
 * window, lse saved for the backward). q, k and v are rounded to f16 first.
 *
 * Two sweeps over the key tiles instead of an online softmax, because a subgroup matrix cannot
 * be rescaled row by row: sweep 1 computes S = q·kᵀ tile by tile and each row's max and
 * Σ exp (so lse); sweep 2 recomputes S, forms the exact probabilities P = exp(scale·S − lse) in
 * f16 and accumulates O += P·V in result matrices, which are already normalised at the end.
 *
 * Workgroup: 4 subgroups × 32 lanes, 64 queries of one head (16 rows per subgroup); key tiles
 * of 64. S goes through workgroup memory for the masked softmax, two lanes per row.
 * Needs T and hd multiples of 16 (attentionForward falls back to the f32 kernel otherwise).
 */
import { hasTensorCoreMatmul, toF16 } from "./matmul-subgroup.ts";
import { chunkStore } from "./staged-stores.ts";
import { cdiv, flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import type { Tensor } from "./tensor.ts";

const BQ = 64; // queries per workgroup
const BK = 64; // keys per tile

/** Enables, the Params block of attention.ts and the masking helpers, shared by the three passes. */
function header(hd: number): string {
  return `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
// Matrix offsets derive from the subgroup index (uniform within each subgroup, as required).
diagnostic(off, chromium.subgroup_matrix_uniformity);
diagnostic(off, subgroup_uniformity);

const HD = ${hd}u;
const NEG = -3.0e38;
const NEG_HALF = -1.0e38;

struct Params {
  T: u32, nH: u32, nKV: u32, group: u32,
  window: u32, scale: f32, _a: u32, _b: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

fn allowed(i: u32, si: i32, j: u32, sj: i32) -> bool {
  return si >= 0 && sj == si && j <= i && (p.window == 0u || i - j < p.window);
}
fn seqAt(t: u32) -> i32 {
  if (t < p.T) { return seq[t]; }
  return -2;
}
fn firstReal(t0: u32, t1: u32) -> u32 {
  for (var t = t0; t < t1; t++) { if (seq[t] >= 0) { return t; } }
  return t1;
}
// Every row of [r0, r1) sees every key of [k0, k0 + 64) (the full-tile form, attentionTcForm.fullTiles):
// the keys precede the rows, inside the window, and the first key and the last row share a sequence,
// so (sequences being contiguous runs of ids, as the tile loops already assume) every pair does.
// Uniform: the masking of such a tile is skipped.
fn fullTile(r0: u32, r1: u32, k0: u32) -> bool {
  if (r1 != r0 + 64u || r1 > p.T || k0 + 63u > r0) { return false; }
  let s = seq[k0];
  return s >= 0 && seq[r1 - 1u] == s && (p.window == 0u || r1 - 1u - k0 < p.window);
}
`;
}

const ids = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Workgroup layout of a 64-wide score tile (Sw f32, Pw/DSw f16), where lanes 2r and 2r+1 share
 * row r in the softmax phase. Plain: row strides of 64 and each lane walks a contiguous half of the
 * row, so the 16 rows of a subgroup sit in one memory bank (stride 64 floats = 256 bytes) and every
 * scalar access is a 32-way bank conflict. Padded: strides of 64 + 4 floats and 64 + 8 halves
 * (row starts stay 16-byte aligned for the subgroup-matrix stores and loads) and the lanes take
 * interleaved columns 2i + half, rotated by one pair for rows 8-15 of the subgroup, so the 32 lanes'
 * f32 accesses fall in 32 distinct banks (and the f16 ones in 16 distinct words).
 */
interface TileLayout {
  /** Row stride of the f32 tile (floats) and of the f16 tiles (halves). */
  sLd: number;
  pLd: number;
  /** WGSL for the tile column of this lane's i-th element (i < 32; needs c0, half, rot in scope). */
  col: (i: string) => string;
  /** Row stride (floats) of the one-sweep forward's P·V tile, and the O column of this lane's i-th value. */
  oLd: (hd: number) => number;
  oCol: (i: string, hd: number) => string;
  tag: string;
}
function tileLayout(padded: boolean): TileLayout {
  return padded
    ? { sLd: 68, pLd: 72, col: (i) => `(2u * ((${i} + rot) & 31u) + half)`, oLd: (hd) => hd + 4, oCol: (i) => `(2u * ${i} + half)`, tag: "_pad" }
    : { sLd: 64, pLd: 64, col: (i) => `(c0 + ${i})`, oLd: (hd) => hd, oCol: (i, hd) => `(half * ${hd / 2}u + ${i})`, tag: "" };
}
/** The softmax lanes' column helpers: c0 (plain halves), half and rot (padded interleave). */
const LANE_COLUMNS = `  let half = lid % 2u;
  let c0 = half * 32u;
  let rot = ((lid / 2u) >> 3u) & 1u;`;

/** WGSL for the uniform `full` of a tile (fullTile) in the full-tile form, else the constant false. */
const fullOf = (fast: boolean, r0: string, r1: string, k0: string) => `let full = ${fast ? `fullTile(${r0}, ${r1}, ${k0})` : "false"};`;

/**
 * Row r's scaled score at column `c` after maskedTileMax: that pass writes scale·S (or NEG where
 * masked) back into Sw, except in a full tile, which keeps the raw S (no write-back) and is
 * scaled here, the same product and so the same bits.
 */
const tileScore = (L: TileLayout, c: string) => `select(Sw[r * ${L.sLd}u + ${c}], p.scale * Sw[r * ${L.sLd}u + ${c}], full)`;

function forwardSource(hd: number, L: TileLayout, fast = false): KernelSource {
  const D = hd / 16; // 16-wide blocks along the head dim
  const J = BK / 16; // 16-key blocks per tile
  const scores = keyTileProduct(hd, "ql", "k16", L); // S = q·kᵀ into Sw
  const code = `${forwardOpening(hd, BQ * L.sLd, "scores of the tile (BQ, BK)", "probabilities of the tile", L)}
${ids(D).map((d) => `  var o${d} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
  var m = NEG;
  var l = 0.0;
  let r0 = firstReal(q0, rEnd);
  if (r0 < rEnd) {
    let s0 = seq[r0];
    // sweep 1: row max and Σ exp over all visible keys
${keyTileLoop(`${maskedTileMax(hd, L, false, fast)}
      var sum = 0.0;
      for (var i = 0u; i < ${BK / 2}u; i++) {
        let x = ${tileScore(L, L.col("i"))};
        sum += select(0.0, exp(x - mNew), x > NEG_HALF);
      }
      sum += subgroupShuffleXor(sum, 1u);
      l = l * select(1.0, exp(m - mNew), m > NEG_HALF) + sum;
      m = mNew;
      workgroupBarrier();`)}
    let L = select(0.0, m + log(l), l > 0.0);
    // sweep 2: P = exp(scale·S − lse) exactly normalised; O += P·V
${keyTileLoop(`      if (lid < ${BK}u) { colSeq[lid] = seqAt(k0 + lid); }
      ${fullOf(fast, "q0", "rEnd", "k0")}
${scores}
      for (var i = 0u; i < ${BK / 2}u; i++) {
        let c = ${L.col("i")};
        var pr = 0.0;
        if (full || allowed(ti, si, k0 + c, colSeq[c])) { pr = exp(p.scale * Sw[r * ${L.sLd}u + c] - L); }
        Pw[r * ${L.pLd}u + c] = f16(pr);
      }
      workgroupBarrier();
      for (var j = 0u; j < ${J}u; j++) {
        let kRow = min(k0 + 16u * j, p.T - 16u);
        let pl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pw, sg * ${16 * L.pLd}u + 16u * j, ${L.pLd}u);
${ids(D).map((d) => `        o${d} = subgroupMatrixMultiplyAccumulate(pl, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&v16, kRow * ldk + g * HD + ${16 * d}u, ldk), o${d});`).join("\n")}
      }
      workgroupBarrier();`)}
  }
  if (ti < p.T && lid % 2u == 0u) { lse[ti * p.nH + h] = select(0.0, m + log(l), l > 0.0); }
  if (q0 + 16u * sg < p.T) {
${ids(D).map((d) => `    subgroupMatrixStore<row_major>(&out, qRow * ldq + h * HD + ${16 * d}u, o${d}, ldq);`).join("\n")}
  }
}
`;
  return { name: `attention_tc_hd${hd}${L.tag}${fast ? "_ft" : ""}`, code };
}

/**
 * A forward key tile's first part, shared by both forwards: the tile's sequence ids, S = q·kᵀ
 * into Sw, each row's scaled scores with the invisible ones set to NEG (written back to Sw), and
 * the row's new running max mNew (over this lane's half and its partner's).
 */
function maskedTileMax(hd: number, L: TileLayout, staged: boolean, fast: boolean, diag?: AttentionDiag, keep = false): string {
  if (diag === "no-max") {
    return `      if (lid < ${BK}u) { colSeq[lid] = seqAt(k0 + lid); }
      ${fullOf(fast, "q0", "rEnd", "k0")}
${keyTileProduct(hd, "ql", "k16", L, staged ? "Ks" : undefined)}
      let mNew = max(m, 1.0);`;
  }
  return `      if (lid < ${BK}u) { colSeq[lid] = seqAt(k0 + lid); }
      ${fullOf(fast, "q0", "rEnd", "k0")}
${diag === "no-scores" ? "      workgroupBarrier();" : keyTileProduct(hd, "ql", "k16", L, staged ? "Ks" : undefined)}
      var tileMax = NEG;
${keep ? `      var xs = array<f32, ${BK / 2}>(); // this lane's scaled, masked scores (regScores)
` : ""}      for (var i = 0u; i < ${BK / 2}u; i++) {
        let c = ${L.col("i")};
        let x = select(NEG, p.scale * Sw[r * ${L.sLd}u + c], full || allowed(ti, si, k0 + c, colSeq[c]));
${keep ? "        xs[i] = x;" : `        if (!full) { Sw[r * ${L.sLd}u + c] = x; } // a full tile keeps the raw scores (tileScore)`}
        tileMax = max(tileMax, x);
      }
      let mNew = max(m, max(tileMax, subgroupShuffleXor(tileMax, 1u)));`;
}

/**
 * The forwards' shared opening: bindings, workgroup arrays (Sw of `swFloats` f32, Pw, colSeq), and
 * main's setup up to the per-row softmax lanes: head h of kv group g, query block q0, this
 * subgroup's 16 query rows loaded as HD/16 left matrices, lanes 2r and 2r+1 sharing row r (keys c0 …
 * c0 + BK/2 − 1 of a tile), row ti of sequence si.
 */
function forwardOpening(hd: number, swFloats: number, swComment: string, pwComment: string, L: TileLayout, decls = ""): string {
  return `${header(hd)}
@group(0) @binding(1) var<storage, read> q16: array<f16>;   // (T, nH, HD)
@group(0) @binding(2) var<storage, read> k16: array<f16>;   // (T, nKV, HD)
@group(0) @binding(3) var<storage, read> v16: array<f16>;   // (T, nKV, HD)
@group(0) @binding(4) var<storage, read> seq: array<i32>;   // (T)
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (T, nH, HD)
@group(0) @binding(6) var<storage, read_write> lse: array<f32>; // (T, nH)

var<workgroup> Sw: array<f32, ${swFloats}>;  // ${swComment}
var<workgroup> Pw: array<f16, ${BQ * L.pLd}>;  // ${pwComment}
var<workgroup> colSeq: array<i32, ${BK}>;
${decls}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wg.y;
  let g = h / p.group;
  let q0 = wg.x * ${BQ}u;
  let rEnd = min(q0 + ${BQ}u, p.T);
  let ldq = p.nH * HD;
  let ldk = p.nKV * HD;
  let sg = lid / 32u;
  let qRow = min(q0 + 16u * sg, p.T - 16u); // clamped: a block past T computes a copy and stores nothing
${ids(hd / 16).map((d) => `  let ql${d} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&q16, qRow * ldq + h * HD + ${16 * d}u, ldq);`).join("\n")}
  // Softmax phase: lanes 2r and 2r+1 (same subgroup) share row r, ${BK / 2} columns each.
  let r = lid / 2u;
${LANE_COLUMNS}
  let ti = q0 + r;
  let si = seqAt(ti);`;
}

/**
 * The forward in ONE sweep over the key tiles (online softmax), for measuring against the two-sweep
 * forward above. A subgroup matrix cannot be rescaled row by row, so O lives in the lanes' own
 * registers instead: per tile, S = q·kᵀ (tensor cores) → Sw; lanes 2r, 2r+1 update row r's running
 * max m and sum l, write P = exp(scale·S − m) (unnormalised, ≤ 1) in f16 to Pw, and keep α =
 * exp(m_old − m); PV = P·V (tensor cores, fresh accumulators) is stored to Sw (free again), and
 * each lane adds its half of row r into O·α. At the end O/l is written, lse = m + log l.
 * Same masking, padding (exact zeros) and clamping rules as the two-sweep forward.
 */
function forwardOneSweepSource(hd: number, L: TileLayout, staged = false, fast = false, diag?: AttentionDiag, regScores = false): KernelSource {
  const keep = regScores && diag !== "no-max"; // the no-max diag computes no scores to keep
  const D = hd / 16, J = BK / 16, HALF = hd / 2, OLD = L.oLd(hd);
  const st = staged ? stageTiles(hd, [{ src: "k16", dst: "Ks", ld: "ldk", head: "g" }, { src: "v16", dst: "Vs", ld: "ldk", head: "g" }]) : undefined;
  const vBlock = (d: number) => st
    ? stagedRowMajor("Vs", hd, d)
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&v16, kRow * ldk + g * HD + ${16 * d}u, ldk)`;
  const loop = st ? (body: string) => stagedKeyTileLoop(body, st, diag === "no-stage") : keyTileLoop;
  const code = `${forwardOpening(hd, BQ * Math.max(L.sLd, OLD), "the tile's scores (BQ, BK), then its P·V (BQ, HD)", "unnormalised probabilities of the tile", L, st?.decls)}
  // and ${HALF} of row r's O columns (o[i] is column ${L.oCol("i", hd)})
  var o = array<f32, ${HALF}>();
${st?.regs ?? ""}
  var m = NEG;
  var l = 0.0;
  let r0 = firstReal(q0, rEnd);
  if (r0 < rEnd) {
    let s0 = seq[r0];
${loop(diagBody(diag, `${maskedTileMax(hd, L, staged, fast, diag, keep)}
      let alpha = select(1.0, exp(m - mNew), m > NEG_HALF);
      var sum = 0.0;
${diag === "no-softmax" ? "" : `      for (var i = 0u; i < ${BK / 2}u; i++) {
        let c = ${L.col("i")};
        let x = ${keep ? "xs[i]" : tileScore(L, "c")};
        let pr = select(0.0, exp(x - mNew), x > NEG_HALF);
        Pw[r * ${L.pLd}u + c] = f16(pr);
        sum += pr;
      }`}
      sum += subgroupShuffleXor(sum, 1u);
      l = l * alpha + sum;
      m = mNew;
      workgroupBarrier();
${diag === "no-pv" ? "" : `${ids(D).map((d) => `      var pv${d} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
      for (var j = 0u; j < ${J}u; j++) {
        let kRow = min(k0 + 16u * j, p.T - 16u);
        let pl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pw, sg * ${16 * L.pLd}u + 16u * j, ${L.pLd}u);
${ids(D).map((d) => `        pv${d} = subgroupMatrixMultiplyAccumulate(pl, ${vBlock(d)}, pv${d});`).join("\n")}
      }
${ids(D).map((d) => `      subgroupMatrixStore<row_major>(&Sw, sg * ${16 * OLD}u + ${16 * d}u, pv${d}, ${OLD}u);`).join("\n")}`}
      workgroupBarrier();
${diag === "no-oupdate" ? "" : `      for (var i = 0u; i < ${HALF}u; i++) { o[i] = o[i] * alpha + Sw[r * ${OLD}u + ${L.oCol("i", hd)}]; }`}
      workgroupBarrier();`))}
  }
  if (ti < p.T) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var i = 0u; i < ${HALF}u; i++) { out[ti * ldq + h * HD + ${L.oCol("i", hd)}] = o[i] * inv; }
    if (lid % 2u == 0u) { lse[ti * p.nH + h] = select(0.0, m + log(l), l > 0.0); }
  }
}
`;
  return { name: `attention_tc_1sweep_hd${hd}${L.tag}${st?.tag ?? ""}${fast ? "_ft" : ""}${keep ? "_rs" : ""}${diag ? `_${diag}` : ""}`, code: st ? st.retype(code) : code };
}

/**
 * For measurements only (results wrong by design): the one-sweep forward with one phase of its key
 * tile loop left out, as the GEMM's stage diags (TcConfig.diag) do (session 14 added S = q·kᵀ's
 * products `no-scores`, the masked max loop `no-max` and the staged K/V copy after the first tile
 * `no-stage`, which split session 13's "two thirds"): the softmax phase (exp and the
 * P stores), the P·V products and their store, the update of O from workgroup memory, or every
 * workgroup barrier of the loop. `TUNELOOM_ATTN_DIAG` picks one; the device script's attn-stages.
 */
export type AttentionDiag = "no-softmax" | "no-pv" | "no-oupdate" | "no-barriers" | "no-scores" | "no-max" | "no-stage";
const ATTENTION_DIAGS: readonly AttentionDiag[] = ["no-softmax", "no-pv", "no-oupdate", "no-barriers", "no-scores", "no-max", "no-stage"];
export function attentionDiagFrom(v: string | undefined): AttentionDiag | undefined {
  if (v === undefined || v === "") return undefined;
  if (!(ATTENTION_DIAGS as readonly string[]).includes(v)) throw new Error(`TUNELOOM_ATTN_DIAG must be one of ${ATTENTION_DIAGS.join(", ")}, got ${JSON.stringify(v)}`);
  return v as AttentionDiag;
}
/** The loop body with the barriers taken out for the no-barriers diag. */
const diagBody = (diag: AttentionDiag | undefined, body: string) => (diag === "no-barriers" ? body.replaceAll("workgroupBarrier();", "") : body);

/**
 * Key-tile loop of the query-block passes (forward sweeps, backward dq): from the diagonal down
 * until the first visible key of the block's first real row. A block of its own so a pass can
 * sweep twice.
 */
function keyTileLoop(body: string): string {
  return `    {
    var kt = (rEnd - 1u) / ${BK}u;
    loop {
      let k0 = kt * ${BK}u;
      let kLast = k0 + ${BK - 1}u;
      if (kLast < r0 && (seqAt(kLast) != s0 || (p.window != 0u && r0 - kLast >= p.window))) { break; }
${body}
      if (kt == 0u) { break; }
      kt -= 1u;
    }
    }`;
}

/**
 * This subgroup's 16 query rows × the tile's 64 keys of `left`·`right`ᵀ (left: HD/16 left
 * matrices named left0.., right: a (T, nKV, HD) f16 buffer read column-major), stored to Sw;
 * ends with a barrier. S = q·kᵀ and dP = dout·vᵀ.
 */
function keyTileProduct(hd: number, left: string, right: string, L: TileLayout, staged?: string): string {
  // Staged: the tile's rows are in workgroup memory (`staged`, stageTiles); all HD/16 right
  // matrices of a 16-key block are loaded before their products.
  if (staged) {
    return `      for (var j = 0u; j < ${BK / 16}u; j++) {
${ids(hd / 16).map((d) => `        let rt${d} = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&${staged}, j * ${16 * stagedLd(hd)}u + ${16 * d}u, ${stagedLd(hd)}u);`).join("\n")}
        var acc = subgroup_matrix_result<f32, 16, 16>();
${ids(hd / 16).map((d) => `        acc = subgroupMatrixMultiplyAccumulate(${left}${d}, rt${d}, acc);`).join("\n")}
        subgroupMatrixStore<row_major>(&Sw, sg * ${16 * L.sLd}u + 16u * j, acc, ${L.sLd}u);
      }
      workgroupBarrier();`;
  }
  return `      for (var j = 0u; j < ${BK / 16}u; j++) {
        let kRow = min(k0 + 16u * j, p.T - 16u);
        var acc = subgroup_matrix_result<f32, 16, 16>();
${ids(hd / 16).map((d) => `        acc = subgroupMatrixMultiplyAccumulate(${left}${d}, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&${right}, kRow * ldk + g * HD + ${16 * d}u, ldk), acc);`).join("\n")}
        subgroupMatrixStore<row_major>(&Sw, sg * ${16 * L.sLd}u + 16u * j, acc, ${L.sLd}u);
      }
      workgroupBarrier();`;
}

/** Row stride (halves) of a staged 64-row tile: HD + 8, so 16-byte aligned rows spread over the banks. */
const stagedLd = (hd: number) => hd + 8;

/**
 * Staging (attentionTcForm.staged): the 64 rows of a key tile (forward, dq: k and v) or query
 * tile (dkv: q) of a (T, heads, HD) f16 buffer, copied once per tile into workgroup memory (rows of
 * HD + 8 halves) with 16-byte loads, 8 halves per lane each (HD/16 loads per lane per buffer), and
 * read from there by all four subgroups, instead of every subgroup loading every 16×16 block from
 * global memory (subgroup-matrix loads from storage buffers are slow on NVIDIA's driver: a GEMM fed
 * by them ran at 33 TFLOP/s against 182 staged this way, session 7). The next tile is loaded into
 * registers before the current tile's products (prefetch). Rows past T are zeros. The staged
 * sources are bound as vec4<u32> arrays (`retype`), so the pass reads them only through the stage.
 */
interface TileStager {
  /** The sources' name suffix: `_st`. */
  tag: string;
  /** Workgroup arrays (module scope) and the prefetch registers (function scope). */
  decls: string;
  regs: string;
  /** Loads the tile whose first row is `row0` into the registers. */
  load: (row0: string) => string;
  /** Stores the registers into the workgroup arrays (a barrier must follow before they are read). */
  store: string;
  /** The shader with the staged sources' bindings declared as vec4<u32> (8 halves) arrays. */
  retype: (code: string) => string;
}
function stageTiles(hd: number, arrays: { src: string; dst: string; ld: string; head: string }[]): TileStager {
  const LD = stagedLd(hd), C8 = hd / 8, PER = (64 * C8) / 128; // 16-byte chunks per row, per lane
  const each = (f: (a: (typeof arrays)[number], i: number) => string) => arrays.flatMap((a) => ids(PER).map((i) => f(a, i))).join("\n");
  // Chunk i of this lane: row e / C8 of the tile, halves (e % C8)·8 …, e = lid + 128·i.
  const at = (i: number) => `let e = lid + ${128 * i}u; let row = e / ${C8}u; let c8 = e % ${C8}u;`;
  return {
    tag: "_st",
    decls: arrays.map((a) => `var<workgroup> ${a.dst}: array<f16, ${64 * LD}>; // staged rows of ${a.src} (64, HD + 8)`).join("\n"),
    regs: arrays.map((a) => `  var st_${a.dst} = array<vec4<u32>, ${PER}>();`).join("\n"),
    load: (row0) => each((a, i) => `      { ${at(i)} let t = ${row0} + row; var w = vec4<u32>(0u); if (t < p.T) { w = ${a.src}[(t * ${a.ld} + ${a.head} * HD) / 8u + c8]; } st_${a.dst}[${i}] = w; }`),
    store: each((a, i) => `      { ${at(i)} let w = st_${a.dst}[${i}]; let base = row * ${LD}u + c8 * 8u;
        ${chunkStore(a.dst, "base", "w")} }`),
    retype: (code) => arrays.reduce((c, a) => {
      const decl = new RegExp(`(var<storage, read> ${a.src}: )array<f16>;`);
      if (!decl.test(c)) throw new Error(`stageTiles: no f16 binding named ${a.src}`);
      return c.replace(decl, "$1array<vec4<u32>>; // f16, 8 per element, read only by the staged copy");
    }, code),
  };
}

/** A right matrix (k = 16 rows, n = HD block d) of a staged tile, row-major: P·V, dS·K, Pᵀ·dout, dSᵀ·q. */
const stagedRowMajor = (dst: string, hd: number, d: number) =>
  `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&${dst}, j * ${16 * stagedLd(hd)}u + ${16 * d}u, ${stagedLd(hd)}u)`;

/**
 * keyTileLoop with the tile's rows staged: store, barrier, prefetch the next visible tile, body.
 * `noRestage` (the no-stage diag, wrong results by design): only the first tile is loaded and stored.
 */
function stagedKeyTileLoop(body: string, st: TileStager, noRestage = false): string {
  const first = `(rEnd - 1u) / ${BK}u`;
  return `    {
    var kt = ${first};
${st.load(`kt * ${BK}u`)}
    loop {
      let k0 = kt * ${BK}u;
${noRestage ? `      if (kt == ${first}) {
${st.store}
      }` : st.store}
      workgroupBarrier();
      var more = false;
      if (kt > 0u) {
        let kLastN = k0 - 1u; // the last key of the next tile
        more = !(kLastN < r0 && (seqAt(kLastN) != s0 || (p.window != 0u && r0 - kLastN >= p.window)));
      }
      if (more${noRestage ? " && false" : ""}) {
${st.load(`k0 - ${BK}u`)}
      }
${body}
      if (!more) { break; }
      kt -= 1u;
    }
    }`;
}

/**
 * Backward, pass 1 (per 64 queries of one head): D = rowsum(dout ∘ out) (saved for pass 2) and
 * dq = scale·dS·k with S, dP = dout·vᵀ and dq on tensor cores; dS = P ∘ (dP − D) in f32,
 * rounded to f16 (with the scale folded in) for the last product.
 */
function backwardDqSource(hd: number, L: TileLayout, staged = false, fast = false): KernelSource {
  const D = hd / 16, J = BK / 16;
  const st = staged ? stageTiles(hd, [{ src: "k16", dst: "Ks", ld: "ldk", head: "g" }, { src: "v16", dst: "Vs", ld: "ldk", head: "g" }]) : undefined;
  const product = (left: string, right: string) => keyTileProduct(hd, left, right, L, st ? (right === "k16" ? "Ks" : "Vs") : undefined);
  const kBlock = (d: number) => st
    ? stagedRowMajor("Ks", hd, d)
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&k16, kRow * ldk + g * HD + ${16 * d}u, ldk)`;
  const loop = st ? (body: string) => stagedKeyTileLoop(body, st) : keyTileLoop;
  const code = `${header(hd)}
@group(0) @binding(1) var<storage, read> q16: array<f16>;     // (T, nH, HD)
@group(0) @binding(2) var<storage, read> k16: array<f16>;     // (T, nKV, HD)
@group(0) @binding(3) var<storage, read> v16: array<f16>;     // (T, nKV, HD)
@group(0) @binding(4) var<storage, read> seq: array<i32>;     // (T)
@group(0) @binding(5) var<storage, read> out_in: array<f32>;  // (T, nH, HD)
@group(0) @binding(6) var<storage, read> lse_in: array<f32>;  // (T, nH)
@group(0) @binding(7) var<storage, read> dout: array<f32>;    // (T, nH, HD)
@group(0) @binding(8) var<storage, read> do16: array<f16>;    // (T, nH, HD) dout rounded
@group(0) @binding(9) var<storage, read_write> dq: array<f32>;   // (T, nH, HD)
@group(0) @binding(10) var<storage, read_write> dsum: array<f32>; // (T, nH)

var<workgroup> Sw: array<f32, ${BQ * L.sLd}>;   // S, then dP, of the tile
var<workgroup> DSw: array<f16, ${BQ * L.pLd}>;  // scale·dS of the tile
var<workgroup> colSeq: array<i32, ${BK}>;
${st?.decls ?? ""}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wg.y;
  let g = h / p.group;
  let q0 = wg.x * ${BQ}u;
  let rEnd = min(q0 + ${BQ}u, p.T);
  let ldq = p.nH * HD;
  let ldk = p.nKV * HD;
  let sg = lid / 32u;
  let qRow = min(q0 + 16u * sg, p.T - 16u);
${ids(D).map((d) => `  let ql${d} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&q16, qRow * ldq + h * HD + ${16 * d}u, ldq);`).join("\n")}
${ids(D).map((d) => `  let dl${d} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&do16, qRow * ldq + h * HD + ${16 * d}u, ldq);`).join("\n")}
  let r = lid / 2u;
${LANE_COLUMNS}
  let ti = q0 + r;
  let si = seqAt(ti);
  // D = rowsum(dout ∘ out), half the head dim per lane
  var Dh = 0.0;
  var L = 0.0;
  if (ti < p.T) {
    let base = (ti * p.nH + h) * HD + (lid % 2u) * ${hd / 2}u;
    for (var d = 0u; d < ${hd / 2}u; d++) { Dh = fma(dout[base + d], out_in[base + d], Dh); }
    L = lse_in[ti * p.nH + h];
  }
  let Drow = Dh + subgroupShuffleXor(Dh, 1u);
  if (ti < p.T && lid % 2u == 0u) { dsum[ti * p.nH + h] = Drow; }
${ids(D).map((d) => `  var dq${d} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
  var pr = array<f32, ${BK / 2}>();
${st?.regs ?? ""}
  let r0 = firstReal(q0, rEnd);
  if (r0 < rEnd) {
    let s0 = seq[r0];
${loop(`      if (lid < ${BK}u) { colSeq[lid] = seqAt(k0 + lid); }
      ${fullOf(fast, "q0", "rEnd", "k0")}
${product("ql", "k16")}
      for (var c = 0u; c < ${BK / 2}u; c++) {
        let cc = ${L.col("c")};
        pr[c] = select(0.0, exp(p.scale * Sw[r * ${L.sLd}u + cc] - L), full || allowed(ti, si, k0 + cc, colSeq[cc]));
      }
      workgroupBarrier();
${product("dl", "v16")}
      for (var c = 0u; c < ${BK / 2}u; c++) {
        let cc = ${L.col("c")};
        DSw[r * ${L.pLd}u + cc] = f16(p.scale * pr[c] * (Sw[r * ${L.sLd}u + cc] - Drow));
      }
      workgroupBarrier();
      for (var j = 0u; j < ${J}u; j++) {
        let kRow = min(k0 + 16u * j, p.T - 16u);
        let dsl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&DSw, sg * ${16 * L.pLd}u + 16u * j, ${L.pLd}u);
${ids(D).map((d) => `        dq${d} = subgroupMatrixMultiplyAccumulate(dsl, ${kBlock(d)}, dq${d});`).join("\n")}
      }
      workgroupBarrier();`)}
  }
  if (q0 + 16u * sg < p.T) {
${ids(D).map((d) => `    subgroupMatrixStore<row_major>(&dq, qRow * ldq + h * HD + ${16 * d}u, dq${d}, ldq);`).join("\n")}
  }
}
`;
  return { name: `attention_tc_dq_hd${hd}${L.tag}${st?.tag ?? ""}${fast ? "_ft" : ""}`, code: st ? st.retype(code) : code };
}

/**
 * Backward, pass 2 (per 64 keys of one kv head, over its group's query heads and the query
 * tiles that see them): Sᵀ = k·qᵀ and dPᵀ = v·doutᵀ, P and dS = P ∘ (dP − D) in f32, then
 * dv += Pᵀ·dout and dk += scale·dSᵀ·q, all products on tensor cores (P and dS rounded to f16).
 * perHead: a workgroup per 64 keys and QUERY head instead (group times the workgroups, each with
 * 1/group of the loop), writing that head's share of dk and dv to (T, nH, HD) partials that
 * dkvGroupSum adds up per kv head.
 */
function backwardDkvSource(hd: number, L: TileLayout, perHead = false, staged = false, fast = false, doutStaged = false, sharePdS = false): KernelSource {
  const D = hd / 16, J = BQ / 16;
  if (doutStaged && !staged) throw new Error("backwardDkvSource: dout is staged only with q staged");
  // P and dS in one tile (dv += Pᵀ·dout first, dS then written over P): the dout-staged form's
  // order, also without staging (sharePdS) so the unstaged pass fits 32 KiB devices (27,392 bytes
  // padded at any HD, against 36,608 with a tile each).
  const share = doutStaged || sharePdS;
  // Staged: the query tile's q rows (both of q's products read them). dout stays in global memory,
  // or (doutStaged, session 14) is staged too, which fits NVIDIA's 48 KB at HD = 64 because P and
  // dS then share one tile: dv += Pᵀ·dout runs before dS is written over P.
  const st = staged
    ? stageTiles(hd, [{ src: "q16", dst: "Qs", ld: "ldq", head: "h" }, ...(doutStaged ? [{ src: "do16", dst: "Dos", ld: "ldq", head: "h" }] : [])])
    : undefined;
  const stagedName = (right: string) => (st && right === "q16" ? "Qs" : doutStaged && right === "do16" ? "Dos" : undefined);
  const colMajor = (right: string, d: number) => stagedName(right)
    ? `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&${stagedName(right)}, j * ${16 * stagedLd(hd)}u + ${16 * d}u, ${stagedLd(hd)}u)`
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&${right}, qCol * ldq + h * HD + ${16 * d}u, ldq)`;
  const doutBlock = (d: number) => doutStaged
    ? stagedRowMajor("Dos", hd, d)
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&do16, qCol * ldq + h * HD + ${16 * d}u, ldq)`;
  const DS = share ? "Pw" : "DSw"; // where dS goes (over P once dv has read it)
  const qBlock = (d: number) => st
    ? stagedRowMajor("Qs", hd, d)
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&q16, qCol * ldq + h * HD + ${16 * d}u, ldq)`;
  const product = (left: string, right: string) => `        for (var j = 0u; j < ${J}u; j++) {
          let qCol = min(c0q + 16u * j, p.T - 16u);
          var acc = subgroup_matrix_result<f32, 16, 16>();
${ids(D).map((d) => `          acc = subgroupMatrixMultiplyAccumulate(${left}${d}, ${colMajor(right, d)}, acc);`).join("\n")}
          subgroupMatrixStore<row_major>(&Sw, sg * ${16 * L.sLd}u + 16u * j, acc, ${L.sLd}u);
        }
        workgroupBarrier();`;
  const code = `${header(hd)}
@group(0) @binding(1) var<storage, read> q16: array<f16>;     // (T, nH, HD)
@group(0) @binding(2) var<storage, read> k16: array<f16>;     // (T, nKV, HD)
@group(0) @binding(3) var<storage, read> v16: array<f16>;     // (T, nKV, HD)
@group(0) @binding(4) var<storage, read> seq: array<i32>;     // (T)
@group(0) @binding(5) var<storage, read> lse_in: array<f32>;  // (T, nH)
@group(0) @binding(6) var<storage, read> do16: array<f16>;    // (T, nH, HD)
@group(0) @binding(7) var<storage, read> dsum_in: array<f32>; // (T, nH)
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;   // (T, nKV, HD)${perHead ? "; per head: (T, nH, HD) partials" : ""}
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;   // (T, nKV, HD)${perHead ? "; per head: (T, nH, HD) partials" : ""}

var<workgroup> Sw: array<f32, ${BK * L.sLd}>;   // Sᵀ, then dPᵀ (keys × queries)
var<workgroup> Pw: array<f16, ${BK * L.pLd}>;${share ? "   // P, then dS" : `
var<workgroup> DSw: array<f16, ${BK * L.pLd}>;`}
var<workgroup> colSeq: array<i32, ${BQ}>;
var<workgroup> colL: array<f32, ${BQ}>;
var<workgroup> colD: array<f32, ${BQ}>;
${st?.decls ?? ""}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${perHead ? "let hOnly = wg.y; // this workgroup's query head\n  let g = hOnly / p.group;" : "let g = wg.y;"}
  let k0 = wg.x * ${BK}u;
  let kEnd = min(k0 + ${BK}u, p.T);
  let ldq = p.nH * HD;
  let ldk = p.nKV * HD;
  let sg = lid / 32u;
  let kRow = min(k0 + 16u * sg, p.T - 16u);
${ids(D).map((d) => `  let kl${d} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&k16, kRow * ldk + g * HD + ${16 * d}u, ldk);`).join("\n")}
${ids(D).map((d) => `  let vl${d} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&v16, kRow * ldk + g * HD + ${16 * d}u, ldk);`).join("\n")}
  let r = lid / 2u;              // key row of the softmax phase
${LANE_COLUMNS}
  let tj = k0 + r;
  let sj = seqAt(tj);
${ids(D).map((d) => `  var dk${d} = subgroup_matrix_result<f32, 16, 16>();\n  var dv${d} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
  var pr = array<f32, ${BQ / 2}>();
${st?.regs ?? ""}
  // last key of the block that any query sees (uniform)
  var k1 = kEnd;
  for (var t = kEnd; t > k0; t--) { if (seq[t - 1u] >= 0) { k1 = t - 1u; break; } }
  if (k1 < kEnd) {
    let s1 = seq[k1];
    for (var hq = ${perHead ? "hOnly % p.group; hq <= hOnly % p.group" : "0u; hq < p.group"}; hq++) {
      let h = g * p.group + hq;
${st ? `      var c0q = k0; // the first query tile always sees the block (c0q <= k1)
${st.load("c0q")}
      loop {
${st.store}
        let nxt = c0q + ${BQ}u;
        let more = nxt < p.T && !(nxt > k1 && (seq[nxt] != s1 || (p.window != 0u && nxt - k1 >= p.window)));
        workgroupBarrier();
        if (more) {
${st.load("nxt")}
        }` : `      for (var c0q = k0; c0q < p.T; c0q += ${BQ}u) {
        if (c0q > k1 && (seq[c0q] != s1 || (p.window != 0u && c0q - k1 >= p.window))) { break; }`}
        // every query of the tile sees every key of the block
        ${fullOf(fast, "c0q", `min(c0q + ${BQ}u, p.T)`, "k0")}
        if (lid < ${BQ}u) {
          let t = c0q + lid;
          colSeq[lid] = seqAt(t);
          var lv = 0.0;
          var dval = 0.0;
          if (t < p.T) { lv = lse_in[t * p.nH + h]; dval = dsum_in[t * p.nH + h]; }
          colL[lid] = lv;
          colD[lid] = dval;
        }
${product("kl", "q16")}
        for (var c = 0u; c < ${BQ / 2}u; c++) {
          let cc = ${L.col("c")};
          let x = select(0.0, exp(p.scale * Sw[r * ${L.sLd}u + cc] - colL[cc]), full || allowed(c0q + cc, colSeq[cc], tj, sj));
          pr[c] = x;
          Pw[r * ${L.pLd}u + cc] = f16(x);
        }
        workgroupBarrier();
${share ? `        // dv += Pᵀ·dout now, so that dS can be written over P below (the barrier after dP's product orders it)
        for (var j = 0u; j < ${J}u; j++) {
${doutStaged ? "" : `          let qCol = min(c0q + 16u * j, p.T - 16u);
`}          let pl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pw, sg * ${16 * L.pLd}u + 16u * j, ${L.pLd}u);
${ids(D).map((d) => `          dv${d} = subgroupMatrixMultiplyAccumulate(pl, ${doutBlock(d)}, dv${d});`).join("\n")}
        }
` : ""}${product("vl", "do16")}
        for (var c = 0u; c < ${BQ / 2}u; c++) {
          let cc = ${L.col("c")};
          ${DS}[r * ${L.pLd}u + cc] = f16(p.scale * pr[c] * (Sw[r * ${L.sLd}u + cc] - colD[cc]));
        }
        workgroupBarrier();
        for (var j = 0u; j < ${J}u; j++) {
          let qCol = min(c0q + 16u * j, p.T - 16u);
${share ? "" : `          let pl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pw, sg * ${16 * L.pLd}u + 16u * j, ${L.pLd}u);
`}          let dsl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&${DS}, sg * ${16 * L.pLd}u + 16u * j, ${L.pLd}u);
${ids(D).map((d) => `${share ? "" : `          dv${d} = subgroupMatrixMultiplyAccumulate(pl, ${doutBlock(d)}, dv${d});
`}          dk${d} = subgroupMatrixMultiplyAccumulate(dsl, ${qBlock(d)}, dk${d});`).join("\n")}
        }
        workgroupBarrier();${st ? `
        if (!more) { break; }
        c0q = nxt;` : ""}
      }
    }
  }
  // Outputs: (T, nKV, HD) at kv head g, or per head the (T, nH, HD) partials at query head hOnly.
  let ldo = ${perHead ? "ldq" : "ldk"};
  let hOut = ${perHead ? "hOnly" : "g"};
  if (k0 + 16u * sg < p.T) {
${ids(D).map((d) => `    subgroupMatrixStore<row_major>(&dk, kRow * ldo + hOut * HD + ${16 * d}u, dk${d}, ldo);\n    subgroupMatrixStore<row_major>(&dv, kRow * ldo + hOut * HD + ${16 * d}u, dv${d}, ldo);`).join("\n")}
  }
}
`;
  return { name: `attention_tc_dkv_hd${hd}${L.tag}${perHead ? "_ph" : ""}${st?.tag ?? ""}${doutStaged ? "_do" : sharePdS ? "_sh" : ""}${fast ? "_ft" : ""}`, code: st ? st.retype(code) : code };
}

/**
 * dk (T, nKV, HD) = Σ over each kv head's group of the per-head partials (T, nH, HD), and dv the
 * same: the query heads of kv head g are g·group … g·group + group − 1, next to each other.
 */
const DKV_GROUP_SUM: KernelSource = {
  name: "attention_dkv_group_sum",
  code: `struct Params { n: u32, group: u32, hd: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dkP: array<f32>;
@group(0) @binding(2) var<storage, read> dvP: array<f32>;
@group(0) @binding(3) var<storage, read_write> dk: array<f32>;
@group(0) @binding(4) var<storage, read_write> dv: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * 256u + lid; // element (t, g, d) of dk, dv
  if (i >= p.n) { return; }
  let d = i % p.hd;
  let src = (i / p.hd) * p.group * p.hd + d; // element (t, g·group, d) of the partials
  var sk = 0.0;
  var sv = 0.0;
  for (var j = 0u; j < p.group; j++) {
    sk += dkP[src + j * p.hd];
    sv += dvP[src + j * p.hd];
  }
  dk[i] = sk;
  dv[i] = sv;
}
`,
};

/** dk, dv (T, nKV, hd) = the per-query-head partials dkP, dvP (T, nKV·group, hd) summed over each group. */
export function dkvGroupSum(rec: Recorder, dkP: Tensor, dvP: Tensor, dk: Tensor, dv: Tensor, group: number) {
  const [T, nKV, hd] = dk.shape as [number, number, number];
  for (const [name, t, shape] of [["dkP", dkP, [T, nKV * group, hd]], ["dvP", dvP, [T, nKV * group, hd]], ["dv", dv, [T, nKV, hd]]] as const) {
    if (t.shape.join() !== shape.join()) throw new Error(`dkvGroupSum: ${name} is (${t.shape.join(", ")}), want (${shape.join(", ")})`);
  }
  const n = T * nKV * hd;
  rec.dispatch(`attention dkv group sum ${T}x${nKV}x${hd}`, rec.rt.pipeline(DKV_GROUP_SUM),
    new Params(4).u32(n).u32(group).u32(hd).u32(0).buffer, [dkP, dvP, dk, dv], flatGrid(n, 256));
}

const sources = new Map<string, KernelSource>();

/**
 * Which tensor-core kernels run. oneSweep: the one-sweep forward (online softmax) instead of the
 * two-sweep one; padded: the padded, interleaved layout of the score tiles (TileLayout) in the
 * forwards and the backward instead of the plain one. Both on by default since session 6: on an
 * H100 the 1B step's attention went from 43 + 42 ms (two sweeps, plain) to 33 + 32 (padded) and
 * 23 + 32 (one sweep, padded), every form passing its tests (kernels/test/attention.test.ts runs all
 * four where subgroup matrices exist). `TUNELOOM_ATTN_ONE_SWEEP=0` / `TUNELOOM_ATTN_PAD=0` turn
 * them off (A/B measurements).
 */
export const attentionTcForm = {
  oneSweep: process.env.TUNELOOM_ATTN_ONE_SWEEP !== "0",
  padded: process.env.TUNELOOM_ATTN_PAD !== "0",
  /**
   * The backward's dk/dv pass per query head (backwardDkvSource perHead) for grouped-query
   * attention. On since session 7 (tests passed on an H100; with `staged`, the 1B dk/dv pass went
   * from 17.2 to 13.6 ms); `TUNELOOM_ATTN_DKV_PER_HEAD=0` turns it off.
   */
  dkvPerHead: process.env.TUNELOOM_ATTN_DKV_PER_HEAD !== "0",
  /**
   * Tiles staged through workgroup memory with a prefetch (stageTiles): k and v in the one-sweep
   * forward and the dq pass, q in the dk/dv pass, where the pass's workgroup memory still fits the
   * device (HD = 64 does under NVIDIA's 48 KB, HD = 128 does not and keeps the global loads).
   * On since session 7 (tests passed on an H100; the 1B step's attention went from 54.6 to 44.5 ms);
   * `TUNELOOM_ATTN_STAGE=0` turns it off.
   */
  staged: process.env.TUNELOOM_ATTN_STAGE !== "0",
  /**
   * Key tiles that every row of a query block sees (below the diagonal, one sequence, inside the
   * window: fullTile) skip the mask lookups of the softmax phases (session 9). On since session 11
   * (its tests passed on an H100; the 1B step's attention 35.8 → 34.1 ms against session 9's call);
   * `TUNELOOM_ATTN_FULL_TILES=0` turns it off.
   */
  fullTiles: process.env.TUNELOOM_ATTN_FULL_TILES !== "0",
  /** A stage diag of the one-sweep forward (AttentionDiag; measurements only, wrong results). */
  diag: attentionDiagFrom(process.env.TUNELOOM_ATTN_DIAG),
  /**
   * The dk/dv pass stages dout as well as q (backwardDkvSource doutStaged; P and dS share a tile so
   * both fit 48 KB at HD = 64): its 32 subgroup-matrix loads of dout from storage per subgroup and
   * query tile become loads from workgroup memory (session 14). On since session 14's call (H100,
   * 2026-12-07T22:30Z): its GPU tests passed and the 1B step's dk/dv pass went 12.4 → 9.7 ms (the
   * step's GPU time 235.4 → 232.6 ms, same call); `TUNELOOM_ATTN_DKV_DOUT=0` turns it off.
   */
  dkvDoutStaged: process.env.TUNELOOM_ATTN_DKV_DOUT !== "0",
  /**
   * The unstaged dk/dv pass with P and dS in one tile even where both tiles fit (session 17; it
   * is chosen anyway where only it fits, e.g. 32 KiB devices): for its GPU tests and an A/B.
   */
  dkvSharedPdS: process.env.TUNELOOM_ATTN_DKV_SHARED === "1",
  /**
   * The one-sweep forward keeps each lane's 32 scaled, masked scores of a tile in registers between
   * its max and softmax loops (session 17): no masked write-back to Sw and no second read of it.
   * The masked max loop is 26% of the kernel (session 16's diags). Off until a GPU call measures it
   * (`TUNELOOM_ATTN_REG_SCORES=1`; the device script's attn-stages step carries the A/B).
   */
  regScores: process.env.TUNELOOM_ATTN_REG_SCORES === "1",
};

/**
 * Workgroup memory (bytes) of a pass in the staged form: the score tiles of its layout plus the
 * staged tiles, or Infinity where that pass has no staged form.
 */
export function stagedAttentionBytes(pass: "forward" | "dq" | "dkv" | "dkv-dout", hd: number, padded: boolean, oneSweep = true): number {
  const L = tileLayout(padded);
  const tile = 64 * stagedLd(hd) * 2, seqIds = 4 * 64;
  if (pass === "forward") return oneSweep ? plainAttentionBytes("forward", hd, padded, true) + 2 * tile : Infinity;
  if (pass === "dq") return plainAttentionBytes("dq", hd, padded) + 2 * tile;
  if (pass === "dkv-dout") return 64 * L.sLd * 4 + 64 * L.pLd * 2 + 3 * seqIds + 2 * tile; // P and dS share a tile; q and dout staged
  return plainAttentionBytes("dkv", hd, padded) + tile;
}

/**
 * Workgroup memory (bytes) of a pass without staged tiles: its score and probability tiles, sequence
 * ids. `dkv-shared`: the dk/dv pass with P and dS in one tile (backwardDkvSource sharePdS).
 */
export function plainAttentionBytes(pass: "forward" | "dq" | "dkv" | "dkv-shared", hd: number, padded: boolean, oneSweep = true): number {
  const L = tileLayout(padded), seqIds = 4 * 64;
  if (pass === "forward") return 64 * (oneSweep ? Math.max(L.sLd, L.oLd(hd)) : L.sLd) * 4 + 64 * L.pLd * 2 + seqIds;
  if (pass === "dq") return 64 * L.sLd * 4 + 64 * L.pLd * 2 + seqIds;
  return 64 * L.sLd * 4 + (pass === "dkv" ? 2 : 1) * 64 * L.pLd * 2 + 3 * seqIds;
}

/**
 * Whether the unstaged dk/dv pass runs with P and dS in one tile here: asked for
 * (attentionTcForm.dkvSharedPdS, for tests and A/Bs) or the only form that fits the device.
 */
function dkvSharesPdS(rec: Recorder, hd: number): boolean {
  return attentionTcForm.dkvSharedPdS || plainAttentionBytes("dkv", hd, attentionTcForm.padded) > rec.rt.caps.limits.maxComputeWorkgroupStorageSize;
}

/** The WGSL of one pass in a given form (tests read its workgroup declarations). */
export function attentionTcSource(pass: "forward" | "dq" | "dkv", hd: number, form: { padded: boolean; oneSweep?: boolean; staged?: boolean; perHead?: boolean; fullTiles?: boolean; diag?: AttentionDiag; doutStaged?: boolean; sharePdS?: boolean; regScores?: boolean }): KernelSource {
  const L = tileLayout(form.padded), fast = form.fullTiles ?? false;
  if (pass === "forward") return form.oneSweep ?? true ? forwardOneSweepSource(hd, L, form.staged, fast, form.diag, form.regScores) : forwardSource(hd, L, fast);
  if (pass === "dq") return backwardDqSource(hd, L, form.staged, fast);
  return backwardDkvSource(hd, L, form.perHead, form.staged, fast, form.doutStaged, form.sharePdS);
}

/** Whether this pass runs staged here: the form is on and its workgroup memory fits the device. */
function stagedHere(rec: Recorder, pass: "forward" | "dq" | "dkv" | "dkv-dout", hd: number): boolean {
  const { staged, padded, oneSweep } = attentionTcForm;
  return staged && stagedAttentionBytes(pass, hd, padded, oneSweep) <= rec.rt.caps.limits.maxComputeWorkgroupStorageSize;
}

/**
 * Whether the tensor-core passes can run this shape on this device: every pass (forward, dq,
 * dk/dv; the training step needs all three) fits the device's workgroup memory without staging,
 * the dk/dv pass in its smallest form (P and dS in one tile). NVIDIA's 48 KiB fits them at
 * hd ≤ 128; 32 KiB (lavapipe, many other GPUs) at hd 64 (the one-sweep forward at hd 128 needs
 * 43,264 bytes), with the dk/dv pass sharing its tile (27,392 bytes against 36,608).
 */
export function tensorCoreAttentionSupported(rec: Recorder, T: number, hd: number): boolean {
  if (!(hasTensorCoreMatmul(rec.rt) && T >= 16 && T % 16 === 0 && hd % 16 === 0 && hd <= 128)) return false;
  const { padded, oneSweep } = attentionTcForm, limit = rec.rt.caps.limits.maxComputeWorkgroupStorageSize;
  return (["forward", "dq", "dkv-shared"] as const).every((pass) => plainAttentionBytes(pass, hd, padded, oneSweep) <= limit);
}

export interface TcAttentionArgs {
  q: Tensor; k: Tensor; v: Tensor; seqId: Tensor; out: Tensor; lse: Tensor;
  /** The caller's f16 copies of q, k, v (attention.ts AttentionF16Inputs); converted here otherwise. */
  f16?: { q: Tensor; k: Tensor; v: Tensor };
  T: number; nH: number; nKV: number; hd: number;
  /** The Params block of attention.ts (same layout). */
  params: ArrayBuffer;
}

/** Records the tensor-core forward (shapes checked by the caller, attentionForward). */
export function attentionForwardTensorCore(rec: Recorder, a: TcAttentionArgs) {
  const { oneSweep: one, padded, fullTiles: fast, diag, regScores } = attentionTcForm;
  const staged = stagedHere(rec, "forward", a.hd);
  const key = `${a.hd}:${one}:${padded}:${staged}:${fast}:${diag ?? ""}:${regScores}`;
  let s = sources.get(key);
  if (!s) sources.set(key, (s = one ? forwardOneSweepSource(a.hd, tileLayout(padded), staged, fast, diag, regScores) : forwardSource(a.hd, tileLayout(padded), fast)));
  const { q16, k16, v16, made } = f16Inputs(rec, a);
  rec.dispatch(`attentionForwardTC${one ? "1" : ""}${padded ? "p" : ""}${staged ? "s" : ""}${fast ? "f" : ""}${one && regScores ? "r" : ""} T=${a.T} ${a.nH}/${a.nKV}x${a.hd}`, rec.rt.pipeline(s), a.params,
    [q16, k16, v16, a.seqId, a.out, a.lse], [cdiv(a.T, BQ), a.nH]);
  for (const t of made) rec.recycle(t);
}

/** q, k, v in f16: the caller's copies (a.f16) or conversions made here (`made`: recycle after use). */
function f16Inputs(rec: Recorder, a: TcAttentionArgs): { q16: Tensor; k16: Tensor; v16: Tensor; made: Tensor[] } {
  if (a.f16) return { q16: a.f16.q, k16: a.f16.k, v16: a.f16.v, made: [] };
  const q16 = toF16(rec, a.q), k16 = toF16(rec, a.k), v16 = toF16(rec, a.v);
  return { q16, k16, v16, made: [q16, k16, v16] };
}

export interface TcAttentionBackwardArgs extends TcAttentionArgs {
  dout: Tensor; dq: Tensor; dk: Tensor; dv: Tensor; dsum: Tensor;
}

const dqSources = new Map<string, KernelSource>();
const dkvSources = new Map<string, KernelSource>();

/** Records the tensor-core backward (shapes checked by the caller, attentionBackward). */
export function attentionBackwardTensorCore(rec: Recorder, a: TcAttentionBackwardArgs) {
  const { padded, fullTiles: fast } = attentionTcForm;
  const perHead = attentionTcForm.dkvPerHead && a.nH > a.nKV; // MHA: the usual pass is already per head
  const dqStaged = stagedHere(rec, "dq", a.hd), dkvStaged = stagedHere(rec, "dkv", a.hd);
  const doutStaged = dkvStaged && attentionTcForm.dkvDoutStaged && stagedHere(rec, "dkv-dout", a.hd);
  const share = !dkvStaged && dkvSharesPdS(rec, a.hd);
  const key = `${a.hd}:${padded}:${dqStaged}:${fast}`;
  let sq = dqSources.get(key);
  if (!sq) dqSources.set(key, (sq = backwardDqSource(a.hd, tileLayout(padded), dqStaged, fast)));
  const kvKey = `${a.hd}:${padded}:${perHead}:${dkvStaged}:${fast}:${doutStaged}:${share}`;
  let skv = dkvSources.get(kvKey);
  if (!skv) dkvSources.set(kvKey, (skv = backwardDkvSource(a.hd, tileLayout(padded), perHead, dkvStaged, fast, doutStaged, share)));
  const { q16, k16, v16, made } = f16Inputs(rec, a), do16 = toF16(rec, a.dout);
  rec.dispatch(`attentionBackwardTC${padded ? "p" : ""}${dqStaged ? "s" : ""}${fast ? "f" : ""} dq T=${a.T} ${a.nH}/${a.nKV}x${a.hd}`, rec.rt.pipeline(sq), a.params,
    [q16, k16, v16, a.seqId, a.out, a.lse, a.dout, do16, a.dq, a.dsum], [cdiv(a.T, BQ), a.nH]);
  if (perHead) {
    // (T, nH, HD) partials per query head, then summed over each kv head's group.
    const dkP = rec.scratch("f32", [a.T, a.nH, a.hd], "attn_dk_partials"), dvP = rec.scratch("f32", [a.T, a.nH, a.hd], "attn_dv_partials");
    rec.dispatch(`attentionBackwardTC${padded ? "p" : ""}${dkvStaged ? "s" : ""}${doutStaged ? "o" : share ? "h" : ""}${fast ? "f" : ""} dkv/head T=${a.T} ${a.nH}/${a.nKV}x${a.hd}`, rec.rt.pipeline(skv), a.params,
      [q16, k16, v16, a.seqId, a.lse, do16, a.dsum, dkP, dvP], [cdiv(a.T, BK), a.nH]);
    dkvGroupSum(rec, dkP, dvP, a.dk, a.dv, a.nH / a.nKV);
    rec.recycle(dkP);
    rec.recycle(dvP);
  } else {
    rec.dispatch(`attentionBackwardTC${padded ? "p" : ""}${dkvStaged ? "s" : ""}${doutStaged ? "o" : share ? "h" : ""}${fast ? "f" : ""} dkv T=${a.T} ${a.nH}/${a.nKV}x${a.hd}`, rec.rt.pipeline(skv), a.params,
      [q16, k16, v16, a.seqId, a.lse, do16, a.dsum, a.dk, a.dv], [cdiv(a.T, BK), a.nKV]);
  }
  for (const t of [...made, do16]) rec.recycle(t);
}
