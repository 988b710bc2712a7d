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
import { cdiv } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import type { Tensor } from "./tensor.ts";

const BQ = 64; // queries per workgroup
const BK = 64; // keys per tile

function source(hd: number): KernelSource {
  const D = hd / 16; // 16-wide blocks along the head dim
  const J = BK / 16; // 16-key blocks per tile
  const ids = (n: number) => Array.from({ length: n }, (_, i) => i);
  // S (16 rows of this subgroup × 64 keys) = q·kᵀ, stored to Sw.
  const scores = `      for (var j = 0u; j < ${J}u; j++) {
        let kRow = min(k0 + 16u * j, p.T - 16u);
        var s = subgroup_matrix_result<f32, 16, 16>();
${ids(D).map((d) => `        s = subgroupMatrixMultiplyAccumulate(ql${d}, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>>(&k16, kRow * ldk + g * HD + ${16 * d}u, true, ldk), s);`).join("\n")}
        subgroupMatrixStore(&Sw, sg * ${16 * BK}u + 16u * j, s, false, ${BK}u);
      }
      workgroupBarrier();`;
  const code = `enable f16;
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
@group(0) @binding(1) var<storage, read> q16: array<f16>;   // (T, nH, HD)
@group(0) @binding(2) var<storage, read> k16: array<f16>;   // (T, nKV, HD)
@group(0) @binding(3) var<storage, read> v16: array<f16>;   // (T, nKV, HD)
@group(0) @binding(4) var<storage, read> seq: array<i32>;   // (T)
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (T, nH, HD)
@group(0) @binding(6) var<storage, read_write> lse: array<f32>; // (T, nH)

var<workgroup> Sw: array<f32, ${BQ * BK}>;  // scores of the tile (BQ, BK)
var<workgroup> Pw: array<f16, ${BQ * BK}>;  // probabilities of the tile
var<workgroup> colSeq: array<i32, ${BK}>;

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
${ids(D).map((d) => `  let ql${d} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>>(&q16, qRow * ldq + h * HD + ${16 * d}u, false, ldq);`).join("\n")}
  // Softmax phase: lanes 2r and 2r+1 (same subgroup) share row r, 32 columns each.
  let r = lid / 2u;
  let c0 = (lid % 2u) * ${BK / 2}u;
  let ti = q0 + r;
  let si = seqAt(ti);
${ids(D).map((d) => `  var o${d} = subgroup_matrix_result<f32, 16, 16>();`).join("\n")}
  var m = NEG;
  var l = 0.0;
  let r0 = firstReal(q0, rEnd);
  if (r0 < rEnd) {
    let s0 = seq[r0];
    let ktLast = (rEnd - 1u) / ${BK}u;
    // sweep 1: row max and Σ exp over all visible keys
    var kt = ktLast;
    loop {
      let k0 = kt * ${BK}u;
      let kLast = k0 + ${BK - 1}u;
      if (kLast < r0 && (seqAt(kLast) != s0 || (p.window != 0u && r0 - kLast >= p.window))) { break; }
      if (lid < ${BK}u) { colSeq[lid] = seqAt(k0 + lid); }
${scores}
      var tileMax = NEG;
      for (var c = c0; c < c0 + ${BK / 2}u; c++) {
        let x = select(NEG, p.scale * Sw[r * ${BK}u + c], allowed(ti, si, k0 + c, colSeq[c]));
        Sw[r * ${BK}u + c] = x;
        tileMax = max(tileMax, x);
      }
      let mNew = max(m, max(tileMax, subgroupShuffleXor(tileMax, 1u)));
      var sum = 0.0;
      for (var c = c0; c < c0 + ${BK / 2}u; c++) {
        let x = Sw[r * ${BK}u + c];
        sum += select(0.0, exp(x - mNew), x > NEG_HALF);
      }
      sum += subgroupShuffleXor(sum, 1u);
      l = l * select(1.0, exp(m - mNew), m > NEG_HALF) + sum;
      m = mNew;
      workgroupBarrier();
      if (kt == 0u) { break; }
      kt -= 1u;
    }
    let L = select(0.0, m + log(l), l > 0.0);
    // sweep 2: P = exp(scale·S − lse) exactly normalised; O += P·V
    kt = ktLast;
    loop {
      let k0 = kt * ${BK}u;
      let kLast = k0 + ${BK - 1}u;
      if (kLast < r0 && (seqAt(kLast) != s0 || (p.window != 0u && r0 - kLast >= p.window))) { break; }
      if (lid < ${BK}u) { colSeq[lid] = seqAt(k0 + lid); }
${scores}
      for (var c = c0; c < c0 + ${BK / 2}u; c++) {
        var pr = 0.0;
        if (allowed(ti, si, k0 + c, colSeq[c])) { pr = exp(p.scale * Sw[r * ${BK}u + c] - L); }
        Pw[r * ${BK}u + c] = f16(pr);
      }
      workgroupBarrier();
      for (var j = 0u; j < ${J}u; j++) {
        let kRow = min(k0 + 16u * j, p.T - 16u);
        let pl = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>>(&Pw, sg * ${16 * BK}u + 16u * j, false, ${BK}u);
${ids(D).map((d) => `        o${d} = subgroupMatrixMultiplyAccumulate(pl, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>>(&v16, kRow * ldk + g * HD + ${16 * d}u, false, ldk), o${d});`).join("\n")}
      }
      workgroupBarrier();
      if (kt == 0u) { break; }
      kt -= 1u;
    }
  }
  if (ti < p.T && lid % 2u == 0u) { lse[ti * p.nH + h] = select(0.0, m + log(l), l > 0.0); }
  if (q0 + 16u * sg < p.T) {
${ids(D).map((d) => `    subgroupMatrixStore(&out, qRow * ldq + h * HD + ${16 * d}u, o${d}, false, ldq);`).join("\n")}
  }
}
`;
  return { name: `attention_tc_hd${hd}`, code };
}

const sources = new Map<number, KernelSource>();

/** Whether attentionForwardTensorCore can run this shape on this device. */
export function tensorCoreAttentionSupported(rec: Recorder, T: number, hd: number): boolean {
  return hasTensorCoreMatmul(rec.rt) && T >= 16 && T % 16 === 0 && hd % 16 === 0 && hd <= 128;
}

export interface TcAttentionArgs {
  q: Tensor; k: Tensor; v: Tensor; seqId: Tensor; out: Tensor; lse: Tensor;
  T: number; nH: number; nKV: number; hd: number;
  /** The Params block of attention.ts (same layout). */
  params: ArrayBuffer;
}

/** Records the tensor-core forward (shapes checked by the caller, attentionForward). */
export function attentionForwardTensorCore(rec: Recorder, a: TcAttentionArgs) {
  let s = sources.get(a.hd);
  if (!s) sources.set(a.hd, (s = source(a.hd)));
  const q16 = toF16(rec, a.q), k16 = toF16(rec, a.k), v16 = toF16(rec, a.v);
  rec.dispatch(`attentionForwardTC T=${a.T} ${a.nH}/${a.nKV}x${a.hd}`, rec.rt.pipeline(s), a.params,
    [q16, k16, v16, a.seqId, a.out, a.lse], [cdiv(a.T, BQ), a.nH]);
  rec.recycle(q16);
  rec.recycle(k16);
  rec.recycle(v16);
}

/** The generated WGSL, for reading compiler messages. */
export const tcAttentionSourceForDebug = (hd: number) => source(hd).code;
