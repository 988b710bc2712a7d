/**
 * Next-token choice from one row of logits: greedy (temperature 0), or temperature → top-k →
 * top-p → a draw from the sequence's own seeded stream. Logprobs are log softmax of the raw
 * logits, independent of the sampling settings, so they compare across requests.
 */
import type { TokenLogprob } from "./engine.ts";

export interface SamplingParams {
  temperature: number;
  topP: number;
  /** 0 disables. */
  topK: number;
}

/** mulberry32 over a 32-bit fold of the seed: uniform floats in [0, 1). */
export function seededUniform(seed: number): () => number {
  let a = (Math.trunc(seed) ^ Math.trunc(seed / 4294967296)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Logits = ArrayLike<number>;

/** Highest logit among the first `n`, ties to the lowest id (so greedy is deterministic). */
export function argmax(logits: Logits, n = logits.length): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

function logSumExp(logits: Logits, n: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[i]! - max);
  return max + Math.log(sum);
}

export function tokenLogprob(logits: Logits, tokenId: number, n = logits.length): number {
  return logits[tokenId]! - logSumExp(logits, n);
}

/** The `k` most likely of the first `n` ids, most likely first (ties to the lower id). */
export function topLogprobs(logits: Logits, k: number, n = logits.length): TokenLogprob[] {
  if (k <= 0) return [];
  const lse = logSumExp(logits, n);
  const ids = Array.from({ length: n }, (_, i) => i);
  ids.sort((a, b) => logits[b]! - logits[a]! || a - b);
  return ids.slice(0, k).map((tokenId) => ({ tokenId, logprob: logits[tokenId]! - lse }));
}

/**
 * Choose the next id among the first `n` (the tokenizer's vocabulary; a checkpoint's padded
 * rows beyond it are never produced).
 */
export function sampleToken(logits: Logits, params: SamplingParams, uniform: () => number, n = logits.length): number {
  if (params.temperature <= 0 || params.topK === 1) return argmax(logits, n);
  let ids = Array.from({ length: n }, (_, i) => i);
  ids.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (params.topK > 0) ids = ids.slice(0, params.topK);
  const max = logits[ids[0]!]!;
  let probs = ids.map((i) => Math.exp((logits[i]! - max) / params.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (params.topP < 1) {
    // Smallest prefix (most likely first) whose mass reaches topP; at least one token.
    let mass = 0;
    let keep = 0;
    while (keep < probs.length && (keep === 0 || mass < params.topP * total)) mass += probs[keep++]!;
    ids = ids.slice(0, keep);
    probs = probs.slice(0, keep);
    total = mass;
  }
  let r = uniform() * total;
  for (let i = 0; i < ids.length; i++) {
    r -= probs[i]!;
    if (r < 0) return ids[i]!;
  }
  return ids[ids.length - 1]!;
}
