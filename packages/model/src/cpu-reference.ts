// A float64 CPU forward pass of the Llama family (llama, qwen2, mistral), written for clarity, not speed.
// It is the oracle the GPU forward is tested against and the check that the tiny model's logits are
// well separated. It mirrors transformers' modeling_llama.py line by line:
//   x = embed(ids); per layer: x += o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x);
//   x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x); logits = lm_head(rmsnorm(x)).
// Shape glossary: T tokens, C hidden size, nh query heads, nkv key/value heads, hs head size,
// I intermediate size, V vocabulary.
import type { ModelConfig } from "./config.ts";

/** The part of a WeightStore the reference needs. */
export interface ReferenceWeights {
  has(name: string): boolean;
  toFloat32(name: string): Float32Array;
}

/**
 * RoPE inverse frequencies (hs/2), with transformers' rope_type adjustments:
 * "linear" divides every frequency by the factor; "llama3" divides only the low frequencies
 * (wavelength beyond original_max_position/low_freq_factor) and interpolates the middle band.
 */
export function ropeInverseFrequencies(cfg: ModelConfig): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / cfg.ropeTheta ** ((2 * i) / cfg.headDim);
  const s = cfg.ropeScaling;
  if (s?.type === "linear") for (let i = 0; i < half; i++) inv[i]! /= s.factor;
  if (s?.type === "llama3") {
    const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i]!;
      if (wavelen > lowFreqWavelen) inv[i] = inv[i]! / s.factor;
      else if (wavelen >= highFreqWavelen) {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - smooth) * (inv[i]! / s.factor) + smooth * inv[i]!;
      }
    }
  }
  return inv;
}

/** y = x Wᵀ + b: x (T, in), W (out, in), b (out) → (T, out). */
export function linearForward(x: Float64Array, W: Float32Array, b: Float32Array | null, T: number, inF: number, outF: number): Float64Array {
  const y = new Float64Array(T * outF);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outF; o++) {
      let acc = b ? b[o]! : 0;
      const wo = o * inF;
      const xt = t * inF;
      for (let i = 0; i < inF; i++) acc += x[xt + i]! * W[wo + i]!;
      y[t * outF + o] = acc;
    }
  }
  return y;
}

/** x (T, C) → x / sqrt(mean(x²) + eps) * w. */
export function rmsNormForward(x: Float64Array, w: Float32Array, T: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c]! ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[t * C + c] = x[t * C + c]! * r * w[c]!;
  }
  return y;
}

/** In place on x (T, nHeads, hs): rotate_half convention (pairs i, i + hs/2), position of row t = positions[t]. */
export function ropeForward(x: Float64Array, T: number, nHeads: number, hs: number, invFreq: Float64Array, positions: readonly number[]): void {
  const half = hs / 2;
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = positions[t]! * invFreq[i]!;
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      for (let h = 0; h < nHeads; h++) {
        const base = (t * nHeads + h) * hs;
        const a = x[base + i]!;
        const b = x[base + i + half]!;
        x[base + i] = a * cos - b * sin;
        x[base + i + half] = b * cos + a * sin;
      }
    }
  }
}

/**
 * Causal GQA attention: q (T, nh, hs), k/v (T, nkv, hs) → (T, nh, hs). Query head h reads kv head
 * h / (nh / nkv). With a sliding window w, query t sees keys t - w < j <= t (transformers' mask).
 */
export function attentionForward(q: Float64Array, k: Float64Array, v: Float64Array, T: number, nh: number, nkv: number, hs: number, window: number | null): Float64Array {
  const out = new Float64Array(T * nh * hs);
  const group = nh / nkv;
  const scale = 1 / Math.sqrt(hs);
  const scores = new Float64Array(T);
  for (let h = 0; h < nh; h++) {
    const kvh = Math.floor(h / group);
    for (let t = 0; t < T; t++) {
      const first = window === null ? 0 : Math.max(0, t - window + 1);
      let max = -Infinity;
      for (let j = first; j <= t; j++) {
        let dot = 0;
        for (let d = 0; d < hs; d++) dot += q[(t * nh + h) * hs + d]! * k[(j * nkv + kvh) * hs + d]!;
        scores[j] = dot * scale;
        if (scores[j]! > max) max = scores[j]!;
      }
      let sum = 0;
      for (let j = first; j <= t; j++) sum += scores[j] = Math.exp(scores[j]! - max);
      for (let j = first; j <= t; j++) {
        const p = scores[j]! / sum;
        for (let d = 0; d < hs; d++) out[(t * nh + h) * hs + d]! += p * v[(j * nkv + kvh) * hs + d]!;
      }
    }
  }
  return out;
}

/**
 * Logits (T, V) for token ids at positions 0..T-1 (or `positions`). Weights are read through
 * `toFloat32` once per call; keep T small.
 */
export function cpuReferenceForward(cfg: ModelConfig, weights: ReferenceWeights, ids: readonly number[], positions?: readonly number[]): Float64Array {
  const T = ids.length;
  const C = cfg.hiddenSize;
  const { numHeads: nh, numKvHeads: nkv, headDim: hs, intermediateSize: I, vocabSize: V } = cfg;
  const pos = positions ?? ids.map((_, i) => i);
  const invFreq = ropeInverseFrequencies(cfg);
  const w = (name: string) => weights.toFloat32(name);
  const maybe = (name: string) => (weights.has(name) ? weights.toFloat32(name) : null);

  const embed = w("model.embed_tokens.weight"); // (V, C)
  const x = new Float64Array(T * C); // (T, C)
  ids.forEach((id, t) => {
    if (!Number.isInteger(id) || id < 0 || id >= V) throw new RangeError(`token id ${id} outside 0..${V - 1}`);
    for (let c = 0; c < C; c++) x[t * C + c] = embed[id * C + c]!;
  });

  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const h = rmsNormForward(x, w(`${p}.input_layernorm.weight`), T, C, cfg.rmsNormEps); // (T, C)
    const q = linearForward(h, w(`${p}.self_attn.q_proj.weight`), maybe(`${p}.self_attn.q_proj.bias`), T, C, nh * hs); // (T, nh, hs)
    const k = linearForward(h, w(`${p}.self_attn.k_proj.weight`), maybe(`${p}.self_attn.k_proj.bias`), T, C, nkv * hs); // (T, nkv, hs)
    const v = linearForward(h, w(`${p}.self_attn.v_proj.weight`), maybe(`${p}.self_attn.v_proj.bias`), T, C, nkv * hs); // (T, nkv, hs)
    ropeForward(q, T, nh, hs, invFreq, pos);
    ropeForward(k, T, nkv, hs, invFreq, pos);
    const window = cfg.layerTypes[l] === "sliding_attention" ? cfg.slidingWindow : null;
    const att = attentionForward(q, k, v, T, nh, nkv, hs, window); // (T, nh, hs)
    const o = linearForward(att, w(`${p}.self_attn.o_proj.weight`), maybe(`${p}.self_attn.o_proj.bias`), T, nh * hs, C); // (T, C)
    for (let i = 0; i < x.length; i++) x[i]! += o[i]!;

    const h2 = rmsNormForward(x, w(`${p}.post_attention_layernorm.weight`), T, C, cfg.rmsNormEps); // (T, C)
    const gate = linearForward(h2, w(`${p}.mlp.gate_proj.weight`), maybe(`${p}.mlp.gate_proj.bias`), T, C, I); // (T, I)
    const up = linearForward(h2, w(`${p}.mlp.up_proj.weight`), maybe(`${p}.mlp.up_proj.bias`), T, C, I); // (T, I)
    for (let i = 0; i < gate.length; i++) gate[i] = (gate[i]! / (1 + Math.exp(-gate[i]!))) * up[i]!; // silu(gate) * up
    const down = linearForward(gate, w(`${p}.mlp.down_proj.weight`), maybe(`${p}.mlp.down_proj.bias`), T, I, C); // (T, C)
    for (let i = 0; i < x.length; i++) x[i]! += down[i]!;
  }

  const final = rmsNormForward(x, w("model.norm.weight"), T, C, cfg.rmsNormEps); // (T, C)
  const head = cfg.tieWordEmbeddings ? embed : w("lm_head.weight"); // (V, C)
  return linearForward(final, head, null, T, C, V); // (T, V)
}

/** Greedy continuation with the reference (a full forward per token; for tests on tiny models only). */
export function cpuReferenceGreedy(cfg: ModelConfig, weights: ReferenceWeights, promptIds: readonly number[], maxNewTokens: number): number[] {
  const ids = [...promptIds];
  const out: number[] = [];
  for (let n = 0; n < maxNewTokens; n++) {
    const logits = cpuReferenceForward(cfg, weights, ids);
    const last = logits.subarray((ids.length - 1) * cfg.vocabSize);
    let best = 0;
    for (let i = 1; i < last.length; i++) if (last[i]! > last[best]!) best = i;
    out.push(best);
    ids.push(best);
  }
  return out;
}
