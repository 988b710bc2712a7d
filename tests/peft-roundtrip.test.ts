// An adapter saved by OUR trainer (`bun run train`), loaded by Hugging Face PEFT
// (PeftModel.from_pretrained on AutoModelForCausalLM, float32, CPU), gives the same logits as our own
// inference through the same adapter: the float64 CPU reference with the adapter merged, and GpuModel
// (f32 weights) with loadGpuAdapter.
//
// tests/fixtures/hf/peft-roundtrip/ holds the adapter (adapter_config.json + adapter_model.safetensors,
// from 8 training steps so every lora_B is non-zero) and logits.json, PEFT's logits for fixed token ids,
// made by tests/fixtures/hf/peft_roundtrip.py (its docstring has the exact commands). The base model is
// the tiny llama our generator writes with seed 0, f32; it is regenerated here and checked by sha256.
// No Python is needed to run this test; without the fixture it is skipped, saying so.
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuReferenceForward, GpuModel, loadGpuAdapter, loadModelConfig, openCheckpoint, readAdapterDir, writeTinyModel, type ReferenceWeights, type WeightStore } from "@tuneloom/model";
import { gpuLogits } from "./fixtures/hf/gpu-logits.ts";

const DIR = join(import.meta.dir, "fixtures", "hf", "peft-roundtrip");
const ADAPTER = join(DIR, "adapter");
const LOGITS = join(DIR, "logits.json");
const present = existsSync(LOGITS) && existsSync(join(ADAPTER, "adapter_model.safetensors"));

interface RoundTrip {
  adapter_sha256: string;
  base_model_sha256: string;
  lora_tensors: number;
  lora_B_max_abs: number;
  base_logits_rel_diff: number;
  sequences: { ids: number[]; logits: number[][] }[];
}

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

/** max |ours − PEFT| / max |PEFT| over every logit of the sequence. */
function relError(ours: ArrayLike<number>, peft: number[][]): number {
  const V = peft[0]!.length;
  expect(ours.length).toBe(peft.length * V);
  let maxDiff = 0, maxRef = 0;
  peft.forEach((row, t) =>
    row.forEach((x, v) => {
      maxDiff = Math.max(maxDiff, Math.abs(ours[t * V + v]! - x));
      maxRef = Math.max(maxRef, Math.abs(x));
    }),
  );
  return maxDiff / maxRef;
}

/** W + scaling·B·A for every adapted projection, merged in float64. */
function merged(base: WeightStore, adapterDir: string, cfg: ReturnType<typeof loadModelConfig>): ReferenceWeights {
  const a = readAdapterDir(adapterDir, cfg);
  const byName = new Map(a.weights.map((w) => [`${w.spec.base}.weight`, w]));
  const r = a.lora.rank;
  return {
    has: (name) => base.has(name),
    toFloat32(name) {
      const W = base.toFloat32(name);
      const w = byName.get(name);
      if (!w) return W;
      const { inFeatures: inF, outFeatures: outF } = w.spec;
      for (let o = 0; o < outF; o++)
        for (let i = 0; i < inF; i++) {
          let acc = 0;
          for (let k = 0; k < r; k++) acc += w.B[o * r + k]! * w.A[k * inF + i]!;
          W[o * inF + i] = W[o * inF + i]! + a.scaling * acc;
        }
      return W;
    },
  };
}

if (!present) console.warn(`peft-roundtrip: ${DIR} is absent, so the PEFT round-trip test is skipped (make it with tests/fixtures/hf/peft_roundtrip.py).`);

describe.skipIf(!present)(present ? "adapter saved by our trainer, loaded by PEFT" : `adapter saved by our trainer, loaded by PEFT — SKIPPED: ${DIR} absent`, () => {
  const load = () => {
    const fx = JSON.parse(readFileSync(LOGITS, "utf8")) as RoundTrip;
    const dir = join(mkdtempSync(join(tmpdir(), "peft-roundtrip-")), "llama");
    writeTinyModel(dir, { arch: "llama", seed: 0, dtype: "f32" });
    return { fx, dir, cfg: loadModelConfig(dir) };
  };

  test("fixture matches the committed adapter and our regenerated base model; B is non-zero", () => {
    const { fx, dir } = load();
    expect(sha256(join(ADAPTER, "adapter_model.safetensors"))).toBe(fx.adapter_sha256);
    expect(sha256(join(dir, "model.safetensors"))).toBe(fx.base_model_sha256);
    expect(fx.lora_tensors).toBe(28);
    expect(fx.lora_B_max_abs).toBeGreaterThan(0);
    // The adapter visibly changes PEFT's logits (so matching them is not matching the base model).
    expect(fx.base_logits_rel_diff).toBeGreaterThan(1e-2);
  });

  test("CPU reference (float64, adapter merged) matches PEFT's logits", () => {
    const { fx, dir, cfg } = load();
    const w = merged(openCheckpoint(dir), ADAPTER, cfg);
    const errs = fx.sequences.map((s) => relError(cpuReferenceForward(cfg, w, s.ids), s.logits));
    if (process.env.HF_PARITY_VERBOSE) console.log(`peft round trip, cpu reference: max rel err ${Math.max(...errs).toExponential(2)}`);
    expect(Math.max(...errs)).toBeLessThan(1e-5);
  });

  test("GPU (f32 weights, loadGpuAdapter) matches PEFT's logits", async () => {
    const { fx, dir } = load();
    const m = await GpuModel.load(dir, { weightDtype: "f32" });
    const lora = loadGpuAdapter(m, ADAPTER);
    // Each layer's A's are stacked in module order, so q/k/v and gate/up take the fused LoRA path.
    for (const layer of lora) {
      for (const [first, next] of [["q_proj", "k_proj"], ["k_proj", "v_proj"], ["gate_proj", "up_proj"]] as const) {
        expect(layer[next]!.A.buffer).toBe(layer[first]!.A.buffer);
        expect(layer[next]!.A.byteOffset).toBe(layer[first]!.A.byteOffset + layer[first]!.A.byteLength);
      }
    }
    const errs: number[] = [];
    for (const s of fx.sequences) {
      const ids = Int32Array.from(s.ids);
      errs.push(relError(await gpuLogits(m, ids, Int32Array.from(s.ids, (_, p) => p), new Int32Array(ids.length), lora), s.logits));
    }
    if (process.env.HF_PARITY_VERBOSE) console.log(`peft round trip, gpu f32: max rel err ${Math.max(...errs).toExponential(2)}`);
    expect(Math.max(...errs)).toBeLessThan(1e-5);
  });
});
