/**
 * Kernel benchmarks of the memory-bound ops of a decoder layer and the weight loader:
 * embedding gather, RMSNorm, RoPE, SwiGLU, residual add (forward and backward where training
 * has one), LoRA-input dropout and bf16 conversion. Each reports gbs = the bytes the op must
 * read and write once / time, and relErr of this run's outputs against float64.
 */
import {
  type GpuRuntime, type Recorder, type Tensor, addInPlace, checkEmbeddingErrors, convertTensor, dropoutBackward, dropoutForward,
  dropoutSeed, dropoutThreshold, embeddingErrors, embeddingForward, rmsnormBackward, rmsnormForward, ropeBackward, ropeForward,
  ropeInvFreq, swigluBackward, swigluForward,
} from "@tuneloom/kernels";
import {
  type KernelBenchLine, type KernelShape, checkRows, decode16, elementsRelError, frozenWeightDtype, gbs, modelTag, random16,
  rowsRelError, runOnce, timeKernel, uniform, worst,
} from "./kernels-common.ts";

/** The (V, C) table that embedding and the tied LM head share, made once per shape and dtype. */
export class SharedTables {
  private readonly tables = new Map<"f16" | "bf16", { bits: Uint16Array; tensor: Tensor }>();
  constructor(private readonly rt: GpuRuntime, private readonly s: KernelShape) {}

  /** Random weights of std ≈ 0.03 (|w| in [2^-8, 2^-4)), as raw bits and as a GPU tensor. */
  get(dtype: "f16" | "bf16") {
    let t = this.tables.get(dtype);
    if (!t) {
      const { vocabSize: V, hiddenSize: C } = this.s.cfg;
      const bits = random16(V * C, dtype, -8, -4, dtype === "f16" ? 21 : 22);
      t = { bits, tensor: this.rt.upload(dtype, [V, C], bits, `bench:table-${dtype}`) };
      this.tables.set(dtype, t);
    }
    return t;
  }

  release() {
    for (const t of this.tables.values()) this.rt.release(t.tensor);
    this.tables.clear();
  }
}

/** T token ids in [0, V). */
export function randomIds(T: number, V: number, seed: number): Int32Array {
  let s = seed >>> 0 || 1;
  return Int32Array.from({ length: T }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), (s >>> 8) % V));
}

// ---------------------------------------------------------------------------- embedding

export async function* benchEmbedding(rt: GpuRuntime, s: KernelShape, tables: SharedTables): AsyncGenerator<KernelBenchLine> {
  const { T } = s, V = s.cfg.vocabSize, C = s.cfg.hiddenSize;
  const ids = randomIds(T, V, 31);
  const idsT = rt.upload("i32", [T], ids), out = rt.empty("f32", [T, C]), errors = embeddingErrors(rt);
  try {
    for (const dtype of ["bf16", "f16"] as const) {
      const { bits, tensor } = tables.get(dtype);
      const record = (rec: Recorder) => embeddingForward(rec, idsT, tensor, out, errors);
      await runOnce(rt, "bench embedding", record);
      await checkEmbeddingErrors(rt, errors, V);
      const lut = decode16(dtype);
      const relErr = elementsRelError(await rt.read(out), (i) => lut[bits[ids[Math.floor(i / C)]! * C + (i % C)]!]!);
      const ms = await timeKernel(rt, record);
      yield {
        op: "embedding", shape: `T=${T} V=${V} C=${C}`, dtype: `${dtype} table -> f32`, ms,
        gbs: gbs(T * C * 2 + T * 4 + T * C * 4, ms), relErr, ...modelTag(s),
      };
    }
  } finally {
    rt.release(idsT, out, errors);
  }
}

// ---------------------------------------------------------------------------- RMSNorm

export async function* benchRmsnorm(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const { T } = s, C = s.cfg.hiddenSize, eps = s.cfg.rmsNormEps;
  const wDtype = frozenWeightDtype(rt);
  const x = uniform(T * C, 1, 41), dy = uniform(T * C, 1, 42), dx0 = uniform(T * C, 1, 43);
  const wBits = random16(C, wDtype, -1, 1, 44);
  const lut = decode16(wDtype);
  const w = Float64Array.from(wBits, (b) => lut[b]!);
  const t = {
    x: rt.upload("f32", [T, C], x), w: rt.upload(wDtype, [C], wBits), y: rt.empty("f32", [T, C]), rstd: rt.empty("f32", [T]),
    dy: rt.upload("f32", [T, C], dy), dx: rt.upload("f32", [T, C], dx0),
  };
  try {
    const shape = `T=${T} C=${C}`, dtype = `f32, ${wDtype} weight`;
    const rstdOf = (r: number) => {
      let ss = 0;
      for (let c = 0; c < C; c++) ss += x[r * C + c]! ** 2;
      return 1 / Math.sqrt(ss / C + eps);
    };
    const rows = checkRows(T, 512);

    // y = x · rstd · w
    const fwd = (rec: Recorder) => rmsnormForward(rec, t.x, t.w, t.y, t.rstd, eps);
    await runOnce(rt, "bench rmsnorm", fwd);
    const y = await rt.read(t.y), rstd = await rt.read(t.rstd);
    const fwdErr = worst(
      rowsRelError(y, C, rows, (r) => {
        const rs = rstdOf(r);
        return Float64Array.from({ length: C }, (_, c) => x[r * C + c]! * rs * w[c]!);
      }),
      rowsRelError(rstd, 1, rows, (r) => [rstdOf(r)]),
    );
    let ms = await timeKernel(rt, fwd);
    yield { op: "rmsnorm_fwd", shape, dtype, ms, gbs: gbs(2 * T * C * 4 + T * 4 + C * 2, ms), relErr: fwdErr, ...modelTag(s) };

    // dx += rstd·w·dy − x·rstd³/C · Σ x·w·dy   (beta = 1: the residual stream's gradient, as the decoder layer calls it)
    const bwd = (rec: Recorder) => rmsnormBackward(rec, t.x, t.w, t.rstd, t.dy, t.dx, 1);
    await runOnce(rt, "bench rmsnorm backward", bwd);
    const dx = await rt.read(t.dx);
    const added = Float32Array.from(dx, (v, i) => v - dx0[i]!);
    const bwdErr = rowsRelError(added, C, rows, (r) => {
      const rs = rstdOf(r);
      let dot = 0;
      for (let c = 0; c < C; c++) dot += x[r * C + c]! * w[c]! * dy[r * C + c]!;
      return Float64Array.from({ length: C }, (_, c) => rs * w[c]! * dy[r * C + c]! - (x[r * C + c]! * rs ** 3 * dot) / C);
    });
    ms = await timeKernel(rt, bwd);
    yield { op: "rmsnorm_bwd", shape, dtype, ms, gbs: gbs(4 * T * C * 4 + T * 4 + C * 2, ms), relErr: bwdErr, ...modelTag(s) };
  } finally {
    rt.release(...Object.values(t));
  }
}

// ---------------------------------------------------------------------------- RoPE

export async function* benchRope(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const { T } = s, nH = s.cfg.numHeads, nKV = s.cfg.numKvHeads, hd = s.cfg.headDim, half = hd / 2;
  const invFreq = ropeInvFreq(s.cfg);
  const positions = Int32Array.from({ length: T }, (_, i) => i % s.seq);
  const q = uniform(T * nH * hd, 1, 51), k = uniform(T * nKV * hd, 1, 52);
  const t = {
    q: rt.upload("f32", [T, nH, hd], q), k: rt.upload("f32", [T, nKV, hd], k),
    positions: rt.upload("i32", [T], positions), invFreq: rt.upload("f32", [half], invFreq),
  };
  /** Token r's heads of x rotated by sign·θ, θ = fround(pos·inv_freq) as rope.wgsl computes it. */
  const rotated = (x: Float32Array, heads: number, r: number, sign: number) => {
    const out = new Float64Array(heads * hd);
    for (let h = 0; h < heads; h++) {
      const o = (r * heads + h) * hd;
      for (let i = 0; i < half; i++) {
        const theta = Math.fround(positions[r]! * invFreq[i]!);
        const c = Math.cos(theta), sn = sign * Math.sin(theta);
        const a = x[o + i]!, b = x[o + i + half]!;
        out[h * hd + i] = a * c - b * sn;
        out[h * hd + i + half] = b * c + a * sn;
      }
    }
    return out;
  };
  try {
    const rows = checkRows(T, 512);
    const shape = `T=${T} heads=${nH}/${nKV} hd=${hd}`;
    const bytes = 2 * T * (nH + nKV) * hd * 4 + T * 4 + half * 4;
    for (const [op, sign, run] of [["rope_fwd", 1, ropeForward], ["rope_bwd", -1, ropeBackward]] as const) {
      rt.write(t.q, q);
      rt.write(t.k, k);
      const record = (rec: Recorder) => run(rec, { q: t.q, k: t.k, positions: t.positions, invFreq: t.invFreq });
      await runOnce(rt, `bench ${op}`, record);
      const relErr = worst(
        rowsRelError(await rt.read(t.q), nH * hd, rows, (r) => rotated(q, nH, r, sign)),
        rowsRelError(await rt.read(t.k), nKV * hd, rows, (r) => rotated(k, nKV, r, sign)),
      );
      const ms = await timeKernel(rt, record); // in place, as the decoder layer runs it
      yield { op, shape, dtype: "f32", ms, gbs: gbs(bytes, ms), relErr, ...modelTag(s) };
    }
  } finally {
    rt.release(...Object.values(t));
  }
}

// ---------------------------------------------------------------------------- SwiGLU

export async function* benchSwiglu(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const { T } = s, I = s.cfg.intermediateSize, n = T * I;
  const gate = uniform(n, 4, 61), up = uniform(n, 2, 62), dh = uniform(n, 1, 63);
  const t = {
    gate: rt.upload("f32", [T, I], gate), up: rt.upload("f32", [T, I], up), h: rt.empty("f32", [T, I]),
    dh: rt.upload("f32", [T, I], dh), dgate: rt.empty("f32", [T, I]), dup: rt.empty("f32", [T, I]),
  };
  const sigmoid = (g: number) => 1 / (1 + Math.exp(-g));
  try {
    const shape = `T=${T} I=${I}`;
    const fwd = (rec: Recorder) => swigluForward(rec, t.gate, t.up, t.h);
    await runOnce(rt, "bench swiglu", fwd);
    const fwdErr = elementsRelError(await rt.read(t.h), (i) => gate[i]! * sigmoid(gate[i]!) * up[i]!);
    let ms = await timeKernel(rt, fwd);
    yield { op: "swiglu_fwd", shape, dtype: "f32", ms, gbs: gbs(3 * n * 4, ms), relErr: fwdErr, ...modelTag(s) };

    // dgate = dh·up·σ(g)·(1 + g·(1 − σ(g))),  dup = dh·silu(g)
    const bwd = (rec: Recorder) => swigluBackward(rec, t.gate, t.up, t.dh, t.dgate, t.dup);
    await runOnce(rt, "bench swiglu backward", bwd);
    const bwdErr = worst(
      elementsRelError(await rt.read(t.dgate), (i) => {
        const sg = sigmoid(gate[i]!);
        return dh[i]! * up[i]! * sg * (1 + gate[i]! * (1 - sg));
      }),
      elementsRelError(await rt.read(t.dup), (i) => dh[i]! * gate[i]! * sigmoid(gate[i]!)),
    );
    ms = await timeKernel(rt, bwd);
    yield { op: "swiglu_bwd", shape, dtype: "f32", ms, gbs: gbs(5 * n * 4, ms), relErr: bwdErr, ...modelTag(s) };
  } finally {
    rt.release(...Object.values(t));
  }
}

// ---------------------------------------------------------------------------- residual add

export async function* benchResidualAdd(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const { T } = s, C = s.cfg.hiddenSize;
  const a = uniform(T * C, 1, 71), b = uniform(T * C, 1, 72);
  const ta = rt.upload("f32", [T, C], a), tb = rt.upload("f32", [T, C], b);
  try {
    const record = (rec: Recorder) => addInPlace(rec, ta, tb); // x += f(x), as the decoder layer does
    await runOnce(rt, "bench residual add", record);
    const relErr = elementsRelError(await rt.read(ta), (i) => a[i]! + b[i]!);
    const ms = await timeKernel(rt, record);
    yield { op: "residual_add", shape: `T=${T} C=${C}`, dtype: "f32", ms, gbs: gbs(3 * T * C * 4, ms), relErr, ...modelTag(s) };
  } finally {
    rt.release(ta, tb);
  }
}

// ---------------------------------------------------------------------------- conversion

/** Checkpoint loading: one MLP weight (I, C) stored bf16, converted to f32 and to f16. */
export async function* benchConvert(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const I = s.cfg.intermediateSize, C = s.cfg.hiddenSize, n = I * C;
  const bits = random16(n, "bf16", -10, -2, 81); // inside f16's normal range: bf16 → f16 is exact
  const lut = decode16("bf16");
  const src = rt.upload("bf16", [I, C], bits);
  try {
    for (const to of ["f32", "f16"] as const) {
      const dst = rt.empty(to, [I, C]);
      try {
        const record = (rec: Recorder) => convertTensor(rec, src, dst);
        await runOnce(rt, `bench convert bf16 -> ${to}`, record);
        const relErr = elementsRelError(await rt.read(dst), (i) => lut[bits[i]!]!);
        const ms = await timeKernel(rt, record);
        yield { op: "convert", shape: `${I}x${C}`, dtype: `bf16 -> ${to}`, ms, gbs: gbs(n * 2 + n * (to === "f32" ? 4 : 2), ms), relErr, ...modelTag(s) };
      } finally {
        rt.release(dst);
      }
    }
  } finally {
    rt.release(src);
  }
}

// ---------------------------------------------------------------------------- dropout

/** dropout.wgsl's PCG hash on the CPU (kernels/src/dropout.ts keeps its copy private). */
function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** LoRA dropout on a layer input (T, C), p = 0.05; backward adds into dx (beta = 1) as lora.ts calls it. */
export async function* benchDropout(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const { T } = s, C = s.cfg.hiddenSize, n = T * C, p = 0.05;
  const seed = dropoutSeed(1, 2, 3), threshold = dropoutThreshold(p), scale = Math.fround(1 / (1 - p)), hseed = pcgHash(seed);
  const kept = (i: number) => pcgHash((pcgHash(i) + hseed) >>> 0) >= threshold;
  const x = uniform(n, 1, 91), dx0 = uniform(n, 1, 92);
  const t = { x: rt.upload("f32", [T, C], x), xd: rt.empty("f32", [T, C]), dx: rt.upload("f32", [T, C], dx0) };
  try {
    const shape = `T=${T} C=${C} p=${p}`;
    const fwd = (rec: Recorder) => dropoutForward(rec, t.x, t.xd, p, seed);
    await runOnce(rt, "bench dropout", fwd);
    const fwdErr = elementsRelError(await rt.read(t.xd), (i) => (kept(i) ? x[i]! * scale : 0));
    let ms = await timeKernel(rt, fwd);
    yield { op: "dropout_fwd", shape, dtype: "f32", ms, gbs: gbs(2 * n * 4, ms), relErr: fwdErr, ...modelTag(s) };

    // the gradient of x̃ (here: x̃ itself as dx̃) flows back through the same mask
    const bwd = (rec: Recorder) => dropoutBackward(rec, t.xd, t.dx, p, seed, 1);
    await runOnce(rt, "bench dropout backward", bwd);
    const xd = await rt.read(t.xd), dx = await rt.read(t.dx);
    const added = Float32Array.from(dx, (v, i) => v - dx0[i]!);
    const bwdErr = elementsRelError(added, (i) => (kept(i) ? xd[i]! * scale : 0));
    ms = await timeKernel(rt, bwd);
    yield { op: "dropout_bwd", shape, dtype: "f32", ms, gbs: gbs(3 * n * 4, ms), relErr: bwdErr, ...modelTag(s) };
  } finally {
    rt.release(...Object.values(t));
  }
}
