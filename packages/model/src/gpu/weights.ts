/**
 * Uploads a Hugging Face Llama-family checkpoint to the GPU. Linear and embedding weights stay
 * at 16 bits (f16 where the tensor-core matmul can use them, else the checkpoint's own 16-bit
 * type) or f32 when asked; norm weights and biases are f32.
 */
import { type DType, type GpuRuntime, hasTensorCoreMatmul, type Tensor } from "@tuneloom/kernels";
import { float32ToBf16Array, float32ToF16Array } from "../half-floats.ts";
import { expectedTensors, type WeightStore } from "../checkpoint.ts";
import type { ModelConfig } from "../config.ts";

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

function uploadAs(rt: GpuRuntime, store: WeightStore, name: string, dtype: DType): Tensor {
  const info = store.info(name);
  const shape = info.shape;
  const stored = info.dtype;
  const label = name;
  // Same type on disk and on the GPU: the bytes go up as they are (16-bit as raw u16, never Float16Array).
  if ((stored === "F32" && dtype === "f32") || (stored === "BF16" && dtype === "bf16") || (stored === "F16" && dtype === "f16")) {
    const raw = store.raw(name);
    return rt.upload(dtype, shape, new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), label);
  }
  const f32 = store.toFloat32(name);
  if (dtype === "f32") return rt.upload("f32", shape, f32, label);
  if (dtype === "bf16") return rt.upload("bf16", shape, float32ToBf16Array(f32), label);
  if (dtype === "f16") return rt.upload("f16", shape, float32ToF16Array(f32), label);
  throw new Error(`cannot upload ${name} as ${dtype}`);
}

/** Checks every tensor's name and shape against the config, then uploads them. */
export function uploadModelWeights(rt: GpuRuntime, store: WeightStore, cfg: ModelConfig, dtype: WeightDtype): GpuModelWeights {
  store.expectTensors(expectedTensors(cfg), { allowUnexpected: true });
  const lin = (n: string) => uploadAs(rt, store, n, dtype);
  const f32 = (n: string) => uploadAs(rt, store, n, "f32");
  const opt = (n: string) => (store.has(n) ? f32(n) : undefined);
  const layers: GpuLayerWeights[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}.`;
    layers.push({
      inputNorm: f32(`${p}input_layernorm.weight`),
      q: lin(`${p}self_attn.q_proj.weight`),
      k: lin(`${p}self_attn.k_proj.weight`),
      v: lin(`${p}self_attn.v_proj.weight`),
      o: lin(`${p}self_attn.o_proj.weight`),
      qBias: opt(`${p}self_attn.q_proj.bias`),
      kBias: opt(`${p}self_attn.k_proj.bias`),
      vBias: opt(`${p}self_attn.v_proj.bias`),
      oBias: opt(`${p}self_attn.o_proj.bias`),
      postNorm: f32(`${p}post_attention_layernorm.weight`),
      gate: lin(`${p}mlp.gate_proj.weight`),
      up: lin(`${p}mlp.up_proj.weight`),
      down: lin(`${p}mlp.down_proj.weight`),
      gateBias: opt(`${p}mlp.gate_proj.bias`),
      upBias: opt(`${p}mlp.up_proj.bias`),
      downBias: opt(`${p}mlp.down_proj.bias`),
    });
  }
  const embed = lin("model.embed_tokens.weight");
  const lmHead = cfg.tieWordEmbeddings || !store.has("lm_head.weight") ? embed : lin("lm_head.weight");
  return { dtype, embed, layers, finalNorm: f32("model.norm.weight"), lmHead };
}
