/**
 * LoRA's initial weights, as PEFT makes them (config and shapes: @tuneloom/model's lora-config.ts):
 *   A ~ kaiming_uniform_(a=√5)  →  U(−1/√in, 1/√in)
 *   B = 0                        →  ΔW = 0 at step 0, the tuned model starts as the base model.
 */
import type { LoraLayerSpec, LoraWeights } from "@tuneloom/model";
import { Rng } from "./rng.ts";

/**
 * A ~ U(−1/√in, 1/√in) (kaiming_uniform_ with a=√5: gain √(2/6), bound gain·√3/√in), B = 0.
 * Each layer draws from its own stream derived from the seed, so changing the target modules
 * does not change the init of the layers that stay.
 */
export function initLoraWeights(specs: readonly LoraLayerSpec[], rank: number, seed: number): LoraWeights[] {
  return specs.map((spec) => {
    const bound = 1 / Math.sqrt(spec.inFeatures);
    const A = Rng.derive(seed, "lora_A", spec.base).fillUniform(new Float32Array(rank * spec.inFeatures), -bound, bound);
    return { spec, A, B: new Float32Array(spec.outFeatures * rank) };
  });
}
