import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { loraLayerSpecs, loraParameterCount, loraScaling, normalizeTargetModules, parseLoraConfig } from "../src/lora-config.ts";
import { writeTinyModel } from "../src/tiny-model.ts";

function tinyModel() {
  const dir = mkdtempSync(path.join(tmpdir(), "lora-config-test-"));
  try {
    return { config: writeTinyModel(path.join(dir, "model"), { seed: 1 }).config };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("LoRA config", () => {
  test("defaults: r 16, α 32, all seven projections", () => {
    expect(parseLoraConfig()).toEqual({
      rank: 16, alpha: 32, dropout: 0, rslora: false,
      targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    });
  });

  test("short and long module names, canonical order, no duplicates", () => {
    expect(normalizeTargetModules("v,q, down ,q_proj")).toEqual(["q_proj", "v_proj", "down_proj"]);
    expect(normalizeTargetModules(["gate", "up_proj"])).toEqual(["gate_proj", "up_proj"]);
    expect(normalizeTargetModules("all")).toHaveLength(7);
    expect(() => normalizeTargetModules("q,lm_head")).toThrow('unknown LoRA target module "lm_head"');
    expect(() => normalizeTargetModules("")).toThrow("at least one");
  });

  test("scaling α/r, or α/√r with rsLoRA", () => {
    expect(loraScaling(parseLoraConfig({ rank: 8, alpha: 16 }))).toBe(2);
    expect(loraScaling(parseLoraConfig({ rank: 16, alpha: 16, rslora: true }))).toBe(4);
    expect(() => parseLoraConfig({ rank: 0 })).toThrow("LoRA config: rank");
    expect(() => parseLoraConfig({ dropout: 1 })).toThrow("LoRA config: dropout");
  });
});

describe("layer specs", () => {
  test("shapes follow the model (GQA k/v are narrower)", () => {
    const { config } = tinyModel();
    const specs = loraLayerSpecs(config, parseLoraConfig({ targetModules: "q,k,o,down" }));
    expect(specs.map((s) => s.base)).toEqual([
      "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj",
      "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj",
    ]);
    const kvDim = config.numKvHeads * config.headDim;
    expect(specs[1]).toMatchObject({ inFeatures: config.hiddenSize, outFeatures: kvDim });
    expect(specs[3]).toMatchObject({ inFeatures: config.intermediateSize, outFeatures: config.hiddenSize });
    expect(loraParameterCount(specs, 4)).toBe(specs.reduce((n, s) => n + 4 * (s.inFeatures + s.outFeatures), 0));
  });

});
