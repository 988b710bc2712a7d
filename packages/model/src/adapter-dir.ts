/**
 * The adapter directory, read and written in one place: what PEFT's `save_pretrained` writes for
 * a LoRA, plus what serving needs to render prompts exactly as training did.
 *
 *   adapter_config.json         PEFT 0.13 LoraConfig, keys sorted, indent 2 (PEFT ≥ 0.13, vLLM, llama.cpp read it)
 *   adapter_model.safetensors   base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_A.weight (r, in) / lora_B.weight (out, r)
 *   chat_template.jinja         the exact template bytes trained with
 *   training_args.json          every hyperparameter + chat_template_sha256
 *   tokenizer files             copied from the model directory
 *   metrics.jsonl, loss_curve.svg
 *
 * Reading accepts F32, F16 and BF16 tensors and only what plain LoRA on linear layers can
 * express; anything else PEFT can write (DoRA, trained biases, per-module ranks, fan-in-fan-out
 * storage) is refused by name. Against a model config, every key and shape is checked before
 * anything is used, and every problem is listed in one AdapterFileError naming the file and key.
 * Writes are atomic at directory level (atomic-dir.ts).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { templateSha256 } from "@tuneloom/chat-template";
import { writeDirAtomically } from "./atomic-dir.ts";
import { bf16ToFloat32Array, f16ToFloat32Array } from "./half-floats.ts";
import type { ModelConfig } from "./config.ts";
import {
  LORA_TARGETS, LORA_TARGET_PARENT, loraLayerSpecs, loraModuleBase, loraProjectionShape, loraScaling, loraSpecOrder, normalizeTargetModules,
  type LoraConfig, type LoraLayerSpec, type LoraTarget, type LoraWeights,
} from "./lora-config.ts";
import { gaussianSampler } from "./tiny-model.ts";
import { openSafetensors, writeSafetensors, type TensorToWrite } from "./safetensors.ts";

export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
export const CHAT_TEMPLATE_FILE = "chat_template.jinja";
export const TRAINING_ARGS_FILE = "training_args.json";
export const METRICS_FILE = "metrics.jsonl";
export const LOSS_CURVE_FILE = "loss_curve.svg";
/** Copied from the model directory when present. */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "tokenizer.model",
  "vocab.json",
  "merges.txt",
] as const;

/** Thrown for an unreadable or inconsistent adapter; the message names the file and the key. */
export class AdapterFileError extends Error {
  override readonly name = "AdapterFileError";
}

/** `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`. */
export function loraTensorName(spec: Pick<LoraLayerSpec, "base">, which: "A" | "B"): string {
  return `base_model.model.${spec.base}.lora_${which}.weight`;
}

const LORA_KEY = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)\.weight$/;

// ---------------------------------------------------------------------------------------------
// Writing

/** JSON with object keys sorted at every level, as Python's json.dumps(sort_keys=True, indent=2). */
export function sortedJson(value: unknown): string {
  const sortKeys = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sortKeys);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
    }
    return v;
  };
  return JSON.stringify(sortKeys(value), null, 2);
}

/**
 * adapter_config.json as PEFT 0.13's LoraConfig serializes for a causal LM. Only keys PEFT 0.13
 * knows are written, so every PEFT from 0.13 on loads it (older ones reject unknown keys).
 */
export function peftAdapterConfig(lora: LoraConfig, baseModelNameOrPath: string): Record<string, unknown> {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: baseModelNameOrPath,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: lora.alpha,
    lora_dropout: lora.dropout,
    megatron_config: null,
    megatron_core: "megatron.core",
    modules_to_save: null,
    peft_type: "LORA",
    r: lora.rank,
    rank_pattern: {},
    revision: null,
    target_modules: [...lora.targetModules],
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: lora.rslora,
  };
}

export interface AdapterContents {
  /** `base_model_name_or_path`: the model directory as the user gave it. */
  baseModel: string;
  lora: LoraConfig;
  weights: readonly LoraWeights[];
  /** Exact template source trained with. */
  chatTemplate: string;
  /** Hyperparameters; `chat_template_sha256` is added. */
  trainingArgs: Record<string, unknown>;
  /** Copy tokenizer files from here (the model directory). */
  tokenizerDir?: string;
  /** metrics.jsonl text. */
  metricsJsonl?: string;
  lossCurveSvg?: string;
}

/** The weights as safetensors tensors, sorted by the writer. Shapes are checked against the rank. */
export function adapterTensors(weights: readonly LoraWeights[], rank: number): TensorToWrite[] {
  const tensors: TensorToWrite[] = [];
  for (const { spec, A, B } of weights) {
    if (A.length !== rank * spec.inFeatures) throw new Error(`${spec.base}: lora_A has ${A.length} values, expected r×in = ${rank}×${spec.inFeatures}`);
    if (B.length !== spec.outFeatures * rank) throw new Error(`${spec.base}: lora_B has ${B.length} values, expected out×r = ${spec.outFeatures}×${rank}`);
    tensors.push({ name: loraTensorName(spec, "A"), dtype: "F32", shape: [rank, spec.inFeatures], data: A });
    tensors.push({ name: loraTensorName(spec, "B"), dtype: "F32", shape: [spec.outFeatures, rank], data: B });
  }
  return tensors;
}

/** Writes every adapter file into `dir` (created if missing). Not atomic: see writeAdapterDir. */
export function writeAdapterFiles(dir: string, contents: AdapterContents): string[] {
  mkdirSync(dir, { recursive: true });
  const written: string[] = [];
  const put = (name: string, text: string) => {
    writeFileSync(path.join(dir, name), text);
    written.push(name);
  };
  put(ADAPTER_CONFIG_FILE, sortedJson(peftAdapterConfig(contents.lora, contents.baseModel)));
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_FILE), adapterTensors(contents.weights, contents.lora.rank), { format: "pt" });
  written.push(ADAPTER_WEIGHTS_FILE);
  put(CHAT_TEMPLATE_FILE, contents.chatTemplate);
  put(TRAINING_ARGS_FILE, JSON.stringify({ ...contents.trainingArgs, chat_template_sha256: templateSha256(contents.chatTemplate) }, null, 2) + "\n");
  if (contents.tokenizerDir) written.push(...copyTokenizerFiles(contents.tokenizerDir, dir));
  if (contents.metricsJsonl !== undefined) put(METRICS_FILE, contents.metricsJsonl);
  if (contents.lossCurveSvg !== undefined) put(LOSS_CURVE_FILE, contents.lossCurveSvg);
  return written;
}

/** Copies the TOKENIZER_FILES that `from` has into `to`; returns their names. */
export function copyTokenizerFiles(from: string, to: string): string[] {
  const copied: string[] = [];
  for (const name of TOKENIZER_FILES) {
    if (!existsSync(path.join(from, name))) continue;
    copyFileSync(path.join(from, name), path.join(to, name));
    copied.push(name);
  }
  return copied;
}

/** Writes a complete adapter directory atomically. */
export function writeAdapterDir(dir: string, contents: AdapterContents): void {
  writeDirAtomically(dir, (tmp) => void writeAdapterFiles(tmp, contents));
}

// ---------------------------------------------------------------------------------------------
// Reading

export interface LoadedAdapter {
  dir: string;
  /** adapter_config.json as stored. */
  rawConfig: Record<string, unknown>;
  lora: LoraConfig;
  /** s = α/r or α/√r. */
  scaling: number;
  baseModel: string | null;
  /** The adapted projections, canonical order (against a model: the same in every layer). */
  targets: LoraTarget[];
  /** Canonical order: layer by layer, modules q, k, v, o, gate, up, down. */
  weights: LoraWeights[];
  /** chat_template.jinja, when the adapter carries one. */
  chatTemplate: string | null;
  trainingArgs: Record<string, unknown> | null;
}

// Keys whose other values PEFT can write but plain LoRA on linear layers cannot express.
const UNSUPPORTED: Record<string, string> = {
  use_dora: "DoRA is not supported",
  bias: 'trained biases are not supported (only bias: "none")',
  fan_in_fan_out: "fan_in_fan_out storage is not supported",
  modules_to_save: "modules_to_save is not supported",
  layers_to_transform: "layers_to_transform is not supported",
  rank_pattern: "per-module ranks are not supported",
  alpha_pattern: "per-module alphas are not supported",
};
const emptyRecord = z.record(z.string(), z.unknown()).nullish().refine((r) => !r || Object.keys(r).length === 0);
const adapterConfigSchema = z.looseObject({
  peft_type: z.literal("LORA"),
  r: z.number().int().positive(),
  lora_alpha: z.number().positive(),
  lora_dropout: z.number().min(0).lt(1).default(0),
  target_modules: z.union([z.array(z.string()).min(1), z.string()]),
  use_rslora: z.boolean().nullish(),
  use_dora: z.literal(false).nullish(),
  bias: z.literal("none").nullish(),
  fan_in_fan_out: z.literal(false).nullish(),
  modules_to_save: z.array(z.string()).max(0).nullish(),
  layers_to_transform: z.null().optional(),
  rank_pattern: emptyRecord,
  alpha_pattern: emptyRecord,
  base_model_name_or_path: z.string().nullish(),
});

function readJsonFile(file: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    throw new AdapterFileError(`${file}: not found${what}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new AdapterFileError(`${file}: invalid JSON (${(e as Error).message})`);
  }
}

/** adapter_config.json → LoraConfig; `allLinear` when target_modules is PEFT's "all-linear". */
function parseAdapterConfig(file: string, json: unknown): { lora: LoraConfig; allLinear: boolean; baseModel: string | null } {
  const parsed = adapterConfigSchema.safeParse(json, { reportInput: true });
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = issue.path.join(".") || "(root)";
    const got = (issue as { input?: unknown }).input;
    const gotText = got !== undefined ? ` (got ${JSON.stringify(got)})` : "";
    const unsupported = UNSUPPORTED[String(issue.path[0])];
    throw new AdapterFileError(
      `${file}: ${key}: ${unsupported ? `unsupported value ${JSON.stringify(got)}: ${unsupported} (only plain LoRA on linear layers)` : `${issue.message}${gotText}`}`,
    );
  }
  const c = parsed.data;
  const names = typeof c.target_modules === "string" ? [c.target_modules] : c.target_modules;
  // PEFT accepts suffixes like "self_attn.q_proj"; the last component names the module.
  const shortNames = names.map((m) => m.split(".").at(-1)!);
  const allLinear = shortNames.length === 1 && shortNames[0] === "all-linear";
  if (typeof c.target_modules === "string" && !allLinear) {
    throw new AdapterFileError(`${file}: target_modules: a regex ("${c.target_modules}") is not supported; list the module names`);
  }
  let targetModules: LoraTarget[];
  try {
    targetModules = normalizeTargetModules(shortNames);
  } catch (e) {
    throw new AdapterFileError(`${file}: target_modules: ${(e as Error).message}`);
  }
  return {
    lora: { rank: c.r, alpha: c.lora_alpha, dropout: c.lora_dropout, targetModules, rslora: c.use_rslora ?? false },
    allLinear,
    baseModel: c.base_model_name_or_path ?? null,
  };
}

function toFloat32(file: string, name: string, dtype: string, bytes: Uint8Array): Float32Array {
  const copy = bytes.slice(); // aligned, and detached from the memory map
  switch (dtype) {
    case "F32": return new Float32Array(copy.buffer, 0, copy.byteLength / 4);
    case "F16": return f16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.byteLength / 2));
    case "BF16": return bf16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.byteLength / 2));
    default: throw new AdapterFileError(`${file}: tensor '${name}': dtype ${dtype} is not supported (F32, F16, BF16)`);
  }
}

const shapeText = (shape: readonly number[]) => `[${shape.join(", ")}]`;

/**
 * Reads an adapter directory. With `model`, every tensor is checked against it: a known
 * projection of an existing layer, A (r, in) and B (out, r) with the model's in/out, and every
 * layer adapting every module of target_modules (the GPU forward needs the same modules in
 * every layer). Every problem is listed in one AdapterFileError.
 */
export function readAdapterDir(dir: string, model?: ModelConfig): LoadedAdapter {
  const configFile = path.join(dir, ADAPTER_CONFIG_FILE);
  const rawConfig = readJsonFile(configFile, ` (an adapter directory needs ${ADAPTER_CONFIG_FILE})`) as Record<string, unknown>;
  const { lora, allLinear, baseModel } = parseAdapterConfig(configFile, rawConfig);
  const r = lora.rank;

  const weightsFile = path.join(dir, ADAPTER_WEIGHTS_FILE);
  if (!existsSync(weightsFile)) {
    const bin = existsSync(path.join(dir, "adapter_model.bin"));
    throw new AdapterFileError(`${weightsFile}: not found${bin ? " (adapter_model.bin, pickled PyTorch, is not supported: re-save with safe_serialization=True)" : ""}`);
  }
  const st = openSafetensors(weightsFile);
  const problems: string[] = [];
  const found = new Map<string, { layer: number; module: LoraTarget; A?: Float32Array; B?: Float32Array; aShape?: number[]; bShape?: number[] }>();
  try {
    for (const [name, info] of st.tensors) {
      const m = LORA_KEY.exec(name);
      if (!m) {
        problems.push(`unexpected tensor '${name}' (expected base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight)`);
        continue;
      }
      const layer = Number(m[1]);
      const module = m[3] as LoraTarget;
      if (!(LORA_TARGETS as readonly string[]).includes(module) || LORA_TARGET_PARENT[module] !== m[2]) {
        problems.push(`tensor '${name}': ${m[2]}.${m[3]} is not a projection LoRA can adapt`);
        continue;
      }
      if (!allLinear && !lora.targetModules.includes(module)) problems.push(`tensor '${name}': ${module} is not in target_modules of ${configFile}`);
      const key = loraModuleBase(layer, module);
      const entry = found.get(key) ?? { layer, module };
      const values = toFloat32(weightsFile, name, info.dtype, st.bytes(name));
      if (m[4] === "A") [entry.A, entry.aShape] = [values, info.shape];
      else [entry.B, entry.bShape] = [values, info.shape];
      found.set(key, entry);
    }
  } finally {
    st.close();
  }

  const weights: LoraWeights[] = [];
  for (const [base, e] of found) {
    if (!e.A || !e.B) {
      problems.push(`'${base}' has lora_${e.A ? "A" : "B"} but no lora_${e.A ? "B" : "A"}`);
      continue;
    }
    const aName = `base_model.model.${base}.lora_A.weight`, bName = `base_model.model.${base}.lora_B.weight`;
    if (model && e.layer >= model.numLayers) {
      problems.push(`tensor '${aName}': layer ${e.layer} does not exist (the model has ${model.numLayers} layers)`);
      continue;
    }
    const want = model ? loraProjectionShape(model, e.module) : null;
    const [aR, inF] = e.aShape!, [outF, bR] = e.bShape!;
    const wantIn = want ? String(want.inFeatures) : "in", wantOut = want ? String(want.outFeatures) : "out";
    let ok = true;
    if (e.aShape!.length !== 2 || aR !== r) {
      problems.push(`tensor '${aName}': shape ${shapeText(e.aShape!)}, expected [${r}, ${wantIn}] ([r, in] with r=${r} from ${ADAPTER_CONFIG_FILE})`);
      ok = false;
    } else if (want && inF !== want.inFeatures) {
      problems.push(`tensor '${aName}': shape ${shapeText(e.aShape!)}, the model needs [${r}, ${want.inFeatures}]`);
      ok = false;
    }
    if (e.bShape!.length !== 2 || bR !== r) {
      problems.push(`tensor '${bName}': shape ${shapeText(e.bShape!)}, expected [${wantOut}, ${r}] ([out, r] with r=${r} from ${ADAPTER_CONFIG_FILE})`);
      ok = false;
    } else if (want && outF !== want.outFeatures) {
      problems.push(`tensor '${bName}': shape ${shapeText(e.bShape!)}, the model needs [${want.outFeatures}, ${r}]`);
      ok = false;
    }
    if (ok) weights.push({ spec: { layer: e.layer, module: e.module, base, inFeatures: inF!, outFeatures: outF! }, A: e.A, B: e.B });
  }
  // "all-linear" names whatever the file adapts; an explicit list must be adapted everywhere.
  const targets = allLinear ? LORA_TARGETS.filter((t) => [...found.values()].some((e) => e.module === t)) : lora.targetModules;
  if (model && found.size > 0) {
    for (let layer = 0; layer < model.numLayers; layer++) {
      for (const module of targets) {
        const base = loraModuleBase(layer, module);
        if (!found.has(base)) problems.push(`missing 'base_model.model.${base}.lora_A.weight' / lora_B (every layer must adapt ${module}: target_modules lists it)`);
      }
    }
  }
  if (found.size === 0 && problems.length === 0) problems.push("no LoRA tensors");
  if (problems.length > 0) {
    const shown = problems.slice(0, 20);
    throw new AdapterFileError(
      `${weightsFile}: ${problems.length} problem(s) against ${configFile}${model ? " and the model config" : ""}: ` +
        shown.join("; ") + (problems.length > shown.length ? `; ... and ${problems.length - shown.length} more` : ""),
    );
  }
  weights.sort((a, b) => loraSpecOrder(a.spec) - loraSpecOrder(b.spec));

  const templateFile = path.join(dir, CHAT_TEMPLATE_FILE);
  const argsFile = path.join(dir, TRAINING_ARGS_FILE);
  return {
    dir,
    rawConfig,
    lora: allLinear ? { ...lora, targetModules: targets } : lora,
    scaling: loraScaling(lora),
    baseModel,
    targets,
    weights,
    chatTemplate: existsSync(templateFile) ? readFileSync(templateFile, "utf8") : null,
    trainingArgs: existsSync(argsFile) ? (readJsonFile(argsFile, "") as Record<string, unknown>) : null,
  };
}

/**
 * A random adapter in memory (benchmarks and tests, no files): A and B Gaussian with standard
 * deviation `amp` (seeded), the given rank, α and targets, every layer of `model`.
 */
export function randomLoadedAdapter(
  model: ModelConfig, o: { rank: number; alpha?: number; targets: readonly LoraTarget[]; seed: number; amp?: number; name?: string },
): LoadedAdapter {
  const lora: LoraConfig = { rank: o.rank, alpha: o.alpha ?? 2 * o.rank, dropout: 0, targetModules: [...o.targets], rslora: false };
  const gauss = gaussianSampler(o.seed), amp = o.amp ?? 0.5;
  const rand = (n: number) => Float32Array.from({ length: n }, () => amp * gauss());
  const weights = loraLayerSpecs(model, lora).map((spec) => ({ spec, A: rand(o.rank * spec.inFeatures), B: rand(spec.outFeatures * o.rank) }));
  const targets = LORA_TARGETS.filter((t) => o.targets.includes(t));
  return {
    dir: o.name ?? `random-adapter-${o.seed}`, rawConfig: peftAdapterConfig(lora, "random"), lora, scaling: loraScaling(lora), baseModel: null,
    targets, weights, chatTemplate: null, trainingArgs: null,
  };
}
