/**
 * LoRA hyperparameters and initial weights.
 *
 * A LoRA linear computes  y = x·Wᵀ + s · dropout(x)·Aᵀ·Bᵀ,  s = α/r  (rsLoRA: α/√r),
 * with W (out×in) frozen, A (r×in) and B (out×r) trained. Init as PEFT does:
 *   A ~ kaiming_uniform_(a=√5)  →  U(−1/√in, 1/√in)
 *   B = 0                        →  ΔW = 0 at step 0, the tuned model starts as the base model.
 */
import { z } from "zod";
import type { ModelConfig } from "@tuneloom/model/config.ts";
import { Rng } from "./rng.ts";

export const TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type TargetModule = (typeof TARGET_MODULES)[number];
export const DEFAULT_TARGET_MODULES: readonly TargetModule[] = TARGET_MODULES;

const SHORT_NAMES: Record<string, TargetModule> = { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj", gate: "gate_proj", up: "up_proj", down: "down_proj" };

/** Which submodule of a decoder layer holds each projection. */
export const MODULE_PARENT: Record<TargetModule, "self_attn" | "mlp"> = {
  q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn",
  gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp",
};

export interface LoraConfig {
  rank: number;
  alpha: number;
  dropout: number;
  /** In canonical order (q, k, v, o, gate, up, down), no duplicates. */
  targetModules: TargetModule[];
  rslora: boolean;
}

/**
 * "q,v", ["q_proj", "down"], "all" → canonical module names. Unknown names fail with the list
 * of what is accepted.
 */
export function normalizeTargetModules(input: string | readonly string[]): TargetModule[] {
  const names = (typeof input === "string" ? input.split(",") : [...input]).map((s) => s.trim()).filter(Boolean);
  if (names.length === 1 && (names[0] === "all" || names[0] === "all-linear")) return [...TARGET_MODULES];
  const chosen = new Set<TargetModule>();
  for (const name of names) {
    const canonical = (TARGET_MODULES as readonly string[]).includes(name) ? (name as TargetModule) : SHORT_NAMES[name];
    if (!canonical) {
      throw new Error(`unknown LoRA target module "${name}": expected some of ${TARGET_MODULES.join(", ")} (or ${Object.keys(SHORT_NAMES).join(", ")}, or "all")`);
    }
    chosen.add(canonical);
  }
  if (chosen.size === 0) throw new Error("LoRA target modules must name at least one module");
  return TARGET_MODULES.filter((m) => chosen.has(m));
}

const loraInputSchema = z.object({
  rank: z.number().int().positive().default(16),
  alpha: z.number().positive().optional(),
  dropout: z.number().min(0).lt(1).default(0),
  targetModules: z.union([z.string(), z.array(z.string())]).default([...DEFAULT_TARGET_MODULES]),
  rslora: z.boolean().default(false),
});
export type LoraConfigInput = z.input<typeof loraInputSchema>;

/** Defaults: r 16, α = 2r (32), dropout 0, all seven projections, no rsLoRA. */
export function parseLoraConfig(input: LoraConfigInput = {}): LoraConfig {
  const parsed = loraInputSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`LoRA config: ${issue.path.join(".") || "(root)"}: ${issue.message}`);
  }
  const { rank, alpha, dropout, targetModules, rslora } = parsed.data;
  return { rank, alpha: alpha ?? 2 * rank, dropout, targetModules: normalizeTargetModules(targetModules), rslora };
}

/** s in ΔW = s·B·A: α/r, or α/√r with rsLoRA (PEFT's `use_rslora`). */
export function loraScaling(config: Pick<LoraConfig, "rank" | "alpha" | "rslora">): number {
  return config.rslora ? config.alpha / Math.sqrt(config.rank) : config.alpha / config.rank;
}

/** One adapted linear layer. */
export interface LoraLayerSpec {
  layer: number;
  module: TargetModule;
  /** `model.layers.3.self_attn.q_proj`: the base weight is `${base}.weight`. */
  base: string;
  inFeatures: number;
  outFeatures: number;
}

/** Linear shapes (out, in) of each projection, as in the checkpoint (PyTorch layout). */
export function projectionShape(model: ModelConfig, module: TargetModule): { outFeatures: number; inFeatures: number } {
  const C = model.hiddenSize;
  const qDim = model.numHeads * model.headDim;
  const kvDim = model.numKvHeads * model.headDim;
  const I = model.intermediateSize;
  switch (module) {
    case "q_proj": return { outFeatures: qDim, inFeatures: C };
    case "k_proj": case "v_proj": return { outFeatures: kvDim, inFeatures: C };
    case "o_proj": return { outFeatures: C, inFeatures: qDim };
    case "gate_proj": case "up_proj": return { outFeatures: I, inFeatures: C };
    case "down_proj": return { outFeatures: C, inFeatures: I };
  }
}

/** Every adapted layer, layer by layer, modules in canonical order. */
export function loraLayerSpecs(model: ModelConfig, lora: Pick<LoraConfig, "targetModules">): LoraLayerSpec[] {
  const specs: LoraLayerSpec[] = [];
  for (let layer = 0; layer < model.numLayers; layer++) {
    for (const module of TARGET_MODULES) {
      if (!lora.targetModules.includes(module)) continue;
      specs.push({ layer, module, base: `model.layers.${layer}.${MODULE_PARENT[module]}.${module}`, ...projectionShape(model, module) });
    }
  }
  return specs;
}

export interface LoraWeights {
  spec: LoraLayerSpec;
  /** (r, in) row-major. */
  A: Float32Array;
  /** (out, r) row-major. */
  B: Float32Array;
}

/** Trainable parameter count: Σ r·(in + out). */
export function loraParameterCount(specs: readonly LoraLayerSpec[], rank: number): number {
  return specs.reduce((n, s) => n + rank * (s.inFeatures + s.outFeatures), 0);
}

/**
 * PEFT's init: A ~ U(−1/√in, 1/√in) (kaiming_uniform_ with a=√5: gain √(2/6), bound gain·√3/√in),
 * B = 0. Each layer draws from its own stream derived from the seed, so changing the target
 * modules does not change the init of the layers that stay.
 */
export function initLoraWeights(specs: readonly LoraLayerSpec[], rank: number, seed: number): LoraWeights[] {
  return specs.map((spec) => {
    const bound = 1 / Math.sqrt(spec.inFeatures);
    const A = Rng.derive(seed, "lora_A", spec.base).fillUniform(new Float32Array(rank * spec.inFeatures), -bound, bound);
    return { spec, A, B: new Float32Array(spec.outFeatures * rank) };
  });
}
