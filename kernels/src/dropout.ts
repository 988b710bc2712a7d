/**
 * Seeded dropout for the LoRA input path (PEFT's lora_dropout): x̃ = x · keep / (1 − p).
 * The keep mask is a pure function of (seed, element index), so backward regenerates it:
 * pass the same seed and p to dropoutForward and dropoutBackward, and a fresh seed for every
 * step and call site (`dropoutSeed(baseSeed, step, layer, site)`).
 */
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import dropoutWgsl from "./dropout.wgsl" with { type: "text" };

const source: KernelSource = { name: "dropout", code: dropoutWgsl };

/** The PCG hash of dropout.wgsl, on the CPU (u32 in, u32 out). */
function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** Folds integers (e.g. base seed, step, layer, call site) into one u32 dropout seed. */
export function dropoutSeed(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const part of parts) {
    if (!Number.isInteger(part)) throw new Error(`dropoutSeed: parts must be integers, got ${part}`);
    h = pcgHash((h ^ pcgHash(part >>> 0)) >>> 0);
  }
  return h;
}

/** keep iff hash ≥ threshold: P(keep) = 1 − threshold/2³² ≈ 1 − p. */
export function dropoutThreshold(p: number): number {
  if (!(p >= 0 && p < 1)) throw new Error(`dropout: p must be in [0, 1), got ${p}`);
  return Math.min(2 ** 32 - 1, Math.round(p * 2 ** 32));
}

function record(rec: Recorder, kernel: string, src: Tensor, dst: Tensor, p: number, seed: number, beta: number) {
  expectTensor(kernel, "input", src, "f32");
  expectTensor(kernel, "output", dst, "f32");
  if (src.numel !== dst.numel) throw new Error(`${kernel}: input has ${src.numel} elements, output has ${dst.numel}`);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`${kernel}: seed must be a u32, got ${seed}`);
  const threshold = dropoutThreshold(p);
  const n = src.numel;
  rec.dispatch(`${kernel} ${n} p=${p}`, rec.rt.pipeline(source, {}, "dropout"),
    new Params(8).u32(n).u32(seed).u32(threshold).f32(1 / (1 - p)).f32(beta).u32(0).u32(0).u32(0).buffer,
    [src, dst], flatGrid(n));
}

/** x̃ (n) = x · keep(seed, i) / (1 − p), p in [0, 1). x̃ must not alias x. */
export function dropoutForward(rec: Recorder, x: Tensor, xDropped: Tensor, p: number, seed: number) {
  record(rec, "dropoutForward", x, xDropped, p, seed, 0);
}

/**
 * dx (n) = dx̃ · keep(seed, i) / (1 − p) with the forward's seed and p. `beta = 1` adds into
 * dx (the LoRA branch's input gradient joins the frozen path's).
 */
export function dropoutBackward(rec: Recorder, dxDropped: Tensor, dx: Tensor, p: number, seed: number, beta = 0) {
  record(rec, "dropoutBackward", dxDropped, dx, p, seed, beta);
}
