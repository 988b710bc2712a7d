import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { randn, relError } from "@tuneloom/kernels/testing.ts";
import { GpuModel, allocLayerActivations, expectedTensors, parseModelConfig, releaseTensors, writeSafetensors, writeTinyModel } from "../src/index.ts";

// Inference updates the residual stream in place (ForwardOptions.residualInPlace: one buffer, the o
// and down products add into it, decoder-layer.ts). Its hidden states must be the ping-pong
// forward's, the tested path (logits equal transformers'), for every combination of o_proj and
// down_proj biases (a biased projection keeps the separate residual add, and down's bias with
// xMid already in the stream takes the free xMid buffer), at decode-sized and prefill-sized T.
const dirs: string[] = [];
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** The tiny llama with `attention_bias` (q/k/v/o) and `mlp_bias` (gate/up/down) as given, random f32 weights. */
function biasedTinyModel(attentionBias: boolean, mlpBias: boolean): string {
  const dir = mkdtempSync(path.join(tmpdir(), "tuneloom-residual-"));
  dirs.push(dir);
  writeTinyModel(dir, { arch: "llama", seed: 7 });
  const raw = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
  Object.assign(raw, { attention_bias: attentionBias, mlp_bias: mlpBias });
  writeFileSync(path.join(dir, "config.json"), JSON.stringify(raw));
  const cfg = parseModelConfig(raw);
  const tensors = expectedTensors(cfg).map((spec) => {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const noise = randn(n);
    const data = spec.name.endsWith("norm.weight") ? noise.map((v) => 1 + 0.1 * v) : noise.map((v) => 0.1 * v);
    return { name: spec.name, dtype: "F32" as const, shape: [...spec.shape], data: Float32Array.from(data) };
  });
  writeSafetensors(path.join(dir, "model.safetensors"), tensors);
  return dir;
}

async function finalHidden(model: GpuModel, T: number, inPlace: boolean): Promise<Float32Array> {
  const rt = model.rt;
  const ids = Int32Array.from({ length: T }, (_, t) => (7 * t + 3) % model.cfg.vocabSize);
  const tb = model.uploadTokens(ids, Int32Array.from({ length: T }, (_, t) => t), new Int32Array(T));
  const acts = allocLayerActivations(rt, model.cfg, T, 0, []);
  const rec = rt.recorder("residual-in-place test");
  const fwd = model.recordForward(rec, tb, { activations: () => acts, residualInPlace: inPlace });
  rec.submit();
  const h = await rt.read(fwd.h);
  rec.release();
  rt.release(...fwd.scratch);
  releaseTensors(rt, acts);
  model.releaseTokens(tb);
  return h;
}

describe("the residual stream updated in place equals the ping-pong forward", () => {
  for (const [attentionBias, mlpBias] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    test(`attention_bias ${attentionBias}, mlp_bias ${mlpBias}`, async () => {
      const dir = biasedTinyModel(attentionBias, mlpBias);
      // f16 weights: on a GPU with subgroup matrices the prefill-sized products (T = 32) run on
      // tensor cores, which accumulate into the stream by loading it as the starting tile.
      for (const weightDtype of ["f32", "f16"] as const) {
        const model = await GpuModel.load(dir, { weightDtype });
        expect(model.cfg.oProjBias).toBe(attentionBias);
        expect(model.cfg.mlpBias).toBe(mlpBias);
        for (const T of [1, 3, 32]) {
          const ref = await finalHidden(model, T, false), got = await finalHidden(model, T, true);
          expect(got.every(Number.isFinite)).toBe(true);
          // the same sums, added in another order where a product accumulates into the stream; with
          // 16-bit weights the activations are rounded to f16 before the tensor-core products, and a
          // last-bit f32 difference flips some of those roundings (one f16 ulp, 4.9e-4 relative, in a
          // few elements): 1.1e-4 on an H100 (session 13). A missing or doubled residual is O(1).
          expect(relError(got, ref)).toBeLessThan(weightDtype === "f32" ? 1e-6 : 1e-3);
        }
      }
    }, 60_000);
  }
});
