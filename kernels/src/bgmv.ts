/**
 * Gathered per-row LoRA for a batch that mixes adapters (Punica / S-LoRA's BGMV): one forward
 * over the whole batch, each row t applying the adapter in slot slots[t] (−1: the base, no LoRA).
 * Every loaded adapter's A's and B's live in slot-indexed stacks, padded to one rank R:
 *
 *   bgmvShrink:  h (T, nb·R) = x (T, K) · A[slot_t]ᵀ      A (S, nb·R, K): nb modules' A's back to back
 *   bgmvExpand:  y (T, N)   += scale[slot_t] · h (T, R) · B[slot_t]ᵀ     B (S, N, R)
 *
 * `ranks` (u32 (S, ldr)) holds each slot's rank per target module (0: not adapted); columns past
 * it are written as 0 by the shrink and skipped by the expand, so slots of different ranks share
 * the stacks. A and B may be f32, f16 or bf16 (read through load16.ts); x, h, y are f32.
 * Inference only: no backward (serving never trains).
 *
 * Forms of the shrink (the expand has one): `lanes` (GPUs; 32 lanes per output along K) or
 * `row` (software adapters, the default there: one invocation per output).
 */
import type { DType } from "./dtype.ts";
import { wgslLoader } from "./load16.ts";
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import bgmvWgsl from "./bgmv.wgsl" with { type: "text" };

const sources = new Map<DType, KernelSource>();
function source(dtype: DType): KernelSource {
  let s = sources.get(dtype);
  if (!s) {
    s = { name: `bgmv_w${dtype}`, code: bgmvWgsl.replace("//!LOAD_W", wgslLoader("w", 2, dtype)) };
    sources.set(dtype, s);
  }
  return s;
}

/** What both products share: the per-row slot index and the per-slot rank table. */
export interface BgmvRows {
  /** i32 (T): each row's adapter slot, −1 for none. */
  slots: Tensor;
  /** u32 (S, ldr): rank of each slot's module; the product reads columns rankCol (+ j for the shrink's block j). */
  ranks: Tensor;
  rankCol?: number;
}

export interface BgmvShrinkArgs extends BgmvRows {
  /** f32 (T, K) rows, or a wider (T, ldx) buffer of which the first K columns are read. */
  x: Tensor;
  /** (S, nb·R, K): per slot, nb modules' (R, K) A's back to back. */
  A: Tensor;
  /** Padded rank (rows per module block of A). */
  R: number;
  /** f32 (T, ldh) with ldh ≥ hOffset + nb·R: receives h in columns hOffset … hOffset + nb·R − 1. */
  h: Tensor;
  hOffset?: number;
}

export interface BgmvExpandArgs extends BgmvRows {
  /** f32 (T, ldh): the module's h in columns hOffset … hOffset + R − 1. */
  h: Tensor;
  hOffset?: number;
  /** (S, N, R): per slot, the module's B padded to R columns. */
  B: Tensor;
  /** f32 (S): α/r (or α/√r) of each slot's adapter. */
  scales: Tensor;
  /** f32 (T, N): y += scale·h·Bᵀ on rows with a slot. */
  y: Tensor;
}

const WEIGHT_DTYPES: DType[] = ["f32", "f16", "bf16"];

function matrix(fn: string, name: string, t: Tensor): [number, number] {
  if (t.shape.length !== 2) throw new Error(`${fn}: ${name} must be 2-D (rows, columns), got [${t.shape.join(", ")}]`);
  return t.shape as [number, number];
}

function stack(fn: string, name: string, t: Tensor): [number, number, number] {
  expectTensor(fn, name, t, WEIGHT_DTYPES);
  if (t.shape.length !== 3) throw new Error(`${fn}: ${name} must be a slot stack (S, rows, columns), got [${t.shape.join(", ")}]`);
  return t.shape as [number, number, number];
}

/** Checks the row and rank tables; returns T, S and the rank table's row stride. */
function checkRows(fn: string, r: BgmvRows, S: number, cols: number): { T: number; ldr: number; rcol: number } {
  expectTensor(fn, "slots", r.slots, "i32");
  if (r.slots.shape.length !== 1) throw new Error(`${fn}: slots must be (T), got [${r.slots.shape.join(", ")}]`);
  expectTensor(fn, "ranks", r.ranks, "u32");
  const [rs, ldr] = matrix(fn, "ranks", r.ranks);
  if (rs !== S) throw new Error(`${fn}: ranks has ${rs} rows, the stack ${S} slots`);
  const rcol = r.rankCol ?? 0;
  if (!Number.isInteger(rcol) || rcol < 0 || rcol + cols > ldr) throw new Error(`${fn}: rank columns ${rcol}…${rcol + cols - 1} are outside the ranks table's ${ldr}`);
  return { T: r.slots.shape[0]!, ldr, rcol };
}

function checkRowsOf(fn: string, name: string, t: Tensor, T: number, offset: number, width: number): number {
  expectTensor(fn, name, t, "f32");
  const [rows, ld] = matrix(fn, name, t);
  if (rows !== T) throw new Error(`${fn}: ${name} has ${rows} rows, slots ${T}`);
  if (!Number.isInteger(offset) || offset < 0 || offset + width > ld) throw new Error(`${fn}: ${name} columns ${offset}…${offset + width - 1} do not fit its ${ld}`);
  return ld;
}

/** h[:, hOffset + j·R + r] = x·A[slot, j·R + r]ᵀ for r < rank(slot, module j), else 0. */
export function bgmvShrink(rec: Recorder, a: BgmvShrinkArgs, form?: "lanes" | "row") {
  const fn = "bgmvShrink";
  const [S, N, K] = stack(fn, "A", a.A);
  if (!Number.isInteger(a.R) || a.R < 1 || N % a.R !== 0) throw new Error(`${fn}: A's ${N} rows per slot are not whole blocks of the padded rank R=${a.R}`);
  const { T, ldr, rcol } = checkRows(fn, a, S, N / a.R);
  const [, ldx] = matrix(fn, "x", a.x);
  checkRowsOf(fn, "x", a.x, T, 0, K);
  const hOff = a.hOffset ?? 0;
  const ldh = checkRowsOf(fn, "h", a.h, T, hOff, N);
  if (T === 0 || N === 0) return;
  const rt = rec.rt;
  const useRow = (form ?? (rt.caps.isSoftware ? "row" : "lanes")) === "row";
  const [gx, gy] = useRow ? flatGrid(T * N, 64) : flatGrid(T * Math.ceil(N / 8), 1);
  const params = new Params(16).u32(T).u32(N).u32(K).u32(S).u32(ldx).u32(0).u32(ldh).u32(hOff)
    .u32(N * K).u32(ldr).u32(rcol).u32(a.R).u32(gx).u32(0).u32(0).u32(0);
  rec.dispatch(`bgmvShrink ${T}x${N}x${K} ${a.A.dtype} S=${S}${useRow ? " row" : ""}`, rt.pipeline(source(a.A.dtype), {}, useRow ? "shrink_row" : "shrink_lanes"),
    params.buffer, [a.x, a.A, a.slots, a.ranks, a.h], [gx, gy, 1]);
}

/** y[t] += scales[slot]·h[t, hOffset … + rank − 1]·B[slot, :, :rank]ᵀ on rows with a slot. */
export function bgmvExpand(rec: Recorder, a: BgmvExpandArgs) {
  const fn = "bgmvExpand";
  const [S, N, R] = stack(fn, "B", a.B);
  const { T, ldr, rcol } = checkRows(fn, a, S, 1);
  const hOff = a.hOffset ?? 0;
  const ldh = checkRowsOf(fn, "h", a.h, T, hOff, R);
  const ldy = checkRowsOf(fn, "y", a.y, T, 0, N);
  expectTensor(fn, "scales", a.scales, "f32", [S]);
  if (T === 0 || N === 0) return;
  const rt = rec.rt;
  const [gx, gy] = flatGrid(T * N, 256);
  const params = new Params(16).u32(T).u32(N).u32(R).u32(S).u32(ldh).u32(hOff).u32(ldy).u32(0)
    .u32(N * R).u32(ldr).u32(rcol).u32(R).u32(gx).u32(0).u32(0).u32(0);
  rec.dispatch(`bgmvExpand ${T}x${N}x${R} ${a.B.dtype} S=${S}`, rt.pipeline(source(a.B.dtype), {}, "expand"),
    params.buffer, [a.h, a.B, a.slots, a.ranks, a.y, a.scales], [gx, gy, 1]);
}

/**
 * Throws unless every row's slot is −1 or one of 0 … S − 1: the host-side check for per-row
 * slot indices before they are written to the GPU (where an out-of-range slot cannot throw).
 */
export function checkRowSlots(fn: string, slots: ArrayLike<number>, S: number) {
  for (let t = 0; t < slots.length; t++) {
    const s = slots[t]!;
    if (!Number.isInteger(s) || s < -1 || s >= S) throw new RangeError(`${fn}: row ${t} has LoRA slot ${s}, not −1 (base) or one of 0…${S - 1}`);
  }
}
