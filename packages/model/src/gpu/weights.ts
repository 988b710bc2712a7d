/**
 * Uploads a Hugging Face Llama-family checkpoint to the GPU. Linear and embedding weights stay
 * at 16 bits (f16 where the tensor-core matmul can use them, else the checkpoint's own 16-bit
 * type) or f32 when asked; norm weights and biases are f32. docs/loading.md describes the path.
 */
import { type GpuRuntime, hasTensorCoreMatmul, type Tensor } from "@tuneloom/kernels";
import { expectedTensors, type WeightStore } from "../checkpoint.ts";
import { ModelFileError, type ModelConfig } from "../config.ts";
import { type LoadReport, WeightStream } from "./weight-stream.ts";

export type WeightDtype = "f32" | "f16" | "bf16";

export interface GpuLayerWeights {
  inputNorm: Tensor; // f32 (C)
  q: Tensor; // (nH·hd, C)
  k: Tensor; // (nKV·hd, C)
  v: Tensor; // (nKV·hd, C)
  o: Tensor; // (C, nH·hd)
  qBias?: Tensor; // f32 (nH·hd)
  kBias?: Tensor;
  vBias?: Tensor;
  oBias?: Tensor; // f32 (C)
  postNorm: Tensor; // f32 (C)
  gate: Tensor; // (I, C)
  up: Tensor; // (I, C)
  down: Tensor; // (C, I)
  gateBias?: Tensor;
  upBias?: Tensor;
  downBias?: Tensor;
}

/** GpuLayerWeights keys → the HF tensor name inside `model.layers.<l>.` (the loader and full fine-tuning read it). */
export const LAYER_TENSOR_NAMES: Readonly<Record<keyof GpuLayerWeights, string>> = {
  inputNorm: "input_layernorm.weight", postNorm: "post_attention_layernorm.weight",
  q: "self_attn.q_proj.weight", k: "self_attn.k_proj.weight", v: "self_attn.v_proj.weight", o: "self_attn.o_proj.weight",
  qBias: "self_attn.q_proj.bias", kBias: "self_attn.k_proj.bias", vBias: "self_attn.v_proj.bias", oBias: "self_attn.o_proj.bias",
  gate: "mlp.gate_proj.weight", up: "mlp.up_proj.weight", down: "mlp.down_proj.weight",
  gateBias: "mlp.gate_proj.bias", upBias: "mlp.up_proj.bias", downBias: "mlp.down_proj.bias",
};

export interface GpuModelWeights {
  dtype: WeightDtype;
  embed: Tensor; // (V, C)
  layers: GpuLayerWeights[];
  finalNorm: Tensor; // f32 (C)
  /** (V, C): the embedding table when tied. */
  lmHead: Tensor;
}

/** f16 on devices with the tensor-core path, else the checkpoint's own 16-bit type, else f32. */
export function defaultWeightDtype(rt: GpuRuntime, store: WeightStore, cfg: ModelConfig): WeightDtype {
  if (hasTensorCoreMatmul(rt)) return "f16";
  const stored = store.info("model.embed_tokens.weight").dtype;
  if (stored === "BF16") return "bf16";
  if (stored === "F16") return "f16";
  void cfg;
  return "f32";
}

/**
 * Checks every tensor's name and shape against the config, then streams them to the GPU
 * (weight-stream.ts: bounded staging, conversions on the GPU). Linear and embedding weights
 * become `dtype`, norms and biases f32. Narrowing to f16 (or bf16) must not overflow: a tensor
 * with values beyond the target's range is refused, naming each such tensor and its counts,
 * before the model is used; --weight-dtype bf16 or f32 then loads it. Underflow (values
 * flushed to zero or subnormal) is only reported, in the returned LoadReport.
 */
export async function uploadModelWeights(
  rt: GpuRuntime, store: WeightStore, cfg: ModelConfig, dtype: WeightDtype, opts: { slotBytes?: number } = {},
): Promise<{ weights: GpuModelWeights; report: LoadReport }> {
  store.expectTensors(expectedTensors(cfg), { allowUnexpected: true });
  const totalBytes = store.names().reduce((a, n) => a + store.info(n).byteLength, 0);
  const stream = new WeightStream(rt, store, { maxTensors: store.names().length, slotBytes: opts.slotBytes, totalBytes });
  try {
    const lin = (n: string) => stream.upload(n, dtype);
    const f32 = (n: string) => stream.upload(n, "f32");
    const opt = async (n: string) => (store.has(n) ? f32(n) : undefined);
    const layers: GpuLayerWeights[] = [];
    for (let i = 0; i < cfg.numLayers; i++) {
      // Projections at `dtype`, norms f32, biases f32 where the checkpoint has them.
      const layer: Partial<Record<keyof GpuLayerWeights, Tensor>> = {};
      for (const [key, name] of Object.entries(LAYER_TENSOR_NAMES) as [keyof GpuLayerWeights, string][]) {
        const n = `model.layers.${i}.${name}`;
        layer[key] = key.endsWith("Norm") ? await f32(n) : key.endsWith("Bias") ? await opt(n) : await lin(n);
      }
      layers.push(layer as GpuLayerWeights);
    }
    const embed = await lin("model.embed_tokens.weight");
    const lmHead = cfg.tieWordEmbeddings || !store.has("lm_head.weight") ? embed : await lin("lm_head.weight");
    const finalNorm = await f32("model.norm.weight");
    const report = await stream.finish();
    const overflowed = report.losses.filter((l) => l.overflow > 0);
    if (overflowed.length) {
      const list = overflowed.map((l) => `'${l.name}': ${l.overflow.toLocaleString("en-US")} of ${l.numel.toLocaleString("en-US")} values beyond ${l.to}'s range (${l.from}→${l.to})`);
      throw new ModelFileError(
        `${store.dir}: ${overflowed.length} tensor(s) overflow ${dtype} (|x| > ${dtype === "f16" ? "65504" : "3.39e38"}), which would turn them into ±inf:\n  ${list.join("\n  ")}\n` +
          `load with --weight-dtype bf16 or --weight-dtype f32 instead (weightDtype: "bf16" | "f32").`,
      );
    }
    return { weights: { dtype, embed, layers, finalNorm, lmHead }, report };
  } catch (e) {
    await stream.abort().catch(() => {}); // frees what was uploaded; the first error is the one to report
    throw e;
  }
}
