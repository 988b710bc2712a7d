/**
 * One Llama-family decoder layer, forward and backward side by side (llm.c style).
 * Shapes: T tokens (a flat packed or padded batch), C hidden, nH/nKV heads of hd, I = MLP width.
 *
 *   xn1  = rmsnorm(x, w_in)                                  (T, C)
 *   q,k,v = xn1·W{q,k,v}ᵀ + b (+ LoRA);  q,k = rope(q,k)     (T, nH·hd), (T, nKV·hd)
 *   attn = attention(q, k, v; causal within each seq id)    (T, nH·hd)
 *   xMid = x + attn·Woᵀ (+ LoRA)                             (T, C)
 *   xn2  = rmsnorm(xMid, w_post)                             (T, C)
 *   gate, up = xn2·W{gate,up}ᵀ (+ LoRA)                      (T, I)
 *   act  = silu(gate)·up                                     (T, I)
 *   xOut = xMid + act·Wdownᵀ (+ LoRA)                        (T, C)
 */
import {
  type GpuRuntime, type Recorder, type Tensor,
  addInPlace, attentionBackward, attentionDecode, attentionForward, kvCacheAppend, linearBackwardWeight, linearBackwardWeightTensorCore, matmul, weightGradOnTensorCores, rmsnormBackward, rmsnormForward, rmsnormWeightBackward,
  attentionOnTensorCores, type AttentionF16Inputs, hasTensorCoreMatmul, ropeAppendFits, ropeBackward, ropeForward, ropeForwardAppend, ropeForwardF16, swigluBackwardInPlace, swigluForward, toF16,
  type GemvPrologue, convertTensor, gemv, gemvGateUpSwiglu, gemvGateUpSwigluSupported, gemvGroup, gemvPrologueSupported,
} from "@tuneloom/kernels";
import type { ModelConfig } from "../config.ts";
import type { LoraTarget } from "../lora-config.ts";
import { type GatheredLayerLora, type LayerLora, type LoraOutput, type LoraProjection, linearsGatheredLoraForward, linearsLoraBackward, linearsLoraForward, linearsLoraMids } from "./lora.ts";
import type { GpuLayerWeights } from "./weights.ts";

/** Per-token inputs shared by all layers. */
export interface TokenBatch {
  T: number;
  ids: Tensor; // i32 (T)
  positions: Tensor; // i32 (T)
  seqIds: Tensor; // i32 (T), −1 = padding
}

/** Projections that read the same input: their LoRA h's share one (T, n·r) buffer (lora.ts). */
export const LORA_GROUPS = {
  qkv: ["q_proj", "k_proj", "v_proj"],
  o: ["o_proj"],
  gateUp: ["gate_proj", "up_proj"],
  down: ["down_proj"],
} as const satisfies Record<string, readonly LoraTarget[]>;
export type LoraGroup = keyof typeof LORA_GROUPS;

/** What the forward keeps for the backward (one set per layer, or one reused set under checkpointing). */
export interface LayerActivations {
  xn1: Tensor; rstd1: Tensor; q: Tensor; k: Tensor; v: Tensor; attn: Tensor; lse: Tensor;
  xMid: Tensor; xn2: Tensor; rstd2: Tensor; gate: Tensor; up: Tensor; act: Tensor;
  /** LoRA h per group with an adapted module: (T, n·r), n = the group's adapted modules. */
  loraH: Partial<Record<LoraGroup, Tensor>>;
}

/** Scratch the backward needs (one set for all layers). */
export interface LayerGradScratch {
  dAct: Tensor; dXn: Tensor; dMid: Tensor; dAttn: Tensor;
  dq: Tensor; dk: Tensor; dv: Tensor; dsum: Tensor; dh: Tensor;
}

/**
 * Full fine-tuning: f32 gradients of one layer's weights (shapes as GpuLayerWeights), accumulated
 * (+=) by decoderLayerBackward so micro-batches sum. `ones` is f32 (T) of 1s: a bias gradient is
 * the column sum of dy, onesᵀ·dy.
 */
export interface LayerWeightGrads {
  inputNorm: Tensor; q: Tensor; k: Tensor; v: Tensor; o: Tensor; postNorm: Tensor; gate: Tensor; up: Tensor; down: Tensor;
  qBias?: Tensor; kBias?: Tensor; vBias?: Tensor; oBias?: Tensor; gateBias?: Tensor; upBias?: Tensor; downBias?: Tensor;
  ones: Tensor;
}

/**
 * dW_i (out_i, in) += dy_iᵀ·x and, with a bias, db_i (out_i) += onesᵀ·dy_i: the weight gradients
 * of projections y_i = x·W_iᵀ + b_i that read the same x (on tensor cores x is rounded to f16 once).
 */
function linearWeightGrads(rec: Recorder, x: Tensor, projs: readonly { dy: Tensor; dw: Tensor; db: Tensor | undefined }[], ones: Tensor, kept16?: Tensor) {
  const x16 = projs.some(({ dy, dw }) => weightGradOnTensorCores(rec, x, dy, dw)) ? kept16 ?? toF16(rec, x) : undefined;
  for (const { dy, dw, db } of projs) {
    if (!(x16 && linearBackwardWeightTensorCore(rec, x, dy, dw, 1, x16))) linearBackwardWeight(rec, x, dy, dw, 1, 1);
    if (db) {
      const [T, outF] = dy.shape as [number, number];
      matmul(rec, { a: ones.view([1, T]), b: dy, c: db.view([1, outF]), M: 1, N: outF, K: T, beta: 1 });
    }
  }
  if (x16 && x16 !== kept16) rec.recycle(x16);
}

export function allocLayerActivations(rt: GpuRuntime, cfg: ModelConfig, T: number, loraRank: number, targets: readonly LoraTarget[]): LayerActivations {
  const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd } = cfg;
  const loraH: Partial<Record<LoraGroup, Tensor>> = {};
  for (const [group, modules] of Object.entries(LORA_GROUPS) as [LoraGroup, readonly LoraTarget[]][]) {
    const n = modules.filter((m) => targets.includes(m)).length;
    if (n > 0) loraH[group] = rt.empty("f32", [T, n * loraRank], `lora_h.${group}`);
  }
  return {
    xn1: rt.empty("f32", [T, C], "xn1"), rstd1: rt.empty("f32", [T], "rstd1"),
    q: rt.empty("f32", [T, nH * hd], "q"), k: rt.empty("f32", [T, nKV * hd], "k"), v: rt.empty("f32", [T, nKV * hd], "v"),
    attn: rt.empty("f32", [T, nH * hd], "attn"), lse: rt.empty("f32", [T, nH], "lse"),
    xMid: rt.empty("f32", [T, C], "xMid"), xn2: rt.empty("f32", [T, C], "xn2"), rstd2: rt.empty("f32", [T], "rstd2"),
    gate: rt.empty("f32", [T, I], "gate"), up: rt.empty("f32", [T, I], "up"), act: rt.empty("f32", [T, I], "act"),
    loraH,
  };
}

export function allocLayerGradScratch(rt: GpuRuntime, cfg: ModelConfig, T: number, loraRank: number): LayerGradScratch {
  const { hiddenSize: C, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd } = cfg;
  return {
    dAct: rt.empty("f32", [T, I], "dAct"),
    dXn: rt.empty("f32", [T, C], "dXn"), dMid: rt.empty("f32", [T, C], "dMid"), dAttn: rt.empty("f32", [T, nH * hd], "dAttn"),
    dq: rt.empty("f32", [T, nH * hd], "dq"), dk: rt.empty("f32", [T, nKV * hd], "dk"), dv: rt.empty("f32", [T, nKV * hd], "dv"),
    // dh of the widest LoRA group (q, k, v)
    dsum: rt.empty("f32", [T, nH], "dsum"), dh: rt.empty("f32", [T, Math.max(1, LORA_GROUPS.qkv.length * loraRank)], "lora_dh"),
  };
}

export function releaseTensors(rt: GpuRuntime, obj: object) {
  for (const v of Object.values(obj)) {
    if (v && typeof v === "object" && "buffer" in v) rt.release(v as Tensor);
    else if (v && typeof v === "object") releaseTensors(rt, v);
  }
}

export interface LayerContext {
  cfg: ModelConfig;
  invFreq: Tensor; // f32 (hd/2)
  /** Sliding-window size for this layer, 0 for full attention. */
  window: number;
}

const heads = (t: Tensor, n: number, hd: number) => t.view([t.shape[0]!, n, hd]);

/**
 * Inference with a KV cache. Every token's rotated k and v go to cache row `cacheRows[t]`.
 * Prefill (no `decode`): the tokens attend to each other as in training. Decode: each of the
 * T = B tokens is its sequence's newest and attends to its cache rows
 * offsets[b] .. offsets[b] + lengths[b] − 1.
 */
export interface KvContext {
  kCache: Tensor; // (maxRows, nKV, hd) this layer's
  vCache: Tensor;
  cacheRows: Tensor; // i32 (T)
  /**
   * `scratch`: f32 for split-K decode attention (attentionDecodeScratchSize elements); without
   * it one workgroup per sequence and kv head walks all the keys.
   */
  decode?: { offsets: Tensor; lengths: Tensor; maxLength: number; scratch?: Tensor };
}

/**
 * x rounded to f16 once for several tensor-core products that read it (a scratch of the
 * recording: recycle it after the last of them), or undefined where those products would not
 * run on tensor cores (f32/bf16 weights, no subgroup matrices, T not a multiple of 16).
 */
function sharedF16Input(rec: Recorder, x: Tensor, w: Tensor): Tensor | undefined {
  return readsOnTensorCores(rec, x, w) ? toF16(rec, x) : undefined;
}

/** Whether products of x (T, in) with w run on tensor cores, so an f16 copy of x pays for itself. */
function readsOnTensorCores(rec: Recorder, x: Tensor, w: Tensor): boolean {
  const [T, inF] = x.shape as [number, number];
  return w.dtype === "f16" && hasTensorCoreMatmul(rec.rt) && T % 16 === 0 && inF % 16 === 0;
}

/**
 * The f16 copies written by the kernel that makes a tensor (SwiGLU's act forward, dGate and dUp
 * backward; RMSNorm's xn1/xn2 forward) instead of a separate conversion before the tensor-core
 * products that read it (session 9). On since session 11: gpu-step.test.ts's "the step's loss and
 * gradients are the f32 step's within 16-bit rounding" and the fused-copy tests passed on an H100,
 * and the 1B step's f32 → f16 conversions fell from 22.2 ms (94 of 33.5M elements, 253 of 8.4M) to
 * 14.9 (31 and 191). `TUNELOOM_FUSED_F16=0` turns them off.
 */
export const fusedF16Copies = { enabled: process.env.TUNELOOM_FUSED_F16 !== "0" };

/** An f16 scratch shaped like x for a kernel to write x's copy into, where readsOnTensorCores. */
function f16Scratch(rec: Recorder, x: Tensor, w: Tensor): Tensor | undefined {
  return fusedF16Copies.enabled && readsOnTensorCores(rec, x, w) ? rec.scratch("f16", x.shape, `${x.label}:f16`) : undefined;
}

/**
 * Records `produce`, the kernel that writes x, and returns x's f16 copy for the tensor-core
 * products of w that read it (a scratch: recycle it after them): written by that kernel in the same
 * pass where the fused copies are on, else converted after it; undefined where those products do
 * not run on tensor cores.
 */
function producedWithF16Copy(rec: Recorder, x: Tensor, w: Tensor, produce: (x16: Tensor | undefined) => void): Tensor | undefined {
  const fused = f16Scratch(rec, x, w);
  produce(fused);
  return fused ?? sharedF16Input(rec, x, w);
}

/**
 * Decode's RMSNorm and SwiGLU fused into the GEMVs that read them (kernels' GemvPrologue: a q/k/v or
 * gate/up GEMV sums x² itself, down_proj's computes silu(gate)·up as it reads them), so the norm and
 * SwiGLU dispatches, xn and act go away (three of a decode layer's 13 dispatches; session 12). With
 * the grouped GEMVs (kernels' gemvGrouping, on by default), the norm and the group's products are
 * one dispatch (session 16): a layer's norm + q/k/v and norm + gate/up, five dispatches, become two.
 * - `norm`: on by default since session 16's call (H100, same call, grouped GEMVs on): Llama-3.1-8B
 *   batch-1 decode 98.4 → 101.1 tok/s, Llama-3.2-1B 368.8 → 371.6.
 * - `swiglu` (the prologue in down_proj's GEMV): off. Every down_proj workgroup recomputes silu over
 *   all of K (an exp per element: 14336 a row group at 8B); with both fused and no grouping, 8B ran
 *   87.3 tok/s against 98.0 (H100, session 13) and 1B 264.6 against 274.5 (session 14).
 * - `act` (session 16: SwiGLU as the grouped gate/up GEMV's epilogue, gemvGateUpSwiglu; act written
 *   once by the product, gate and up never): off until a GPU call measures it.
 * `TUNELOOM_GEMV_FUSE`: unset (norm), `0` (nothing), `1` (norm and swiglu, session 12's pair) or a
 * comma-separated list of norm, swiglu, act. Tests flip the fields.
 */
export const gemvPrologueFusion = gemvFusionFrom(process.env.TUNELOOM_GEMV_FUSE);

function gemvFusionFrom(v: string | undefined): { norm: boolean; swiglu: boolean; act: boolean } {
  const out = { norm: false, swiglu: false, act: false };
  if (v === undefined || v === "") return { ...out, norm: true };
  if (v === "0") return out;
  if (v === "1") return { norm: true, swiglu: true, act: false };
  for (const part of v.split(",")) {
    if (part !== "norm" && part !== "swiglu" && part !== "act") {
      throw new Error(`TUNELOOM_GEMV_FUSE must be 0, 1 or a comma-separated list of norm, swiglu, act; got ${JSON.stringify(v)}`);
    }
    out[part] = true;
  }
  return out;
}

/**
 * Decode's gate/up products and SwiGLU as one grouped GEMV whose epilogue writes act (kernels'
 * gemvGateUpSwiglu; gate and up never written), with the norm in front where that is fused too (else
 * the RMSNorm dispatch first): the fusion's `act` on, the grouped GEMVs on, a decode-sized batch, no
 * LoRA on gate or up (their h read xn2). Returns false and records nothing otherwise.
 */
function fusedGateUpAct(
  rec: Recorder, xMid: Tensor, w: GpuLayerWeights, a: LayerActivations, lora: LayerLora | GatheredLayerLora, eps: number,
): boolean {
  const [T, K] = xMid.shape as [number, number];
  if (!gemvPrologueFusion.act || T > 16 || "gathered" in lora || lora.gate_proj || lora.up_proj) return false;
  const gate = { w: w.gate, bias: w.gateBias }, up = { w: w.up, bias: w.upBias };
  const norm = gemvPrologueFusion.norm ? { weight: w.postNorm, eps } : undefined;
  const x = norm ? xMid : a.xn2; // the norm in front, or its own dispatch into xn2 first
  if (!gemvGateUpSwigluSupported(rec.rt, x, T, K, gate, up, a.act, undefined, norm)) return false;
  if (!norm) rmsnormForward(rec, xMid, w.postNorm, a.xn2, a.rstd2, eps);
  return gemvGateUpSwiglu(rec, x, T, K, gate, up, a.act, undefined, norm);
}

/**
 * y_i (+)= pre(x)·W_iᵀ (+ b_i) for a group's projections, fused (pre: the norm, or SwiGLU with x the
 * gate), where that applies: its fusion on, a decode-sized batch (≤ 16 rows), no LoRA in the group
 * (its h reads the prologue's output), aligned rows. Normed groups of several projections that add
 * into nothing take one grouped dispatch where the grouped GEMVs are on (gemvGroup with the norm),
 * else one fused GEMV each. Returns false and records nothing otherwise.
 */
function fusedProjections(
  rec: Recorder, x: Tensor, pre: GemvPrologue, projs: readonly (LoraProjection & LoraOutput)[], lora: LayerLora | GatheredLayerLora,
): boolean {
  const [T, K] = x.shape as [number, number];
  const on = "norm" in pre ? gemvPrologueFusion.norm : gemvPrologueFusion.swiglu;
  if (!on || T > 16 || "gathered" in lora || projs.some((p) => p.lora)) return false;
  const args = projs.map(({ w, bias, y, accumulate }) => ({ a: x, b: w, c: y, bias, M: T, N: w.shape[0]!, K, transB: true, beta: accumulate ? 1 : 0 }));
  if (!args.every((a) => gemvPrologueSupported(a, pre))) return false;
  if ("norm" in pre && projs.length > 1 && !projs.some((p) => p.accumulate) &&
    gemvGroup(rec, x, T, K, projs.map(({ w, bias, y }) => ({ w, y, bias })), undefined, pre.norm)) return true;
  for (const a of args) gemv(rec, a, undefined, pre);
  return true;
}

/**
 * f16 copies of a layer's xn1, xn2 and act (and q, k, v) that a gradient-checkpointing recompute
 * made for its own tensor-core products and keeps for the backward's (LoRA dA, full fine-tuning dW;
 * the attention backward), which would otherwise convert the same tensors again. Each is absent where its products do not run on tensor
 * cores. decoderLayerBackward recycles each after its last use.
 */
export interface Kept16 {
  xn1?: Tensor;
  xn2?: Tensor;
  act?: Tensor;
  /** The rotated q, k and v in f16 (ropeF16Copies), for the attention backward's tensor-core passes. */
  attn?: AttentionF16Inputs;
}

/**
 * RoPE writes the f16 copies of the rotated q and k, and of v, that the tensor-core attention reads
 * (kernels' ropeForwardF16, same bits as converting each), instead of three conversion passes per
 * attention call; a checkpointing recompute keeps them for the attention backward, which converted
 * q, k and v once more (session 13; 1B step, from session 11's profile: ~2.4 ms of conversions).
 * On since session 13's call (H100, 2026-12-07T20:57Z): its GPU test passed (gpu-step.test.ts: the
 * step with and without them, bit for bit) and the 1B step's conversions went 14.9 → 8.5 ms (with
 * session 12's kept copies; RoPE 1.40 → 1.70 ms). `TUNELOOM_ROPE_F16=0` turns it off.
 */
export const ropeF16Copies = { enabled: process.env.TUNELOOM_ROPE_F16 !== "0" };

/**
 * Selective checkpointing: what a layer keeps from its forward so that its gradient-checkpointing
 * recompute skips the work that made it. Copies are in the frozen weights' dtype (f16/bf16; f32
 * weights: exact f32 copies, so the step is the full recompute's bit for bit).
 *
 * - `attention`: the attention output (T, nH·hd) and its lse (T, nH) f32: the recompute restores
 *   them instead of running the attention forward (q, k, v and RoPE still run: the backward reads
 *   them). 2·T·nH·hd bytes a layer (+ 4·T·nH): Llama-3.2-1B at 8×512 tokens, 16.5 MB for ~0.58 ms.
 * - `mlp`: gate and up (T, I) with their LoRA terms: the recompute restores them instead of running
 *   the two largest products of the layer (with LoRA only their rank-r h is recomputed). 4·T·I
 *   bytes a layer: 1B, 128 MiB for ~1.3 ms.
 * The recompute still makes x's norm, q, k, v, xMid and xn2, which nothing keeps.
 */
export interface SelectiveCheckpoint {
  attention?: { out: Tensor; lse: Tensor };
  mlp?: { gate: Tensor; up: Tensor };
}
export type SelectivePart = keyof SelectiveCheckpoint;

/** Bytes a layer's kept `part` holds for T tokens with weights of `dtype`. */
export function selectiveBytes(cfg: ModelConfig, T: number, dtype: Tensor["dtype"], part: SelectivePart): number {
  const bytes = dtype === "f32" ? 4 : 2;
  return part === "mlp" ? 2 * T * cfg.intermediateSize * bytes : T * cfg.numHeads * (cfg.headDim * bytes + 4);
}

/** A layer's kept parts for T tokens, each tensor from `alloc` (dtype, shape, label). */
export function allocSelective(
  alloc: (dtype: Tensor["dtype"], shape: number[], label: string) => Tensor, cfg: ModelConfig, T: number, w: GpuLayerWeights, parts: Record<SelectivePart, boolean>,
): SelectiveCheckpoint {
  const kept: SelectiveCheckpoint = {};
  if (parts.attention) kept.attention = { out: alloc(w.o.dtype, [T, cfg.numHeads * cfg.headDim], "kept.attn"), lse: alloc("f32", [T, cfg.numHeads], "kept.lse") };
  if (parts.mlp) kept.mlp = { gate: alloc(w.gate.dtype, [T, cfg.intermediateSize], "kept.gate"), up: alloc(w.up.dtype, [T, cfg.intermediateSize], "kept.up") };
  return kept;
}

/** dst = src, converted where their dtypes differ (f32 ↔ f16/bf16). */
function copyConverting(rec: Recorder, src: Tensor, dst: Tensor) {
  if (src.dtype === dst.dtype) rec.copy(src, dst);
  else convertTensor(rec, src, dst);
}

/**
 * A group's projections (same input x): the frozen products and the LoRA, either per module
 * (LayerLora: one adapter for every row) or gathered (each row its own slot, lora.ts).
 */
function groupForward(
  rec: Recorder, x: Tensor, group: LoraGroup, projs: readonly (LoraProjection & LoraOutput)[],
  lora: LayerLora | GatheredLayerLora, h: Tensor | undefined, x16?: Tensor,
) {
  if (!("gathered" in lora)) return linearsLoraForward(rec, x, projs, h, x16);
  linearsLoraForward(rec, x, projs.map(({ w, bias, y, accumulate }) => ({ w, bias, y, accumulate })), undefined, x16); // frozen only
  linearsGatheredLoraForward(rec, x, projs.map((p) => p.y), lora.groups[group], lora.gathered, h);
}

/**
 * xOut (T, C) = layer(x). With xOut === x (inference: nothing of this layer is kept for a backward)
 * the residual stream is updated in place: o_proj and down_proj add their products into it (y +=),
 * so the two residual-add passes go away (two of a decode step's ~13 dispatches per layer); a
 * projection with a bias keeps the separate add. Otherwise a.xMid holds x + attention·Woᵀ for the
 * backward.
 *
 * xOut null: a gradient-checkpointing recompute, which needs only the activations the backward
 * reads. The layer output is not one of them (the next layer's input is saved), so down_proj's
 * frozen product and the residual add are skipped and only its LoRA h (a.loraH.down) is made:
 * a quarter of a Llama layer's forward GEMM work. It returns the f16 copies it made (Kept16) for
 * the backward's tensor-core products: pass them to decoderLayerBackward, which recycles them.
 *
 * `selective` (training only): the forward copies what it names into it, and the recompute
 * restores that instead of computing it again (SelectiveCheckpoint).
 */
export function decoderLayerForward(
  rec: Recorder, ctx: LayerContext, w: GpuLayerWeights, batch: TokenBatch,
  x: Tensor, xOut: Tensor | null, a: LayerActivations, lora: LayerLora | GatheredLayerLora = {}, kv?: KvContext,
  selective?: SelectiveCheckpoint,
): Kept16 | undefined {
  const kept: Kept16 = {};
  const keep = xOut === null; // a recompute keeps its f16 copies for the backward
  if (xOut === null && ("gathered" in lora || kv)) throw new Error("decoderLayerForward: a recompute (xOut null) takes per-module LoRA and no KV cache");
  if (selective && (kv || "gathered" in lora || xOut === x)) throw new Error("decoderLayerForward: selective checkpointing is for training (no KV cache, per-module LoRA, a kept layer input)");
  const keptMlp = selective?.mlp, keptAttn = selective?.attention;
  const { numHeads: nH, numKvHeads: nKV, headDim: hd, rmsNormEps: eps } = ctx.cfg;
  const m = "gathered" in lora ? {} : lora; // per-module LoRA (the gathered kind goes by group)
  // q, k and v read the same normed input, rounded to f16 once (decode: the norm fused into their GEMVs)
  const qkv = [
    { w: w.q, bias: w.qBias, y: a.q, lora: m.q_proj },
    { w: w.k, bias: w.kBias, y: a.k, lora: m.k_proj },
    { w: w.v, bias: w.vBias, y: a.v, lora: m.v_proj },
  ];
  if (!(kv && fusedProjections(rec, x, { norm: { weight: w.inputNorm, eps } }, qkv, lora))) {
    const xn1h = producedWithF16Copy(rec, a.xn1, w.q, (y16) => rmsnormForward(rec, x, w.inputNorm, a.xn1, a.rstd1, eps, y16));
    groupForward(rec, a.xn1, "qkv", qkv, lora, a.loraH.qkv, xn1h);
    if (keep) kept.xn1 = xn1h;
    else if (xn1h) rec.recycle(xn1h);
  }
  // q, k rotated in place; with a KV cache the rotated k and v go to the cache rows in the same dispatch,
  // and for the tensor-core attention of a whole batch the f16 copies it reads
  const rot = { q: heads(a.q, nH, hd), k: heads(a.k, nKV, hd), positions: batch.positions, invFreq: ctx.invFreq };
  const T = a.q.shape[0]!;
  const attn16 = !kv && ropeF16Copies.enabled && ropeAppendFits(hd) && attentionOnTensorCores(rec, T, hd, w.q.dtype === "f16")
    ? { q: rec.scratch("f16", [T, nH, hd], "q:f16"), k: rec.scratch("f16", [T, nKV, hd], "k:f16"), v: rec.scratch("f16", [T, nKV, hd], "v:f16") }
    : undefined;
  if (attn16) {
    ropeForwardF16(rec, { ...rot, v: heads(a.v, nKV, hd), q16: attn16.q, k16: attn16.k, v16: attn16.v });
  } else if (kv && ropeAppendFits(hd)) {
    ropeForwardAppend(rec, { ...rot, v: heads(a.v, nKV, hd), rows: kv.cacheRows, kCache: kv.kCache, vCache: kv.vCache });
  } else {
    ropeForward(rec, rot);
    if (kv) kvCacheAppend(rec, { kNew: rot.k, vNew: heads(a.v, nKV, hd), positions: kv.cacheRows, kCache: kv.kCache, vCache: kv.vCache });
  }
  if (kv?.decode) {
    attentionDecode(rec, {
      q: heads(a.q, nH, hd), kCache: kv.kCache, vCache: kv.vCache, offsets: kv.decode.offsets, lengths: kv.decode.lengths,
      out: heads(a.attn, nH, hd), window: ctx.window, maxLength: kv.decode.maxLength, scratch: kv.decode.scratch,
    });
  } else if (keptAttn && xOut === null) {
    // selective checkpointing: the forward's output and lse instead of the attention forward
    copyConverting(rec, keptAttn.out, a.attn);
    rec.copy(keptAttn.lse, a.lse);
  } else {
    attentionForward(rec, {
      q: heads(a.q, nH, hd), k: heads(a.k, nKV, hd), v: heads(a.v, nKV, hd), seqId: batch.seqIds,
      out: heads(a.attn, nH, hd), lse: a.lse, window: ctx.window,
      tensorCores: w.q.dtype === "f16", // 16-bit weights: mixed precision throughout; f32 weights: exact f32
      f16: attn16,
    });
    if (keptAttn) {
      copyConverting(rec, a.attn, keptAttn.out);
      rec.copy(a.lse, keptAttn.lse);
    }
  }
  if (attn16 && keep) kept.attn = attn16;
  else if (attn16) for (const t of [attn16.q, attn16.k, attn16.v]) rec.recycle(t);
  // xMid = x + attn·Woᵀ: in place (x += attn·Woᵀ) or into a.xMid
  const inPlace = xOut === x, oInto = inPlace && !w.oBias;
  // (the kept f16 copy of the output is the o products' f16 input: the same bits as converting it)
  const attn16In = keptAttn?.out.dtype === "f16" && readsOnTensorCores(rec, a.attn, w.o) ? keptAttn.out : undefined;
  groupForward(rec, a.attn, "o", [{ w: w.o, bias: w.oBias, y: oInto ? x : a.xMid, accumulate: oInto, lora: m.o_proj }], lora, a.loraH.o, attn16In);
  const xMid = oInto ? x : a.xMid;
  if (!oInto) addInPlace(rec, a.xMid, x);
  const gateUp = [
    { w: w.gate, bias: w.gateBias, y: a.gate, lora: m.gate_proj },
    { w: w.up, bias: w.upBias, y: a.up, lora: m.up_proj },
  ];
  // decode: gate/up and SwiGLU in one dispatch that writes act (gate and up never written)
  const actMade = !!kv && xOut !== null && fusedGateUpAct(rec, xMid, w, a, lora, eps);
  if (!actMade && !(kv && fusedProjections(rec, xMid, { norm: { weight: w.postNorm, eps } }, gateUp, lora))) {
    const xn2h = producedWithF16Copy(rec, a.xn2, w.gate, (y16) => rmsnormForward(rec, xMid, w.postNorm, a.xn2, a.rstd2, eps, y16));
    if (keptMlp && xOut === null) {
      // selective checkpointing: gate and up as the forward made them; only the LoRA h is recomputed
      copyConverting(rec, keptMlp.gate, a.gate);
      copyConverting(rec, keptMlp.up, a.up);
      linearsLoraMids(rec, a.xn2, gateUp, a.loraH.gateUp, xn2h);
    } else {
      groupForward(rec, a.xn2, "gateUp", gateUp, lora, a.loraH.gateUp, xn2h);
      if (keptMlp) {
        copyConverting(rec, a.gate, keptMlp.gate);
        copyConverting(rec, a.up, keptMlp.up);
      }
    }
    if (keep) kept.xn2 = xn2h;
    else if (xn2h) rec.recycle(xn2h);
  }
  if (xOut === null) {
    // recompute: down_proj's LoRA h only (from act's f16 copy where its products run on tensor
    // cores); the copy is kept for the backward's products that read act
    const act16 = producedWithF16Copy(rec, a.act, w.down, (h16) => swigluForward(rec, a.gate, a.up, a.act, h16));
    if (m.down_proj) linearsLoraMids(rec, a.act, [{ w: w.down, lora: m.down_proj }], a.loraH.down, act16);
    kept.act = act16;
    return kept;
  }
  // xOut = xMid + act·Wdownᵀ: added by the product where xMid already lives in xOut; else the
  // product goes to xOut (or, where xOut holds xMid but down has a bias, to the free a.xMid) first
  const dInto = xMid === xOut && !w.downBias, dTo = dInto ? xOut : xMid === xOut ? a.xMid : xOut;
  const down = [{ w: w.down, bias: w.downBias, y: dTo, accumulate: dInto, lora: m.down_proj }];
  if (actMade) groupForward(rec, a.act, "down", down, lora, a.loraH.down);
  // decode: SwiGLU fused into down_proj's GEMV (act never written)
  else if (!(kv && fusedProjections(rec, a.gate, { swiglu: { up: a.up } }, down, lora))) {
    // act in f16 for down_proj's tensor-core products. (Kept for the backward's dA/dW it would save
    // one more conversion per layer, but hold T·I halves for the whole step: 64 MiB at 3B, where the
    // peak sits on the ≤ 0.7× target.)
    const act16 = producedWithF16Copy(rec, a.act, w.down, (h16) => swigluForward(rec, a.gate, a.up, a.act, h16));
    groupForward(rec, a.act, "down", down, lora, a.loraH.down, act16);
    if (act16) rec.recycle(act16);
  }
  if (!dInto) addInPlace(rec, xOut, dTo === xOut ? xMid : dTo);
  return undefined;
}

/**
 * Backward of decoderLayerForward: dx (T, C) from dOut (T, C); LoRA gradients accumulate into
 * each module's dA/dB, and with `wg` (full fine-tuning) every weight's gradient into wg. dx must
 * not alias dOut. `kept`: the f16 copies the recompute returned (decoderLayerForward with xOut
 * null), read instead of converting xn1, xn2, act (and q, k, v) again and recycled after their last use here.
 */
export function decoderLayerBackward(
  rec: Recorder, ctx: LayerContext, w: GpuLayerWeights, batch: TokenBatch,
  x: Tensor, a: LayerActivations, dOut: Tensor, dx: Tensor, g: LayerGradScratch, lora: LayerLora = {}, wg?: LayerWeightGrads,
  kept?: Kept16,
) {
  const { numHeads: nH, numKvHeads: nKV, headDim: hd } = ctx.cfg;
  const dh = g.dh;
  // xOut = xMid + act·Wdownᵀ:  dAct = dOut·Wdown;  dxMid = dOut + ...;  dWdown = dOutᵀ·act
  linearsLoraBackward(rec, a.act, [{ w: w.down, dy: dOut, lora: lora.down_proj }], g.dAct, 0, a.loraH.down, dh, kept?.act);
  if (wg) linearWeightGrads(rec, a.act, [{ dy: dOut, dw: wg.down, db: wg.downBias }], wg.ones, kept?.act);
  if (kept?.act) rec.recycle(kept.act);
  // act = silu(gate)·up: gate and up (dead from here) become dGate and dUp, and their f16 copies
  // for the tensor-core products below come out of the same pass
  const dGate16 = f16Scratch(rec, a.gate, w.gate), dUp16 = f16Scratch(rec, a.up, w.up);
  const d16 = dGate16 && dUp16 ? { dgate: dGate16, dup: dUp16 } : undefined;
  swigluBackwardInPlace(rec, a.gate, a.up, g.dAct, d16);
  const dGate = a.gate, dUp = a.up;
  // gate, up = xn2·W{gate,up}ᵀ:  dXn = dGate·Wgate + dUp·Wup;  dWgate = dGateᵀ·xn2, dWup = dUpᵀ·xn2
  linearsLoraBackward(rec, a.xn2, [
    { w: w.gate, dy: dGate, dy16: d16?.dgate, lora: lora.gate_proj },
    { w: w.up, dy: dUp, dy16: d16?.dup, lora: lora.up_proj },
  ], g.dXn, 0, a.loraH.gateUp, dh, kept?.xn2);
  for (const t of [dGate16, dUp16]) if (t) rec.recycle(t);
  if (wg) {
    linearWeightGrads(rec, a.xn2, [{ dy: dGate, dw: wg.gate, db: wg.gateBias }, { dy: dUp, dw: wg.up, db: wg.upBias }], wg.ones, kept?.xn2);
    // xn2 = rmsnorm(xMid)·w_post:  dw_post = Σ_t dXn·xMid·rstd2
    rmsnormWeightBackward(rec, a.xMid, a.rstd2, g.dXn, wg.postNorm, 1);
  }
  if (kept?.xn2) rec.recycle(kept.xn2);
  // xn2 = rmsnorm(xMid):  dMid = dOut + rmsnorm'(dXn)
  rec.copy(dOut, g.dMid);
  rmsnormBackward(rec, a.xMid, w.postNorm, a.rstd2, g.dXn, g.dMid, 1);
  // xMid = x + attn·Woᵀ:  dAttn = dMid·Wo;  dWo = dMidᵀ·attn
  linearsLoraBackward(rec, a.attn, [{ w: w.o, dy: g.dMid, lora: lora.o_proj }], g.dAttn, 0, a.loraH.o, dh);
  if (wg) linearWeightGrads(rec, a.attn, [{ dy: g.dMid, dw: wg.o, db: wg.oBias }], wg.ones);
  // attn = attention(q, k, v)
  attentionBackward(rec, {
    q: heads(a.q, nH, hd), k: heads(a.k, nKV, hd), v: heads(a.v, nKV, hd), seqId: batch.seqIds,
    out: heads(a.attn, nH, hd), lse: a.lse, dout: heads(g.dAttn, nH, hd),
    dq: heads(g.dq, nH, hd), dk: heads(g.dk, nKV, hd), dv: heads(g.dv, nKV, hd), dsum: g.dsum, window: ctx.window,
    tensorCores: w.q.dtype === "f16", f16: kept?.attn,
  });
  if (kept?.attn) for (const t of [kept.attn.q, kept.attn.k, kept.attn.v]) rec.recycle(t);
  // q, k = rope(q, k): rotate the gradients back
  ropeBackward(rec, { q: heads(g.dq, nH, hd), k: heads(g.dk, nKV, hd), positions: batch.positions, invFreq: ctx.invFreq });
  // q, k, v = xn1·W{q,k,v}ᵀ:  dXn = dq·Wq + dk·Wk + dv·Wv
  linearsLoraBackward(rec, a.xn1, [
    { w: w.q, dy: g.dq, lora: lora.q_proj },
    { w: w.k, dy: g.dk, lora: lora.k_proj },
    { w: w.v, dy: g.dv, lora: lora.v_proj },
  ], g.dXn, 0, a.loraH.qkv, dh, kept?.xn1);
  if (wg) {
    // dW{q,k,v} = d{q,k,v}ᵀ·xn1 (dq, dk already rotated back)
    linearWeightGrads(rec, a.xn1, [
      { dy: g.dq, dw: wg.q, db: wg.qBias }, { dy: g.dk, dw: wg.k, db: wg.kBias }, { dy: g.dv, dw: wg.v, db: wg.vBias },
    ], wg.ones, kept?.xn1);
    // xn1 = rmsnorm(x)·w_in:  dw_in = Σ_t dXn·x·rstd1
    rmsnormWeightBackward(rec, x, a.rstd1, g.dXn, wg.inputNorm, 1);
  }
  if (kept?.xn1) rec.recycle(kept.xn1);
  // xn1 = rmsnorm(x):  dx = dMid + rmsnorm'(dXn)
  rec.copy(g.dMid, dx);
  rmsnormBackward(rec, x, w.inputNorm, a.rstd1, g.dXn, dx, 1);
}
