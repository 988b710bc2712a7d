/**
 * What every kernel benchmark of `bench --kernels` shares: the JSON line, the shapes (the
 * published models' at 8×512 tokens, or tiny ones for --quick), how long to time, fast random
 * inputs, and relative error against a float64 reference on all entries or a spread sample.
 */
import { type GpuRuntime, type Recorder, hasTensorCoreMatmul } from "@tuneloom/kernels";
import { type ModelConfig, parseModelConfig } from "@tuneloom/model";
import { BENCH_MODELS } from "./model-shapes.ts";
import { sampledRelError, timeGpuAdaptive } from "./timing.ts";

export interface KernelBenchLine {
  op: string;
  shape: string;
  dtype: string;
  /** GPU wall time of one call, from many calls in one submit. */
  ms: number;
  /** Compute-bound ops: useful FLOPs / time (attention: the causal FLOP count). */
  gflops?: number;
  /** Memory-bound ops: bytes the op must read + write / time. */
  gbs?: number;
  /** ‖out − ref‖ / ‖ref‖ against float64 on the CPU, this run's inputs (all entries or a sample). */
  relErr: number;
  /** Whose shapes (absent for the square GEMM and for --quick's tiny shapes). */
  model?: string;
}

/** The tolerance a line's relErr is held to: 1e-5 for f32 math, 2e-3 when 16-bit values are involved. */
export function kernelTolerance(line: Pick<KernelBenchLine, "dtype">): number {
  return /f16/.test(line.dtype) ? 2e-3 : 1e-5;
}

/** One set of shapes: a model's dimensions plus the token batch it is measured at. */
export interface KernelShape {
  /** BENCH_MODELS key, or "quick". */
  name: string;
  cfg: ModelConfig;
  /** Packed training batch: `batch` sequences of `seq` tokens, T = batch·seq. */
  batch: number;
  seq: number;
  T: number;
  /** Decode: cached tokens per sequence, and the batch sizes measured. */
  decodeContext: number;
  decodeBatches: number[];
  /** LoRA rank of the flat parameter set AdamW and grad-norm run over (all seven projections). */
  loraRank: number;
}

/** A small llama-shaped model for --quick: every kernel path, seconds on lavapipe. */
const QUICK_CONFIG = {
  model_type: "llama", hidden_size: 128, intermediate_size: 320, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, vocab_size: 2048, tie_word_embeddings: true, rope_theta: 10000.0, max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
};

function configOf(name: string, raw: Record<string, unknown>): ModelConfig {
  return parseModelConfig({ ...raw, hidden_act: "silu", torch_dtype: "bfloat16" }, `${name} config`);
}

export function quickShape(): KernelShape {
  return { name: "quick", cfg: configOf("quick", QUICK_CONFIG), batch: 2, seq: 32, T: 64, decodeContext: 128, decodeBatches: [1, 2], loraRank: 4 };
}

/** The published model's shapes at 8×512 tokens (what bench --train measures), decode at 4096 cached tokens. */
export function modelShape(name: string): KernelShape {
  const raw = BENCH_MODELS[name];
  if (!raw) throw new Error(`unknown benchmark model '${name}' (known: ${Object.keys(BENCH_MODELS).join(", ")})`);
  return { name, cfg: configOf(name, raw), batch: 8, seq: 512, T: 4096, decodeContext: 4096, decodeBatches: [1, 8], loraRank: 16 };
}

/** The model tag of a line: none for the tiny --quick shapes. */
export const modelTag = (s: KernelShape): { model?: string } => (s.name === "quick" ? {} : { model: s.name });

/**
 * The dtype frozen weights have on this device, as GpuModel picks it for a bf16 checkpoint
 * (packages/model defaultWeightDtype): f16 where the tensor-core matmul runs, else bf16.
 */
export function frozenWeightDtype(rt: GpuRuntime): "f16" | "bf16" {
  return hasTensorCoreMatmul(rt) ? "f16" : "bf16";
}

// ---------------------------------------------------------------------------- timing

/**
 * ms per call of `record`: many calls in one submit, about `targetMs` of GPU time in all on a
 * hardware GPU. On a software device (lavapipe) one timed call, so --quick stays quick.
 */
export function timeKernel(rt: GpuRuntime, record: (rec: Recorder) => void): Promise<number> {
  return timeGpuAdaptive(rt, record, rt.caps.isSoftware ? 1 : 250);
}

/** Runs `record` once in its own submit and waits: the correctness pass before timing. */
export async function runOnce(rt: GpuRuntime, label: string, record: (rec: Recorder) => void) {
  const rec = rt.recorder(label);
  record(rec);
  rec.submit();
  await rt.sync();
  rec.release();
}

export const gbs = (bytes: number, ms: number) => bytes / (ms * 1e6);
export const gflops = (flops: number, ms: number) => flops / (ms * 1e6);

// ---------------------------------------------------------------------------- random inputs

/**
 * n values uniform in [−scale, scale) from xorshift32: fast enough for 10⁸-entry inputs (the
 * testing helpers' Box-Muller randn is not), and never all zeros.
 */
export function uniform(n: number, scale: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 0x9e3779b1) >>> 0 || 1;
  const k = (2 * scale) / 4294967296;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
    out[i] = (s >>> 0) * k - scale;
  }
  return out;
}

/** n values uniform in [lo, hi). */
export function uniformIn(n: number, lo: number, hi: number, seed: number): Float32Array {
  const out = uniform(n, (hi - lo) / 2, seed);
  for (let i = 0; i < n; i++) out[i] = out[i]! + (hi + lo) / 2;
  return out;
}

/**
 * Raw bits of n random f16 or bf16 values ±(1 + m)·2^e, e uniform in [minExp, maxExp):
 * log-uniform magnitudes, exact in both formats, no subnormals, infinities or NaN.
 */
export function random16(n: number, dtype: "f16" | "bf16", minExp: number, maxExp: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  const [bias, mantBits] = dtype === "f16" ? [15, 10] : [127, 7];
  const span = maxExp - minExp;
  let s = (seed * 0x9e3779b1) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
    const r = s >>> 0;
    const e = minExp + (r % span) + bias;
    out[i] = ((r >>> 31) << 15) | (e << mantBits) | ((r >>> 8) & ((1 << mantBits) - 1));
  }
  return out;
}

const decodeTables = new Map<string, Float64Array>();
/** The value of each of the 65536 bit patterns of a 16-bit float type (reference lookups). */
export function decode16(dtype: "f16" | "bf16"): Float64Array {
  let t = decodeTables.get(dtype);
  if (!t) {
    const bits = new Uint16Array(65536).map((_, i) => i);
    if (dtype === "f16") t = Float64Array.from(new Float16Array(bits.buffer));
    else {
      const u32 = Uint32Array.from(bits, (b) => b << 16);
      t = Float64Array.from(new Float32Array(u32.buffer));
    }
    decodeTables.set(dtype, t);
  }
  return t;
}

// ---------------------------------------------------------------------------- errors

/** ‖out − ref‖ / ‖ref‖ over accumulated sums; NaN/inf outputs give Infinity, 0/0 gives 0. */
export class RelErr {
  private num = 0;
  private den = 0;
  private bad = false;
  add(out: number, ref: number) {
    if (!Number.isFinite(out)) this.bad = true;
    this.num += (out - ref) ** 2;
    this.den += ref * ref;
  }
  addRow(out: ArrayLike<number>, outOffset: number, ref: ArrayLike<number>) {
    for (let i = 0; i < ref.length; i++) this.add(out[outOffset + i]!, ref[i]!);
  }
  get value(): number {
    if (this.bad) return Infinity;
    if (this.den === 0) return this.num === 0 ? 0 : Infinity;
    return Math.sqrt(this.num / this.den);
  }
}

/** Every entry when there are at most `max`, else `max` sampled ones (timing.ts's sampler). */
export function elementsRelError(out: Float32Array, ref: (i: number) => number, max = 1 << 16): number {
  if (out.length > max) return sampledRelError(out, ref, max);
  const e = new RelErr();
  for (let i = 0; i < out.length; i++) e.add(out[i]!, ref(i));
  return e.value;
}

/** Rows to check: all of them when rows ≤ max, else `max` spread ones, the first and last included. */
export function checkRows(rows: number, max: number): number[] {
  if (rows <= max) return Array.from({ length: rows }, (_, i) => i);
  const picked = new Set<number>([0, rows - 1]);
  let s = 12345;
  while (picked.size < max) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    picked.add(s % rows);
  }
  return [...picked].sort((a, b) => a - b);
}

/** relErr of `out` (rows of width C) over the given rows; ref(row) is that row in float64. */
export function rowsRelError(out: Float32Array, C: number, rows: number[], ref: (row: number) => ArrayLike<number>): number {
  const e = new RelErr();
  for (const r of rows) e.addRow(out, r * C, ref(r));
  return e.value;
}

/** The largest of several relErrs (a NaN counts as Infinity). */
export const worst = (...errs: number[]) => errs.reduce((a, b) => (Number.isNaN(b) ? Infinity : Math.max(a, b)), 0);
