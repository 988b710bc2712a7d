/**
 * Cross-entropy fused with the output projection (the LM head), chunked over the vocabulary.
 *
 *   logits = h · Wᵀ                         // (T, V), never materialised whole
 *   nll_t  = logsumexp(logits_t) - logits_t[label_t]      for label_t != -100
 *   lossSum = Σ_t nll_t,  count = #targets               → loss tensor [lossSum, count]
 *   dh     = scale · Σ_t ∂nll_t/∂h  = dlogits · W,  dlogits = scale · (softmax − onehot)
 *
 * Gradient accumulation: the trainer passes `scale = 1 / (target tokens across ALL micro-
 * batches of the step)`, so summing dh over micro-batches gives the gradient of the mean loss
 * of the whole step (what PyTorch gets from one big batch). The loss comes back as a per-call
 * SUM plus count on the GPU (`accumulateLoss` adds into it), read only when wanted.
 *
 * Cost: with dW (a trainable head) the backward recomputes each logits chunk, so forward+backward
 * is four GEMMs of 2·T·V·C flops (logits twice, dh, dW). With dh only (LoRA: the head is frozen),
 * the one-pass backward (crossEntropyOnePass; cross-entropy.wgsl) accumulates dh during the
 * forward sweep: two GEMMs (logits, exp(logits − m)·W), plus T·C·4 bytes of scratch (U). Work memory is
 * T·chunk·4 bytes of logits plus T·16 bytes of row state. Each chunk binds its own slice of W
 * (the chunk start is rounded so the slice offset is a multiple of 256 bytes), so W itself may
 * exceed the device's storage-binding limit (lavapipe: 128 MiB; Qwen2.5-0.5B's tied bf16
 * embedding is 272 MB).
 */
import { type DType, BYTES_PER_ELEMENT } from "./dtype.ts";
import { Params, cdiv } from "./params.ts";
import { matmul } from "./matmul.ts";
import { hasTensorCoreMatmul, linearBackwardWeightTensorCore, matmulAuto, matmulTensorCore, tensorCoreUnsupported, toF16 } from "./matmul-subgroup.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, Tensor } from "./tensor.ts";
import { wgslLoader } from "./load16.ts";
import { embeddingForward } from "./embedding.ts";
import crossEntropyWgsl from "./cross-entropy.wgsl" with { type: "text" };

const source: KernelSource = { name: "cross_entropy", code: crossEntropyWgsl };
const FIRST_CHUNK = 1, ACCUM_LOSS = 2, HAS_NLL = 4, HAS_FLAG = 8;
export const IGNORE_INDEX = -100;
const BINDING_ALIGN = 256;

/**
 * The one-pass backward for dh only (cross-entropy.wgsl, "one-pass backward"): on unless
 * `TUNELOOM_CE_ONE_PASS=0` (the three-GEMM form: logits, recomputed logits, dh).
 */
export const crossEntropyOnePass = { enabled: process.env.TUNELOOM_CE_ONE_PASS !== "0" };

/**
 * The one-pass backward's two dh kernels, per W dtype: each chunk subtracts scale·W[label] from
 * dh for the rows whose label lies in the chunk's W slice (the first chunk also zeroes the other
 * rows unless dh accumulates), and the end adds scale · U / s (ignored rows get nothing).
 */
const dhSources = new Map<DType, KernelSource>();
function dhSource(wDtype: DType): KernelSource {
  let src = dhSources.get(wDtype);
  if (src) return src;
  const code = `struct Params { T: u32, n: u32, v0: u32, C: u32, scale: f32, flags: u32, _a: u32, _b: u32 }
const FIRST_CHUNK = 1u;
const ACCUM_DH = 2u;
const IGNORE_INDEX = -100;
@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> g_labels: array<i32>;   // (T)
${wgslLoader("w", 2, wDtype)}                                    // this chunk's W rows (n, C)
@group(0) @binding(3) var<storage, read_write> g_dh: array<f32>;  // (T, C)

// dh −= scale · W[label] for rows whose label is in this chunk. Grid (ceil(C / 256), T).
@compute @workgroup_size(256)
fn ce_dh_label_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = wg.y;
  let c = wg.x * 256u + tid;
  if (c >= p.C) { return; }
  let i = t * p.C + c;
  let fresh = (p.flags & FIRST_CHUNK) != 0u && (p.flags & ACCUM_DH) == 0u; // dh's old values are not kept
  let label = g_labels[t];
  if (label >= i32(p.v0) && label < i32(p.v0 + p.n)) {
    var d = -p.scale * load_w((u32(label) - p.v0) * p.C + c);
    if (!fresh) { d += g_dh[i]; }
    g_dh[i] = d;
  } else if (fresh) { g_dh[i] = 0.0; }
}

@group(0) @binding(1) var<storage, read> d_labels: array<i32>;    // (T)
@group(0) @binding(2) var<storage, read> d_state: array<f32>;     // (T, 4): slot 1 the final Σ exp(l − m)
@group(0) @binding(3) var<storage, read> d_u: array<f32>;         // U (T, C)
@group(0) @binding(4) var<storage, read_write> d_dh: array<f32>;  // (T, C)

// dh += scale · U / s for rows with a label. Grid (ceil(C / 256), T).
@compute @workgroup_size(256)
fn ce_dh_from_u(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = wg.y;
  let c = wg.x * 256u + tid;
  if (c >= p.C) { return; }
  if (d_labels[t] == IGNORE_INDEX) { return; }
  let i = t * p.C + c;
  d_dh[i] += p.scale * d_u[i] / d_state[t * 4u + 1u];
}
`;
  src = { name: `cross_entropy_dh_w${wDtype}`, code };
  dhSources.set(wDtype, src);
  return src;
}
const MAX_ROWS = 65535; // one workgroup per row along a grid dimension

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
const lcm = (a: number, b: number) => (a / gcd(a, b)) * b;
/** Rows of a (rows, C) tensor of `elemBytes` per element that make a 256-byte multiple. */
const rowAlign = (C: number, elemBytes: number) => BINDING_ALIGN / gcd(C * elemBytes, BINDING_ALIGN);

/** A (rows, C) slice of a row-major matrix starting at row r0, as a bindable tensor. */
function rowSlice(t: Tensor, r0: number, rows: number, C: number): Tensor {
  const off = t.byteOffset + r0 * C * BYTES_PER_ELEMENT[t.dtype];
  if (off % BINDING_ALIGN !== 0) throw new Error(`rowSlice: ${t.label} row ${r0} starts at byte ${off}, not a multiple of ${BINDING_ALIGN}`);
  return new Tensor(t.buffer, t.dtype, [rows, C], off, t.label);
}

/** The default chunk's logits (T, n) f32 stay under this many bytes (and n under 16384 columns). */
export const LOGITS_CHUNK_BYTES = 128 * 2 ** 20;

/** The default vocabulary columns per chunk for T rows: 16384, fewer where the logits would pass LOGITS_CHUNK_BYTES. */
export const defaultLogitsChunk = (T: number) => Math.max(1024, Math.min(16384, Math.floor(LOGITS_CHUNK_BYTES / (4 * Math.max(T, 1)))));

/**
 * Vocabulary columns per chunk: at most `want` (default defaultLogitsChunk: 8192 at 4096 rows),
 * rounded so every chunk's W (and dW) slice starts on a 256-byte boundary, and small enough that
 * the logits chunk (T, n) and the W slice each fit one storage binding.
 */
export function crossEntropyChunk(rt: GpuRuntime, T: number, V: number, C: number, wDtype: DType, want = defaultLogitsChunk(T), dw = false): number {
  let align = rowAlign(C, BYTES_PER_ELEMENT[wDtype]);
  if (dw) align = lcm(align, rowAlign(C, 4));
  const maxBind = rt.caps.limits.maxStorageBufferBindingSize;
  let n = Math.min(want, V, Math.floor(maxBind / (4 * Math.max(T, 1))), Math.floor(maxBind / (4 * C)));
  n = Math.max(align, Math.floor(n / align) * align);
  if (n >= V) return V;
  return n;
}

/** Scratch for crossEntropy: keep one per (T, chunk) when a Recorder is submitted repeatedly. */
export interface CrossEntropyWorkspace {
  logits: Tensor; // (T, chunk) f32
  state: Tensor; // (T, 4) f32
  T: number;
  chunk: number;
}

export function createCrossEntropyWorkspace(rt: GpuRuntime, T: number, chunk: number): CrossEntropyWorkspace {
  return {
    logits: rt.empty("f32", [T, chunk], "ce:logits"),
    state: rt.empty("f32", [T, 4], "ce:state"),
    T,
    chunk,
  };
}

export function releaseCrossEntropyWorkspace(rt: GpuRuntime, ws: CrossEntropyWorkspace) {
  rt.release(ws.logits, ws.state);
}

export interface CrossEntropyArgs {
  /** f32 (T, C) final hidden states (after the last norm). */
  h: Tensor;
  /** f32/f16/bf16 (V, C) head weight (the embedding table when tied). */
  w: Tensor;
  /** i32 (T) next-token labels; -100 is ignored. */
  labels: Tensor;
  /** f32 (2) out: [Σ nll over target tokens, number of target tokens] of this call. */
  loss: Tensor;
  /** loss += this call's [sum, count] instead of overwriting. */
  accumulateLoss?: boolean;
  /** f32 (T) out: per-token nll (0 at ignored rows), for perplexity. */
  nll?: Tensor;
  /** u32 (1): set to 1 when the loss sum is not finite (never cleared here). */
  nonFinite?: Tensor;
  /** f32 (T, C) out: ∂(scale · lossSum)/∂h. Absent: forward only (evaluation). */
  dh?: Tensor;
  /** dh += instead of dh = (e.g. tied embeddings also feeding dh elsewhere). */
  accumulateDh?: boolean;
  /** f32 (V, C) out: ∂(scale · lossSum)/∂W, for a trainable head. */
  dw?: Tensor;
  accumulateDw?: boolean;
  /** Gradient scale: 1 / (target tokens across all micro-batches of the step). Required with dh/dw. */
  scale?: number;
  /** Vocabulary columns per chunk (rounded for alignment; see crossEntropyChunk). */
  chunk?: number;
  /** Scratch; without one it is the recording's scratch (Recorder.scratch), held until the recorder's release(). */
  workspace?: CrossEntropyWorkspace;
}

/** Records the chunked cross-entropy forward (and backward when dh/dw is given). */
export function crossEntropy(rec: Recorder, args: CrossEntropyArgs) {
  const K = "crossEntropy";
  const { h, w, labels, loss } = args;
  expectTensor(K, "h", h, "f32");
  expectTensor(K, "w", w, ["f32", "f16", "bf16"]);
  if (h.shape.length !== 2 || w.shape.length !== 2) throw new Error(`${K}: h must be (T, C) and w (V, C), got [${h.shape}] and [${w.shape}]`);
  const [T, C] = h.shape as [number, number];
  const [V, Cw] = w.shape as [number, number];
  if (Cw !== C) throw new Error(`${K}: h has ${C} channels, w has ${Cw}`);
  if (T > MAX_ROWS) throw new Error(`${K}: T = ${T} rows exceeds ${MAX_ROWS}; split the batch into calls`);
  if (w.byteOffset % BINDING_ALIGN !== 0) throw new Error(`${K}: w must start on a ${BINDING_ALIGN}-byte boundary`);
  expectTensor(K, "labels", labels, "i32", [T]);
  expectTensor(K, "loss", loss, "f32", [2]);
  if (args.nll) expectTensor(K, "nll", args.nll, "f32", [T]);
  if (args.nonFinite) expectTensor(K, "nonFinite", args.nonFinite, "u32", [1]);
  if (args.dh) expectTensor(K, "dh", args.dh, "f32", [T, C]);
  if (args.dw) {
    expectTensor(K, "dw", args.dw, "f32", [V, C]);
    if (args.dw.byteOffset % BINDING_ALIGN !== 0) throw new Error(`${K}: dw must start on a ${BINDING_ALIGN}-byte boundary`);
  }
  const backward = !!(args.dh || args.dw);
  if (backward && (args.scale === undefined || !Number.isFinite(args.scale))) {
    throw new Error(`${K}: pass scale = 1 / (target tokens across all micro-batches) with dh/dw`);
  }
  if (T === 0) return;

  const rt = rec.rt;
  const chunk = args.workspace?.chunk ?? crossEntropyChunk(rt, T, V, C, w.dtype, args.chunk, !!args.dw);
  let ws = args.workspace;
  const ownWs = !ws;
  if (ws) {
    if (ws.T !== T) throw new Error(`${K}: workspace is for T = ${ws.T}, got T = ${T}`);
    const align = lcm(rowAlign(C, BYTES_PER_ELEMENT[w.dtype]), args.dw ? rowAlign(C, 4) : 1);
    if (ws.chunk < V && ws.chunk % align !== 0) throw new Error(`${K}: workspace chunk ${ws.chunk} is not a multiple of ${align} rows of W`);
  } else {
    // Recording-scoped scratch, never the runtime's pool: a buffer handed back to the pool now
    // could be taken by an upload or zeros() before this recording is submitted, and that host
    // write, queued at once, would land before the dispatches recorded here that still use it.
    ws = { logits: rec.scratch("f32", [T, chunk], "ce:logits"), state: rec.scratch("f32", [T, 4], "ce:state"), T, chunk };
  }

  const pStats = rt.pipeline(source, {}, "ce_chunk_stats");
  const pFinal = rt.pipeline(source, {}, "ce_finalize");
  const params = (n: number, v0: number, flags: number, scale = 0) =>
    new Params(8).u32(T).u32(n).u32(v0).u32(V).f32(scale).u32(flags).u32(0).u32(0).buffer;

  // logits (T, n) = h·W_cᵀ for the chunk at v0; on tensor cores h is rounded to f16 once, not per chunk.
  const h16 = hasTensorCoreMatmul(rt) && w.dtype === "f16" ? toF16(rec, h) : null;
  const chunkLogits = (v0: number, n: number, logits: Tensor) => {
    const args = { a: h, b: rowSlice(w, v0, n, C), c: logits, M: T, N: n, K: C, transB: true };
    if (h16 && !tensorCoreUnsupported({ ...args, a: h16 })) matmulTensorCore(rec, { ...args, a: h16 });
    else matmul(rec, args);
  };
  // One pass (dh only): U (T, C) accumulates during the forward sweep, dh takes −scale·W[label].
  const onePass = !!args.dh && !args.dw && crossEntropyOnePass.enabled;
  const U = onePass ? rec.scratch("f32", [T, C], "ce:u") : null;
  const dhFlags = (first: boolean) => (first ? FIRST_CHUNK : 0) | (args.accumulateDh ? 2 : 0);
  const pExp = onePass ? rt.pipeline(source, {}, "ce_chunk_exp") : null, pScale = onePass ? rt.pipeline(source, {}, "ce_scale_rows") : null;
  const dhParams = (n: number, v0: number, flags: number, scale = 0) => new Params(8).u32(T).u32(n).u32(v0).u32(C).f32(scale).u32(flags).u32(0).u32(0).buffer;
  // forward: logits chunk by chunk, online (max, sum-exp) per row
  for (let v0 = 0; v0 < V; v0 += chunk) {
    const n = Math.min(chunk, V - v0);
    const logits = ws.logits.view([T * chunk]);
    chunkLogits(v0, n, logits);
    rec.dispatch(`ce_chunk_stats v0=${v0}`, pStats, params(n, v0, v0 === 0 ? FIRST_CHUNK : 0), [logits, labels, ws.state], [T]);
    if (U) {
      // E = exp(logits − m) in place; U = α·U + E·W_c; dh −= scale·W_c[label] for labels in this chunk.
      rec.dispatch(`ce_chunk_exp v0=${v0}`, pExp!, params(n, v0, 0), [logits, labels, ws.state], [cdiv(n, 256), T]);
      if (v0 > 0) rec.dispatch("ce_scale_rows", pScale!, params(C, 0, 0), [U, labels, ws.state], [cdiv(C, 256), T]);
      const wc = rowSlice(w, v0, n, C);
      const eArgs = { a: new Tensor(logits.buffer, "f32", [T, n], logits.byteOffset, "ce:exp"), b: wc, c: U, M: T, N: C, K: n, lda: n, beta: v0 === 0 ? 0 : 1 };
      if (h16 && !tensorCoreUnsupported({ ...eArgs, a: h16 })) {
        const e16 = toF16(rec, eArgs.a); // E ∈ [0, 1]: f16 keeps its relative precision
        matmulTensorCore(rec, { ...eArgs, a: e16 });
        rec.recycle(e16);
      } else matmul(rec, eArgs);
      rec.dispatch(`ce_dh_label_rows v0=${v0}`, rt.pipeline(dhSource(w.dtype), {}, "ce_dh_label_rows"),
        dhParams(n, v0, dhFlags(v0 === 0), args.scale), [labels, wc, args.dh!], [cdiv(C, 256), T]);
    }
  }
  const flags = (args.accumulateLoss ? ACCUM_LOSS : 0) | (args.nll ? HAS_NLL : 0) | (args.nonFinite ? HAS_FLAG : 0);
  rec.dispatch("ce_finalize", pFinal, params(0, 0, flags),
    [ws.state, labels, loss, args.nll ?? rt.writablePlaceholder(0), args.nonFinite ?? rt.writablePlaceholder(1)], [1]);

  if (U) {
    rec.dispatch("ce_dh_from_u", rt.pipeline(dhSource(w.dtype), {}, "ce_dh_from_u"),
      dhParams(0, 0, 0, args.scale), [labels, ws.state, U, args.dh!], [cdiv(C, 256), T]);
    rec.recycle(U);
  } else if (backward) {
    const pBack = rt.pipeline(source, {}, "ce_chunk_backward");
    for (let v0 = 0; v0 < V; v0 += chunk) {
      const n = Math.min(chunk, V - v0);
      const logits = ws.logits.view([T * chunk]);
      chunkLogits(v0, n, logits); // recompute (T, n)
      rec.dispatch(`ce_chunk_backward v0=${v0}`, pBack, params(n, v0, 0, args.scale), [logits, labels, ws.state], [cdiv(n, 256), T]);
      // backward of  logits = h · W_cᵀ :
      if (args.dh) { // dh (T, C) += dlogits (T, n) · W_c (n, C)
        const beta = v0 === 0 && !args.accumulateDh ? 0 : 1;
        const dArgs = { a: logits, b: rowSlice(w, v0, n, C), c: args.dh, M: T, N: C, K: n, lda: n, beta };
        // Tensor cores need dlogits in f16: only in summed-loss units (scale ≥ 2^-10), where
        // p − y stays far above f16's underflow; a 1/targets scale would flush most of it to 0.
        if (h16 && args.scale! >= 2 ** -10 && !tensorCoreUnsupported({ ...dArgs, a: h16 })) {
          const d16 = toF16(rec, new Tensor(logits.buffer, "f32", [T, n], logits.byteOffset, "dlogits"));
          matmulTensorCore(rec, { ...dArgs, a: d16 });
          rec.recycle(d16);
        } else matmul(rec, dArgs);
      }
      if (args.dw) { // dW_c (n, C) (+)= dlogitsᵀ (n, T) · h (T, C)
        const dwc = rowSlice(args.dw, v0, n, C), beta = args.accumulateDw ? 1 : 0;
        // On tensor cores (dlogits transposed and rounded to f16, h16 shared) under the same
        // summed-loss condition as dh; else the portable f32 kernel.
        const dlogits = new Tensor(logits.buffer, "f32", [T, n], logits.byteOffset, "dlogits");
        if (!(h16 && args.scale! >= 2 ** -10 && linearBackwardWeightTensorCore(rec, h, dlogits, dwc, beta, h16))) {
          matmul(rec, { a: logits, b: h, c: dwc, M: n, N: C, K: T, transA: true, lda: n, beta });
        }
      }
    }
  }
  if (h16) rec.recycle(h16);
  // Later dispatches of this recording may reuse the scratch (the recording holds it until release()).
  if (ownWs) {
    rec.recycle(ws.logits);
    rec.recycle(ws.state);
  }
}

/** Reads [lossSum, count] back (waits for the GPU). */
export async function readLoss(rt: GpuRuntime, loss: Tensor): Promise<{ sum: number; count: number; mean: number }> {
  const [sum, count] = await rt.read(loss);
  return { sum: sum!, count: count!, mean: sum! / count! };
}

/**
 * Inference: logits of selected rows, out (R, V) f32 = h[rows] · Wᵀ (e.g. the last position of
 * each sequence for generation). Rows are gathered with buffer copies into `scratch` (R, C)
 * (from the pool when absent); W is walked in chunks that each fit one storage binding.
 */
export function logitsRows(rec: Recorder, h: Tensor, w: Tensor, rows: readonly number[], out: Tensor, scratch?: Tensor) {
  const K = "logitsRows";
  expectTensor(K, "h", h, "f32");
  expectTensor(K, "w", w, ["f32", "f16", "bf16"]);
  const [T, C] = h.shape as [number, number];
  const [V, Cw] = w.shape as [number, number];
  if (Cw !== C) throw new Error(`${K}: h has ${C} channels, w has ${Cw}`);
  const R = rows.length;
  expectTensor(K, "out", out, "f32", [R, V]);
  if (out.byteOffset % BINDING_ALIGN !== 0) throw new Error(`${K}: out must start on a ${BINDING_ALIGN}-byte boundary`);
  for (const r of rows) if (!Number.isInteger(r) || r < 0 || r >= T) throw new Error(`${K}: row ${r} is outside [0, ${T})`);
  if (R === 0) return;
  const rt = rec.rt;
  let x = h;
  const contiguous = rows.every((r, i) => r === i) && R === T;
  if (!contiguous) {
    // Without `scratch`, the recording's own (see crossEntropy's workspace: not the pool, whose
    // buffers a host write may take before this recording is submitted).
    x = scratch ?? rec.scratch("f32", [R, C], "logitsRows:x");
    expectTensor(K, "scratch", x, "f32", [R, C]);
    rows.forEach((r, i) => rec.copy(h, x, C * 4, r * C * 4, i * C * 4));
  }
  const maxBind = rt.caps.limits.maxStorageBufferBindingSize;
  const align = lcm(rowAlign(C, BYTES_PER_ELEMENT[w.dtype]), 64); // 64 f32 columns of out = 256 bytes
  let chunk = Math.floor(maxBind / (C * BYTES_PER_ELEMENT[w.dtype]));
  chunk = Math.max(align, Math.floor(chunk / align) * align);
  for (let v0 = 0; v0 < V; v0 += chunk) {
    const n = Math.min(chunk, V - v0);
    const c = new Tensor(out.buffer, "f32", [R * V - v0], out.byteOffset + v0 * 4, out.label); // columns v0.. of each row
    matmulAuto(rec, { a: x, b: rowSlice(w, v0, n, C), c, M: R, N: n, K: C, transB: true, ldc: V }); // (R, n)
  }
  if (!contiguous && !scratch) rec.recycle(x);
}

/** Labelled rows are padded to a multiple of this (the tensor-core head needs M % 16 == 0). */
const LABELLED_ROW_PAD = 16;

/**
 * The rows of a batch that carry a label (t with labels[t] ≠ -100), padded with unlabelled
 * rows (row 0, label -100) to a multiple of 16 with at least one padding row, and for every
 * row t its index among them, or the first padding row (whose nll and gradient are zero) where
 * it has none.
 */
export function labelledRows(labels: Int32Array): { rows: Int32Array; rowLabels: Int32Array; index: Int32Array; labelled: number } {
  let labelled = 0;
  for (const l of labels) if (l !== IGNORE_INDEX) labelled++;
  const padded = Math.ceil((labelled + 1) / LABELLED_ROW_PAD) * LABELLED_ROW_PAD;
  const rows = new Int32Array(padded), rowLabels = new Int32Array(padded).fill(IGNORE_INDEX), index = new Int32Array(labels.length);
  let j = 0;
  for (let t = 0; t < labels.length; t++) {
    if (labels[t] === IGNORE_INDEX) index[t] = labelled;
    else {
      rows[j] = t;
      rowLabels[j] = labels[t]!;
      index[t] = j++;
    }
  }
  return { rows, rowLabels, index, labelled };
}

/** Below this fraction of rows (labelled, padded to 16), crossEntropyOnLabelledRows gathers them first. */
export const LABELLED_ROWS_COMPACT_BELOW = 0.9;

/**
 * crossEntropy computed only where it is non-zero: the rows of h whose label (`hostLabels`, the
 * CPU copy of args.labels) is not -100 are gathered, the head and loss run on them, and dh and
 * nll are spread back with zeros at unlabelled rows. Same loss, nll and dh as crossEntropy on
 * every row (up to f32 summation order); in chat SFT with answer-only labels the prompts are
 * most of the rows. When the padded labelled rows are at least LABELLED_ROWS_COMPACT_BELOW of
 * the rows (or the call has dw, accumulateDh or a workspace), it is plain crossEntropy. Returns the tensors to release once
 * the recording has been submitted.
 */
export function crossEntropyOnLabelledRows(rec: Recorder, args: CrossEntropyArgs, hostLabels: Int32Array): Tensor[] {
  const { h } = args;
  const [T, C] = h.shape as [number, number];
  if (hostLabels.length !== T) throw new Error(`crossEntropyOnLabelledRows: ${hostLabels.length} host labels for ${T} rows`);
  const sel = labelledRows(hostLabels);
  // Compact only when the padded labelled rows are clearly fewer than all rows.
  if (args.dw || args.accumulateDh || args.workspace || sel.rows.length >= LABELLED_ROWS_COMPACT_BELOW * T) {
    crossEntropy(rec, args);
    return [];
  }
  const rt = rec.rt, n = sel.rows.length;
  const up = (data: Int32Array, label: string) => rt.upload("i32", [data.length], data, label);
  const rowIds = up(sel.rows, "labelled_rows"), spread = up(sel.index, "labelled_index"), labels = up(sel.rowLabels, "labelled_labels");
  const errors = rt.zeros("u32", [2], "labelled_rows_errors"); // gather ids are in range by construction
  const hRows = rt.empty("f32", [n, C], "h_labelled");
  const owned = [rowIds, spread, labels, errors, hRows];
  embeddingForward(rec, rowIds, h, hRows, errors); // h_L = h[rows]
  const dhRows = args.dh ? rt.empty("f32", [n, C], "dh_labelled") : undefined;
  const nllRows = args.nll ? rt.empty("f32", [n, 1], "nll_labelled") : undefined;
  owned.push(...[dhRows, nllRows].filter((t): t is Tensor => !!t));
  crossEntropy(rec, { ...args, h: hRows, labels, dh: dhRows, nll: nllRows?.view([n]) });
  // Spread back: row t takes row index[t] of the compact result (a zero padding row where unlabelled).
  if (args.dh) embeddingForward(rec, spread, dhRows!, args.dh, errors);
  if (args.nll) embeddingForward(rec, spread, nllRows!, args.nll.view([T, 1]), errors);
  return owned;
}
