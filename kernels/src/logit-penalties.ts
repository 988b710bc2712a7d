/**
 * Logit processors that depend on the tokens a sequence has seen, applied in place to the logits
 * (B, V) just before sampleRows: HF/vLLM's repetition penalty (prompt + generated), OpenAI's
 * presence and frequency penalties (generated), and masks (min_tokens keeps stop ids out until
 * enough tokens exist). logit-penalties.wgsl states the math. Each row brings the distinct
 * tokens it has seen, packed by packPenaltyRows; a row with nothing to do brings none.
 *
 * The CPU reference below is the same in float64; the CPU engine uses it directly.
 */
import { Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import penaltiesWgsl from "./logit-penalties.wgsl" with { type: "text" };

const source: KernelSource = { name: "logit-penalties", code: penaltiesWgsl };
const SEEN = 0x40000000, MASKED = 0x80000000, COUNT = 0x3fffffff;

export interface LogitPenalties {
  /** > 0; 1: off. */
  repetition: number;
  /** OpenAI presence_penalty; 0: off. */
  presence: number;
  /** OpenAI frequency_penalty; 0: off. */
  frequency: number;
  /** Tokens of the prompt (repetition only). */
  promptTokens: ReadonlySet<number>;
  /** Token → times generated so far. */
  generated: ReadonlyMap<number, number>;
  /** Tokens that must not be sampled now (e.g. stop ids before min_tokens). */
  masked: readonly number[];
}

/** Whether the row changes any logit. */
export function penaltiesActive(p: LogitPenalties | null | undefined): p is LogitPenalties {
  if (!p) return false;
  return p.masked.length > 0 || (p.repetition !== 1 && (p.promptTokens.size > 0 || p.generated.size > 0)) ||
    ((p.presence !== 0 || p.frequency !== 0) && p.generated.size > 0);
}

/** One row's (token, bits) entries: each distinct token once. */
function rowEntries(p: LogitPenalties): Map<number, number> {
  const bits = new Map<number, number>();
  if (p.repetition !== 1) for (const t of p.promptTokens) bits.set(t, SEEN);
  for (const [t, c] of p.generated) bits.set(t, (p.repetition !== 1 ? SEEN : 0) | (p.presence !== 0 || p.frequency !== 0 ? Math.min(c, COUNT) : 0));
  for (const t of p.masked) bits.set(t, MASKED);
  for (const [t, b] of bits) if (b === 0) bits.delete(t);
  return bits;
}

export interface PackedPenalties {
  /** (B, 4) f32: repetition, presence, frequency, 0. */
  params: Float32Array;
  /** (B + 1) u32. */
  offsets: Uint32Array;
  /** (E, 2) u32 (at least one entry, so the buffer is never empty). */
  entries: Uint32Array;
}

export function packPenaltyRows(rows: readonly (LogitPenalties | null | undefined)[]): PackedPenalties {
  const B = rows.length;
  const params = new Float32Array(B * 4), offsets = new Uint32Array(B + 1);
  const perRow = rows.map((p, b) => {
    if (!p) {
      params.set([1, 0, 0, 0], b * 4);
      return new Map<number, number>();
    }
    if (!(p.repetition > 0) || !Number.isFinite(p.presence) || !Number.isFinite(p.frequency))
      throw new Error(`penalty row ${b}: repetition must be > 0 and presence/frequency finite, got ${p.repetition}, ${p.presence}, ${p.frequency}`);
    params.set([p.repetition, p.presence, p.frequency, 0], b * 4);
    return rowEntries(p);
  });
  perRow.forEach((m, b) => (offsets[b + 1] = offsets[b]! + m.size));
  const entries = new Uint32Array(Math.max(2, 2 * offsets[B]!));
  let e = 0;
  for (const m of perRow) for (const [t, bits] of m) entries.set([t, bits >>> 0], 2 * e++);
  return { params, offsets, entries };
}

export interface PenaltyArgs {
  /** f32 (B, V), changed in place. */
  logits: Tensor;
  /** From packPenaltyRows, uploaded: f32 (B, 4), u32 (B + 1), u32 (E, 2). */
  params: Tensor;
  offsets: Tensor;
  entries: Tensor;
  /** Columns that are tokens (default V). */
  validVocab?: number;
}

/** Records the penalties for every row of `logits`. */
export function applyLogitPenalties(rec: Recorder, args: PenaltyArgs) {
  const K = "applyLogitPenalties";
  expectTensor(K, "logits", args.logits, "f32");
  const [B, V] = args.logits.shape as [number, number];
  expectTensor(K, "params", args.params, "f32", [B, 4]);
  expectTensor(K, "offsets", args.offsets, "u32", [B + 1]);
  expectTensor(K, "entries", args.entries, "u32");
  const Vt = args.validVocab ?? V;
  if (B === 0) return;
  rec.dispatch(`logit_penalties ${B}x${V}`, rec.rt.pipeline(source, {}, "apply_penalties"),
    new Params(4).u32(B).u32(V).u32(Vt).u32(0).buffer, [args.logits, args.params, args.offsets, args.entries], [B]);
}

/** float64 reference of one row, in place: the kernel's semantics. */
export function applyLogitPenaltiesRef(logits: Float64Array | Float32Array, p: LogitPenalties): void {
  for (const [t, bits] of rowEntries(p)) {
    if (t >= logits.length) continue;
    if (bits & MASKED) {
      logits[t] = -Infinity;
      continue;
    }
    let l = logits[t]!;
    if (bits & SEEN) l = l > 0 ? l / p.repetition : l * p.repetition;
    const c = bits & COUNT;
    if (c > 0) l = l - c * p.frequency - p.presence;
    logits[t] = l;
  }
}
