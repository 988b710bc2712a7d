/**
 * LoRA's hyperparameters and shapes, the one definition the trainer, the adapter reader and
 * writer, the GPU forward and the merge share:
 *
 *   y = x·Wᵀ + s · dropout(x)·Aᵀ·Bᵀ      W (out, in) frozen, A (r, in), B (out, r)
 *   s = α/r, or α/√r with rsLoRA (PEFT's use_rslora)
 *
 * The adaptable projections are the seven linear layers of a Llama-family decoder layer; each
 * lives under `self_attn` or `mlp`, which names its weight in the checkpoint and in a PEFT file.
 */
import { z } from "zod";
import type { ModelConfig } from "./config.ts";

/** Canonical order: q, k, v, o, gate, up, down. Everything that lists projections keeps it. */
export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

/** Which submodule of a decoder layer holds each projection. */
export const LORA_TARGET_PARENT: Record<LoraTarget, "self_attn" | "mlp"> = {
  q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn",
  gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp",
};

const SHORT_NAMES: Record<string, LoraTarget> = { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj", gate: "gate_proj", up: "up_proj", down: "down_proj" };

export interface LoraConfig {
  rank: number;
  alpha: number;
  dropout: number;
  /** In canonical order, no duplicates. */
  targetModules: LoraTarget[];
  rslora: boolean;
}

/**
 * "q,v", ["q_proj", "down"], "all" (or PEFT's "all-linear") → canonical module names. Unknown
 * names fail with the list of what is accepted.
 */
export function normalizeTargetModules(input: string | readonly string[]): LoraTarget[] {
  const names = (typeof input === "string" ? input.split(",") : [...input]).map((s) => s.trim()).filter(Boolean);
  if (names.length === 1 && (names[0] === "all" || names[0] === "all-linear")) return [...LORA_TARGETS];
  const chosen = new Set<LoraTarget>();
  for (const name of names) {
    const canonical = (LORA_TARGETS as readonly string[]).includes(name) ? (name as LoraTarget) : SHORT_NAMES[name];
    if (!canonical) {
      throw new Error(`unknown LoRA target module "${name}": expected some of ${LORA_TARGETS.join(", ")} (or ${Object.keys(SHORT_NAMES).join(", ")}, or "all")`);
    }
    chosen.add(canonical);
  }
  if (chosen.size === 0) throw new Error("LoRA target modules must name at least one module");
  return LORA_TARGETS.filter((m) => chosen.has(m));
}

const loraInputSchema = z.object({
  rank: z.number().int().positive().default(16),
  alpha: z.number().positive().optional(),
  dropout: z.number().min(0).lt(1).default(0),
  targetModules: z.union([z.string(), z.array(z.string())]).default([...LORA_TARGETS]),
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

/** s in ΔW = s·B·A: α/r, or α/√r with rsLoRA. */
export function loraScaling(config: Pick<LoraConfig, "rank" | "alpha" | "rslora">): number {
  return config.rslora ? config.alpha / Math.sqrt(config.rank) : config.alpha / config.rank;
}

/** One adapted linear layer. */
export interface LoraLayerSpec {
  layer: number;
  module: LoraTarget;
  /** `model.layers.3.self_attn.q_proj`: the base weight is `${base}.weight`. */
  base: string;
  inFeatures: number;
  outFeatures: number;
}

/** `model.layers.3.self_attn.q_proj`. */
export function loraModuleBase(layer: number, module: LoraTarget): string {
  return `model.layers.${layer}.${LORA_TARGET_PARENT[module]}.${module}`;
}

/** (out, in) of a projection, as in the checkpoint (PyTorch Linear layout). */
export function loraProjectionShape(model: ModelConfig, module: LoraTarget): { outFeatures: number; inFeatures: number } {
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
    for (const module of LORA_TARGETS) {
      if (lora.targetModules.includes(module)) specs.push({ layer, module, base: loraModuleBase(layer, module), ...loraProjectionShape(model, module) });
    }
  }
  return specs;
}

/** Canonical order of specs: layer by layer, modules q … down. */
export function loraSpecOrder(spec: Pick<LoraLayerSpec, "layer" | "module">): number {
  return spec.layer * LORA_TARGETS.length + LORA_TARGETS.indexOf(spec.module);
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
