import { describe, expect, test } from "bun:test";
import { loraLayerSpecs, parseLoraConfig } from "@tuneloom/model";
import { initLoraWeights } from "../src/lora-init.ts";
import { tinyModel } from "./helpers.ts";

describe("LoRA init", () => {
  test("A ~ U(−1/√in, 1/√in) like PEFT's kaiming_uniform_(a=√5), B = 0, reproducible by seed", () => {
    const { config } = tinyModel();
    const specs = loraLayerSpecs(config, parseLoraConfig());
    const weights = initLoraWeights(specs, 8, 123);
    for (const { spec, A, B } of weights) {
      const bound = 1 / Math.sqrt(spec.inFeatures);
      expect(A.length).toBe(8 * spec.inFeatures);
      expect(B.length).toBe(spec.outFeatures * 8);
      expect(B.every((x) => x === 0)).toBe(true);
      expect(A.every((x) => Math.abs(x) <= bound)).toBe(true);
      // Uniform on [−b, b] has variance b²/3.
      const variance = A.reduce((s, x) => s + x * x, 0) / A.length;
      expect(variance).toBeGreaterThan(0.75 * (bound * bound) / 3);
      expect(variance).toBeLessThan(1.25 * (bound * bound) / 3);
    }
    expect(initLoraWeights(specs, 8, 123)[5]!.A).toEqual(weights[5]!.A);
    expect(initLoraWeights(specs, 8, 124)[5]!.A).not.toEqual(weights[5]!.A);
    // A layer's init does not depend on which other modules are adapted.
    const qOnly = initLoraWeights(loraLayerSpecs(config, parseLoraConfig({ targetModules: "q" })), 8, 123);
    expect(qOnly[0]!.A).toEqual(weights[0]!.A);
  });
});
