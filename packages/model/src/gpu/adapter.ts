/**
 * A PEFT LoRA adapter directory, read for inference: onto the GPU as LayerLora[] (the forward
 * adds s·(x·Aᵀ)·Bᵀ to each adapted projection), or folded into the base weights on the CPU:
 *
 *   W' (out, in) = W + s·B·A        A (r, in), B (out, r), s = lora_alpha/r (lora_alpha/√r with use_rslora)
 *
 * The trainer writes these directories (packages/trainer/src/adapter-io.ts); this reader lives in
 * the model package because the model must not depend on the trainer. Every key and shape is
 * checked against the model config before anything is uploaded, and every problem is reported in
 * one line naming the file and the tensor or field.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { bf16ToFloat32Array, f16ToFloat32Array, float32ToBf16Array, float32ToF16Array } from "../bf16.ts";
import type { WeightStore } from "../checkpoint.ts";
import type { ModelConfig } from "../config.ts";
import { openSafetensors, type TensorToWrite } from "../safetensors.ts";
import { Tensor } from "@tuneloom/kernels";
import { LORA_TARGETS, type LayerLora, type LoraTarget } from "./lora.ts";
import type { GpuModel } from "./model.ts";

export const PEFT_CONFIG_FILE = "adapter_config.json";
export const PEFT_WEIGHTS_FILE = "adapter_model.safetensors";

/** Thrown for an unreadable or mismatched adapter; the message names the file and the key. */
export class AdapterError extends Error {
  override readonly name = "AdapterError";
}

/** One adapted projection, weights in float32. */
export interface PeftLoraModule {
  layer: number;
  module: LoraTarget;
  /** `model.layers.3.self_attn.q_proj`: the base weight is `${base}.weight`. */
  base: string;
  A: Float32Array; // (r, in)
  B: Float32Array; // (out, r)
  inFeatures: number;
  outFeatures: number;
}

export interface PeftAdapter {
  dir: string;
  rank: number;
  alpha: number;
  rslora: boolean;
  /** s = α/r, or α/√r with rsLoRA. */
  scale: number;
  /** The adapted projections (canonical order), the same in every layer. */
  targets: LoraTarget[];
  /** Layer by layer, targets in canonical order. */
  modules: PeftLoraModule[];
}

const PARENT: Record<LoraTarget, "self_attn" | "mlp"> = {
  q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn",
  gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp",
};

const PEFT_KEY = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)\.weight$/;

/** (out, in) of each projection, PyTorch Linear layout. */
export function loraProjectionShape(cfg: ModelConfig, module: LoraTarget): { outFeatures: number; inFeatures: number } {
  const C = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim, I = cfg.intermediateSize;
  switch (module) {
    case "q_proj": return { outFeatures: q, inFeatures: C };
    case "k_proj": case "v_proj": return { outFeatures: kv, inFeatures: C };
    case "o_proj": return { outFeatures: C, inFeatures: q };
    case "gate_proj": case "up_proj": return { outFeatures: I, inFeatures: C };
    case "down_proj": return { outFeatures: C, inFeatures: I };
  }
}

// Only what changes the math is read; anything PEFT can express that plain LoRA on linear layers
// cannot (DoRA, trained biases, per-module ranks, fan-in-fan-out storage) is refused by name.
const emptyRecord = z.record(z.string(), z.unknown()).nullish().refine((r) => !r || Object.keys(r).length === 0, "per-module ranks/alphas are not supported");
const peftConfigSchema = z.looseObject({
  peft_type: z.literal("LORA"),
  r: z.number().int().positive(),
  lora_alpha: z.number().positive(),
  target_modules: z.union([z.array(z.string()).min(1), z.string()]),
  use_rslora: z.boolean().nullish(),
  use_dora: z.literal(false, "DoRA is not supported").nullish(),
  bias: z.literal("none", "trained biases are not supported (only bias: \"none\")").nullish(),
  fan_in_fan_out: z.literal(false, "fan_in_fan_out is not supported").nullish(),
  modules_to_save: z.array(z.string()).max(0, "modules_to_save is not supported").nullish(),
  layers_to_transform: z.null("layers_to_transform is not supported").optional(),
  rank_pattern: emptyRecord,
  alpha_pattern: emptyRecord,
});

function readConfig(file: string): { rank: number; alpha: number; rslora: boolean; targetNames: string[] | string } {
  if (!existsSync(file)) throw new AdapterError(`${file}: not found (an adapter directory needs ${PEFT_CONFIG_FILE})`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new AdapterError(`${file}: invalid JSON (${(e as Error).message})`);
  }
  const parsed = peftConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `field '${i.path.join(".") || "(root)"}': ${i.message}`);
    throw new AdapterError(`${file}: ${issues.join("; ")}`);
  }
  const c = parsed.data;
  return { rank: c.r, alpha: c.lora_alpha, rslora: c.use_rslora ?? false, targetNames: c.target_modules };
}

function toFloat32(file: string, name: string, dtype: string, bytes: Uint8Array): Float32Array {
  const copy = bytes.slice(); // aligned, and detached from the memory map
  switch (dtype) {
    case "F32": return new Float32Array(copy.buffer, 0, copy.byteLength / 4);
    case "F16": return f16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.byteLength / 2));
    case "BF16": return bf16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.byteLength / 2));
    default: throw new AdapterError(`${file}: tensor '${name}': dtype ${dtype} is not supported (F32, F16, BF16)`);
  }
}

/**
 * Reads `<dir>/adapter_config.json` + `<dir>/adapter_model.safetensors` and checks them against
 * the model: every tensor a known projection of an existing layer, A (r, in) and B (out, r) with
 * the model's in/out, and every layer adapting the same projections (the GPU forward needs that).
 */
export function readPeftAdapter(dir: string, cfg: ModelConfig): PeftAdapter {
  const configFile = join(dir, PEFT_CONFIG_FILE);
  if (!existsSync(dir)) throw new AdapterError(`${dir}: adapter directory not found`);
  const { rank: r, alpha, rslora, targetNames } = readConfig(configFile);
  const targetList = typeof targetNames === "string" ? null : targetNames.map((m) => m.split(".").at(-1)!);
  const allLinear = targetNames === "all-linear" || (targetList?.length === 1 && targetList[0] === "all-linear");
  if (typeof targetNames === "string" && !allLinear)
    throw new AdapterError(`${configFile}: field 'target_modules': a regex ("${targetNames}") is not supported; list the module names`);

  const weightsFile = join(dir, PEFT_WEIGHTS_FILE);
  if (!existsSync(weightsFile)) {
    const bin = existsSync(join(dir, "adapter_model.bin"));
    throw new AdapterError(`${weightsFile}: not found${bin ? " (adapter_model.bin, pickled PyTorch, is not supported: re-save with safe_serialization=True)" : ""}`);
  }
  const st = openSafetensors(weightsFile);
  const problems: string[] = [];
  const found = new Map<string, Partial<PeftLoraModule> & { layer: number; module: LoraTarget; base: string }>();
  try {
    for (const [name, info] of st.tensors) {
      const m = PEFT_KEY.exec(name);
      if (!m) {
        problems.push(`unexpected tensor '${name}' (expected base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_<A|B>.weight)`);
        continue;
      }
      const layer = Number(m[1]), module = m[3] as LoraTarget, which = m[4] as "A" | "B";
      if (!(LORA_TARGETS as readonly string[]).includes(module) || PARENT[module] !== m[2]) {
        problems.push(`tensor '${name}': ${m[2]}.${m[3]} is not a projection LoRA can adapt`);
        continue;
      }
      if (targetList && !allLinear && !targetList.includes(module)) problems.push(`tensor '${name}': ${module} is not in target_modules of ${configFile}`);
      if (layer >= cfg.numLayers) {
        problems.push(`tensor '${name}': layer ${layer} does not exist (the model has ${cfg.numLayers} layers)`);
        continue;
      }
      const want = loraProjectionShape(cfg, module);
      const shape = which === "A" ? [r, want.inFeatures] : [want.outFeatures, r];
      if (info.shape.length !== 2 || info.shape[0] !== shape[0] || info.shape[1] !== shape[1]) {
        problems.push(`tensor '${name}': shape [${info.shape.join(", ")}], expected [${shape.join(", ")}] (${which === "A" ? "r, in" : "out, r"} with r=${r} from ${PEFT_CONFIG_FILE})`);
        continue;
      }
      const base = `model.layers.${layer}.${m[2]}.${module}`;
      const entry = found.get(base) ?? { layer, module, base, ...want };
      entry[which] = toFloat32(weightsFile, name, info.dtype, st.bytes(name));
      found.set(base, entry);
    }
  } finally {
    st.close();
  }
  for (const e of found.values()) {
    if (!e.A || !e.B) problems.push(`'${e.base}' has lora_${e.A ? "A" : "B"} but no lora_${e.A ? "B" : "A"}`);
  }
  const targets = LORA_TARGETS.filter((t) => [...found.values()].some((e) => e.module === t));
  if (found.size === 0 && problems.length === 0) problems.push("no LoRA tensors");
  for (let layer = 0; layer < cfg.numLayers && found.size > 0; layer++) {
    for (const module of targets) {
      const base = `model.layers.${layer}.${PARENT[module]}.${module}`;
      if (!found.has(base)) problems.push(`missing 'base_model.model.${base}.lora_A.weight' (other layers adapt ${module}; every layer must)`);
    }
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 5);
    throw new AdapterError(
      `${weightsFile}: ${problems.length} problem(s): ${shown.join("; ")}${problems.length > shown.length ? `; ... and ${problems.length - shown.length} more` : ""}`,
    );
  }
  const order = (m: PeftLoraModule) => m.layer * LORA_TARGETS.length + LORA_TARGETS.indexOf(m.module);
  const modules = ([...found.values()] as PeftLoraModule[]).sort((a, b) => order(a) - order(b));
  return { dir, rank: r, alpha, rslora, scale: rslora ? alpha / Math.sqrt(r) : alpha / r, targets, modules };
}

/**
 * Uploads the adapter's A and B (f32) for `model`'s forward: one LayerLora per layer. Each
 * layer's A's go back to back into one buffer in module order where every A is a whole number
 * of binding alignments, so q/k/v and gate/up run their LoRA as one product each (lora.ts).
 */
export function uploadAdapter(model: GpuModel, adapter: PeftAdapter): LayerLora[] {
  const rt = model.rt, r = adapter.rank;
  const align = rt.caps.limits.minStorageBufferOffsetAlignment;
  const lora: LayerLora[] = Array.from({ length: model.cfg.numLayers }, () => ({}));
  for (let layer = 0; layer < model.cfg.numLayers; layer++) {
    const mods = adapter.modules.filter((m) => m.layer === layer); // in LORA_TARGETS order
    const stack = mods.length > 1 && mods.every((m) => (r * m.inFeatures * 4) % align === 0);
    const stacked = stack ? rt.empty("f32", [mods.reduce((n, m) => n + r * m.inFeatures, 0)], `model.layers.${layer}.lora_A`) : null;
    let offset = 0; // elements into `stacked`
    for (const m of mods) {
      let A: Tensor;
      if (stacked) {
        A = new Tensor(stacked.buffer, "f32", [r, m.inFeatures], offset * 4, `${m.base}.lora_A`);
        rt.write(A, m.A);
        offset += r * m.inFeatures;
      } else A = rt.upload("f32", [r, m.inFeatures], m.A, `${m.base}.lora_A`);
      lora[layer]![m.module] = { A, B: rt.upload("f32", [m.outFeatures, r], m.B, `${m.base}.lora_B`), scale: adapter.scale };
    }
  }
  return lora;
}

/** readPeftAdapter + uploadAdapter. */
export function loadGpuAdapter(model: GpuModel, dir: string): LayerLora[] {
  return uploadAdapter(model, readPeftAdapter(dir, model.cfg));
}

/** Frees what uploadAdapter allocated (a stacked A buffer once, through its view at offset 0). */
export function releaseAdapter(model: GpuModel, lora: readonly LayerLora[]) {
  for (const layer of lora) for (const m of Object.values(layer)) if (m) model.rt.release(m.A, m.B);
}

/** W (out, in) += s·B·A in float32, in place. */
export function addLoraDelta(W: Float32Array, A: Float32Array, B: Float32Array, scale: number, outF: number, inF: number, r: number): Float32Array {
  if (W.length !== outF * inF || A.length !== r * inF || B.length !== outF * r) {
    throw new Error(`addLoraDelta: W ${W.length}, A ${A.length}, B ${B.length} values do not match out=${outF} in=${inF} r=${r}`);
  }
  for (let o = 0; o < outF; o++) {
    const row = W.subarray(o * inF, (o + 1) * inF);
    for (let k = 0; k < r; k++) {
      const b = Math.fround(scale * B[o * r + k]!);
      if (b === 0) continue;
      const a = A.subarray(k * inF, (k + 1) * inF);
      for (let i = 0; i < inF; i++) row[i] = row[i]! + b * a[i]!;
    }
  }
  return W;
}

/**
 * Every tensor of the checkpoint, with each adapted projection replaced by W + s·B·A (computed in
 * float32, stored back in the tensor's own dtype). Unadapted tensors are views of the stored bytes.
 */
export function mergeAdapterWeights(store: WeightStore, adapter: PeftAdapter): TensorToWrite[] {
  const byWeight = new Map(adapter.modules.map((m) => [`${m.base}.weight`, m]));
  for (const name of byWeight.keys()) {
    if (!store.has(name)) throw new AdapterError(`${adapter.dir}: the adapter adapts '${name}', which the checkpoint in ${store.dir} lacks`);
  }
  return store.names().map((name): TensorToWrite => {
    const info = store.info(name);
    const m = byWeight.get(name);
    if (!m) return { name, dtype: info.dtype, shape: info.shape, data: store.raw(name) };
    if (info.shape[0] !== m.outFeatures || info.shape[1] !== m.inFeatures) {
      throw new AdapterError(`${info.file}: tensor '${name}': shape [${info.shape.join(", ")}], the adapter needs [${m.outFeatures}, ${m.inFeatures}]`);
    }
    const W = addLoraDelta(store.toFloat32(name), m.A, m.B, adapter.scale, m.outFeatures, m.inFeatures, adapter.rank);
    switch (info.dtype) {
      case "F32": return { name, dtype: "F32", shape: info.shape, data: W };
      case "BF16": return { name, dtype: "BF16", shape: info.shape, data: float32ToBf16Array(W) };
      case "F16": return { name, dtype: "F16", shape: info.shape, data: float32ToF16Array(W) };
      default: throw new AdapterError(`${info.file}: tensor '${name}': dtype ${info.dtype} cannot be merged (F32, F16, BF16)`);
    }
  });
}
