/**
 * Fold a PEFT LoRA adapter into base weights at load: W' = W + s·B·A, with A (r, in), B (out, r)
 * and s = lora_alpha / r, or lora_alpha / √r with rsLoRA. After the merge the forward is the
 * plain model's, so the CPU reference needs no LoRA path. Anything the formula does not cover
 * (DoRA, per-module rank/alpha patterns, trained biases, embedding adapters) is refused with the
 * reason rather than served half-applied.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { openSafetensors } from "@tuneloom/model/safetensors.ts";
import { bf16ToFloat32Array, f16ToFloat32Array } from "@tuneloom/model/bf16.ts";

export interface AdapterConfig {
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  /** s in W + s·B·A. */
  scaling: number;
}

export interface MergeTarget {
  has(name: string): boolean;
  /** Base weight (out, in) as float32; the merge writes into the array it returns. */
  get(name: string): Float32Array;
  shape(name: string): number[];
}

export function readAdapterConfig(adapterDir: string): AdapterConfig {
  const path = join(adapterDir, "adapter_config.json");
  if (!existsSync(path)) throw new Error(`${adapterDir}: no adapter_config.json (is this a PEFT adapter directory?)`);
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new Error(`${path}: invalid JSON (${(err as Error).message})`);
  }
  const r = json.r;
  const alpha = json.lora_alpha ?? r;
  if (typeof r !== "number" || !Number.isInteger(r) || r < 1) throw new Error(`${path}: field 'r' must be a positive integer, got ${JSON.stringify(r)}`);
  if (typeof alpha !== "number" || !Number.isFinite(alpha)) throw new Error(`${path}: field 'lora_alpha' must be a number, got ${JSON.stringify(alpha)}`);
  if (json.peft_type !== undefined && json.peft_type !== "LORA") throw new Error(`${path}: peft_type ${JSON.stringify(json.peft_type)} is not supported (only LORA)`);
  if (json.use_dora === true) throw new Error(`${path}: use_dora is not supported (DoRA does not merge as W + s·B·A)`);
  for (const field of ["rank_pattern", "alpha_pattern"]) {
    const v = json[field];
    if (v && typeof v === "object" && Object.keys(v).length > 0) throw new Error(`${path}: field '${field}' is not supported (per-module rank/alpha)`);
  }
  if (json.bias !== undefined && json.bias !== "none") throw new Error(`${path}: bias ${JSON.stringify(json.bias)} is not supported (only "none")`);
  if (json.fan_in_fan_out === true) throw new Error(`${path}: fan_in_fan_out is not supported (Llama-family Linear layers are (out, in))`);
  const useRslora = json.use_rslora === true;
  return { r, loraAlpha: alpha, useRslora, scaling: useRslora ? alpha / Math.sqrt(r) : alpha / r };
}

const KEY = /^base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$/;

function toFloat32(dtype: string, bytes: Uint8Array, where: string): Float32Array {
  const copy = bytes.slice();
  if (dtype === "F32") return new Float32Array(copy.buffer, 0, copy.length / 4);
  if (dtype === "BF16") return bf16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.length / 2));
  if (dtype === "F16") return f16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.length / 2));
  throw new Error(`${where}: dtype ${dtype} is not supported (F32, F16, BF16)`);
}

/** Merge every lora_A/lora_B pair of the adapter into `target`; returns the merged module names. */
export function mergeLoraAdapter(adapterDir: string, target: MergeTarget): { config: AdapterConfig; merged: string[] } {
  const config = readAdapterConfig(adapterDir);
  const path = join(adapterDir, "adapter_model.safetensors");
  if (!existsSync(path)) throw new Error(`${adapterDir}: no adapter_model.safetensors`);
  const file = openSafetensors(path);
  try {
    const pairs = new Map<string, { A?: string; B?: string }>();
    for (const name of file.tensors.keys()) {
      const m = KEY.exec(name);
      if (!m) throw new Error(`${path}: tensor '${name}' is not a LoRA A/B weight (expected base_model.model.<module>.lora_A.weight / lora_B.weight)`);
      const entry = pairs.get(m[1]!) ?? {};
      entry[m[2] as "A" | "B"] = name;
      pairs.set(m[1]!, entry);
    }
    const merged: string[] = [];
    for (const [module, { A, B }] of pairs) {
      if (!A || !B) throw new Error(`${path}: module '${module}' has lora_${A ? "A" : "B"} but no lora_${A ? "B" : "A"}`);
      const baseName = `${module}.weight`;
      if (!target.has(baseName)) throw new Error(`${path}: module '${module}' has no base weight '${baseName}' in the model`);
      const [outF, inF] = target.shape(baseName) as [number, number];
      const a = file.tensors.get(A)!;
      const b = file.tensors.get(B)!;
      if (a.shape.length !== 2 || a.shape[0] !== config.r || a.shape[1] !== inF)
        throw new Error(`${path}: '${A}' has shape [${a.shape}], expected [${config.r}, ${inF}] (r × in)`);
      if (b.shape.length !== 2 || b.shape[0] !== outF || b.shape[1] !== config.r)
        throw new Error(`${path}: '${B}' has shape [${b.shape}], expected [${outF}, ${config.r}] (out × r)`);
      const Aw = toFloat32(a.dtype, file.bytes(A), `${path}: '${A}'`); // (r, in)
      const Bw = toFloat32(b.dtype, file.bytes(B), `${path}: '${B}'`); // (out, r)
      const W = target.get(baseName); // (out, in)
      const r = config.r;
      for (let o = 0; o < outF; o++) {
        for (let i = 0; i < inF; i++) {
          let acc = 0;
          for (let k = 0; k < r; k++) acc += Bw[o * r + k]! * Aw[k * inF + i]!;
          W[o * inF + i]! += config.scaling * acc;
        }
      }
      merged.push(module);
    }
    return { config, merged: merged.sort() };
  } finally {
    file.close();
  }
}
