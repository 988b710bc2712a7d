// config.json → one typed ModelConfig for the Llama family (llama, qwen2, mistral).
//
// Two on-disk layouts exist: transformers 4 keeps `rope_theta` and `rope_scaling` at the top level;
// transformers 5 nests them in `rope_parameters` (with `rope_type`) and lists `layer_types`. Both are
// normalized here so that nothing downstream ever looks at raw JSON. Anything we cannot run
// faithfully (another architecture, another activation, an unknown RoPE variant) fails here, with
// the file and field named, instead of producing a silently wrong model later.
import { z } from "zod";
import { join } from "node:path";
import { existsSync, readFileSync } from "node:fs";

export const SUPPORTED_ARCHITECTURES = ["llama", "qwen2", "mistral"] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export type RopeScaling =
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
  | { type: "linear"; factor: number };

export type LayerType = "full_attention" | "sliding_attention";

export interface ModelConfig {
  arch: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** config `head_dim`, else hiddenSize / numHeads. */
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (always for qwen2; `attention_bias` for llama/mistral). */
  attentionBias: boolean;
  /** o_proj carries a bias (llama's `attention_bias` covers all four projections; qwen2's never does). */
  oProjBias: boolean;
  /** gate/up/down projections carry a bias (llama `mlp_bias`). */
  mlpBias: boolean;
  /** `torch_dtype` (transformers 4) or `dtype` (transformers 5), e.g. "bfloat16"; null when absent. */
  torchDtype: string | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
  /** Attention window for layers of type "sliding_attention"; null when no layer slides. */
  slidingWindow: number | null;
  /** One entry per layer: which layers use the sliding window. */
  layerTypes: LayerType[];
}

/** Thrown for any invalid model file; the message names the file and the field or tensor. */
export class ModelFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelFileError";
  }
}

const positiveInt = z.number().int().positive();
const tokenId = z.number().int().nonnegative();

/** RoPE fields as they appear in transformers-4 `rope_scaling` or transformers-5 `rope_parameters`. */
const ropeFieldsSchema = z.looseObject({
  rope_type: z.string().optional(),
  type: z.string().optional(),
  rope_theta: z.number().positive().optional(),
  factor: z.number().positive().optional(),
  low_freq_factor: z.number().positive().optional(),
  high_freq_factor: z.number().positive().optional(),
  original_max_position_embeddings: positiveInt.optional(),
});
type RopeFields = z.infer<typeof ropeFieldsSchema>;

const rawConfigSchema = z.looseObject({
  model_type: z.string(),
  hidden_size: positiveInt,
  intermediate_size: positiveInt,
  num_hidden_layers: positiveInt,
  num_attention_heads: positiveInt,
  num_key_value_heads: positiveInt.nullish(),
  head_dim: positiveInt.nullish(),
  vocab_size: positiveInt,
  rms_norm_eps: z.number().positive(),
  hidden_act: z.string().optional(),
  max_position_embeddings: positiveInt,
  rope_theta: z.number().positive().optional(),
  rope_scaling: ropeFieldsSchema.nullish(),
  rope_parameters: ropeFieldsSchema.nullish(),
  layer_types: z.array(z.enum(["full_attention", "sliding_attention"])).optional(),
  tie_word_embeddings: z.boolean().optional(),
  attention_bias: z.boolean().optional(),
  mlp_bias: z.boolean().optional(),
  torch_dtype: z.string().nullish(),
  dtype: z.string().nullish(),
  bos_token_id: tokenId.nullish(),
  eos_token_id: z.union([tokenId, z.array(tokenId)]).nullish(),
  pad_token_id: tokenId.nullish(),
  sliding_window: positiveInt.nullish(),
  use_sliding_window: z.boolean().optional(),
  max_window_layers: z.number().int().nonnegative().nullish(),
});
type RawConfig = z.infer<typeof rawConfigSchema>;

/** One line per zod issue: `file: field 'a.b': message`, with "missing" said plainly. */
export function formatZodIssues(source: string, error: z.ZodError): string {
  const lines = error.issues.map((issue) => {
    const field = issue.path.length ? issue.path.join(".") : "(root)";
    const missing = issue.code === "invalid_type" && /received undefined/.test(issue.message);
    return `${source}: field '${field}': ${missing ? `missing (${issue.message})` : issue.message}`;
  });
  return lines.join("\n");
}

function fail(source: string, field: string, why: string): never {
  throw new ModelFileError(`${source}: field '${field}': ${why}`);
}

/** Default RoPE theta of each architecture when a config omits it (transformers' class defaults). */
const DEFAULT_ROPE_THETA: Record<Architecture, number> = { llama: 10000, qwen2: 10000, mistral: 10000 };

function parseRope(raw: RawConfig, arch: Architecture, source: string): { ropeTheta: number; ropeScaling: RopeScaling | null } {
  const params = raw.rope_parameters;
  // transformers 5 may key rope_parameters by layer type (Gemma-style); the Llama family never does.
  if (params && ("full_attention" in params || "sliding_attention" in params))
    fail(source, "rope_parameters", "per-layer-type RoPE parameters are not supported for the Llama family");
  const fieldName = params ? "rope_parameters" : "rope_scaling";
  const scaling: RopeFields | null | undefined = params ?? raw.rope_scaling;
  const ropeTheta = params?.rope_theta ?? raw.rope_theta ?? DEFAULT_ROPE_THETA[arch];
  const kind = scaling?.rope_type ?? scaling?.type ?? "default";
  if (!scaling || kind === "default") return { ropeTheta, ropeScaling: null };
  const need = (key: keyof RopeFields): number => {
    const v = scaling[key];
    if (typeof v !== "number") fail(source, `${fieldName}.${String(key)}`, `missing (needed for rope_type '${kind}')`);
    return v;
  };
  if (kind === "linear") return { ropeTheta, ropeScaling: { type: "linear", factor: need("factor") } };
  if (kind === "llama3") {
    const ropeScaling: RopeScaling = {
      type: "llama3",
      factor: need("factor"),
      lowFreqFactor: need("low_freq_factor"),
      highFreqFactor: need("high_freq_factor"),
      originalMaxPositionEmbeddings: need("original_max_position_embeddings"),
    };
    if (ropeScaling.highFreqFactor <= ropeScaling.lowFreqFactor)
      fail(source, `${fieldName}.high_freq_factor`, "must be greater than low_freq_factor");
    return { ropeTheta, ropeScaling };
  }
  return fail(source, `${fieldName}.rope_type`, `unsupported RoPE type '${kind}' (supported: default, linear, llama3)`);
}

function parseLayerTypes(raw: RawConfig, arch: Architecture, source: string): { slidingWindow: number | null; layerTypes: LayerType[] } {
  const n = raw.num_hidden_layers;
  let window: number | null = null;
  if (arch === "mistral") window = raw.sliding_window ?? null;
  // qwen2 configs always carry sliding_window but only use it with use_sliding_window, from max_window_layers on.
  if (arch === "qwen2" && raw.use_sliding_window) window = raw.sliding_window ?? null;
  let layerTypes: LayerType[];
  if (raw.layer_types) {
    if (raw.layer_types.length !== n)
      fail(source, "layer_types", `has ${raw.layer_types.length} entries but num_hidden_layers is ${n}`);
    layerTypes = raw.layer_types;
    if (layerTypes.includes("sliding_attention")) {
      window = raw.sliding_window ?? null;
      if (window === null) fail(source, "sliding_window", "missing although layer_types has sliding_attention layers");
    } else window = null;
  } else if (window === null) {
    layerTypes = Array.from({ length: n }, () => "full_attention" as const);
  } else if (arch === "qwen2") {
    const first = raw.max_window_layers ?? 0;
    layerTypes = Array.from({ length: n }, (_, i) => (i >= first ? "sliding_attention" : "full_attention"));
  } else {
    layerTypes = Array.from({ length: n }, () => "sliding_attention" as const);
  }
  if (!layerTypes.includes("sliding_attention")) window = null;
  return { slidingWindow: window, layerTypes };
}

/** Validate and normalize a parsed config.json. `source` names the file in errors. */
export function parseModelConfig(json: unknown, source = "config.json"): ModelConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw new ModelFileError(`${source}: expected a JSON object`);
  const modelType = (json as Record<string, unknown>).model_type;
  if (typeof modelType !== "string") fail(source, "model_type", "missing (expected a string such as 'llama')");
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(modelType))
    throw new ModelFileError(
      `${source}: unsupported architecture model_type '${modelType}' (supported: ${SUPPORTED_ARCHITECTURES.join(", ")})`,
    );
  const arch = modelType as Architecture;
  const parsed = rawConfigSchema.safeParse(json);
  if (!parsed.success) throw new ModelFileError(formatZodIssues(source, parsed.error));
  const raw = parsed.data;

  if (raw.hidden_act !== undefined && raw.hidden_act !== "silu")
    fail(source, "hidden_act", `unsupported activation '${raw.hidden_act}' (supported: silu)`);
  const numHeads = raw.num_attention_heads;
  const numKvHeads = raw.num_key_value_heads ?? numHeads;
  if (numHeads % numKvHeads !== 0)
    fail(source, "num_key_value_heads", `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  let headDim = raw.head_dim ?? undefined;
  if (headDim === undefined) {
    if (raw.hidden_size % numHeads !== 0)
      fail(source, "head_dim", `missing, and hidden_size ${raw.hidden_size} is not divisible by num_attention_heads ${numHeads}`);
    headDim = raw.hidden_size / numHeads;
  }
  if (headDim % 2 !== 0) fail(source, "head_dim", `${headDim} must be even for RoPE`);

  const { ropeTheta, ropeScaling } = parseRope(raw, arch, source);
  const { slidingWindow, layerTypes } = parseLayerTypes(raw, arch, source);
  const eos = raw.eos_token_id;
  // Bias layout is fixed by each modeling file: qwen2 has q/k/v bias only, mistral none, llama as configured.
  const attentionBias = arch === "qwen2" ? true : arch === "mistral" ? false : (raw.attention_bias ?? false);
  return {
    arch,
    hiddenSize: raw.hidden_size,
    intermediateSize: raw.intermediate_size,
    numLayers: raw.num_hidden_layers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: raw.vocab_size,
    rmsNormEps: raw.rms_norm_eps,
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: raw.max_position_embeddings,
    tieWordEmbeddings: raw.tie_word_embeddings ?? false,
    attentionBias,
    oProjBias: arch === "llama" ? (raw.attention_bias ?? false) : false,
    mlpBias: arch === "llama" ? (raw.mlp_bias ?? false) : false,
    torchDtype: raw.torch_dtype ?? raw.dtype ?? null,
    bosTokenId: raw.bos_token_id ?? null,
    eosTokenIds: eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos],
    padTokenId: raw.pad_token_id ?? null,
    slidingWindow,
    layerTypes,
  };
}

/** Read and parse `<dir>/config.json`. */
export function loadModelConfig(dir: string): ModelConfig {
  const path = join(dir, "config.json");
  if (!existsSync(path)) throw new ModelFileError(`${path}: not found (a model directory needs config.json)`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new ModelFileError(`${path}: invalid JSON (${(e as Error).message})`);
  }
  return parseModelConfig(json, path);
}

const ARCHITECTURE_CLASS: Record<Architecture, string> = {
  llama: "LlamaForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  mistral: "MistralForCausalLM",
};

/**
 * ModelConfig → a transformers-4-style config.json object (what `save_pretrained` writes), so that
 * the tiny model and merged models load in transformers, vLLM and llama.cpp's converter.
 * parseModelConfig(toTransformersConfig(c)) deep-equals c.
 */
export function toTransformersConfig(cfg: ModelConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: [ARCHITECTURE_CLASS[cfg.arch]],
    model_type: cfg.arch,
    hidden_act: "silu",
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    vocab_size: cfg.vocabSize,
    rms_norm_eps: cfg.rmsNormEps,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    rope_theta: cfg.ropeTheta,
    rope_scaling: ropeScalingToJson(cfg.ropeScaling),
    tie_word_embeddings: cfg.tieWordEmbeddings,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds,
    pad_token_id: cfg.padTokenId,
    initializer_range: 0.02,
    attention_dropout: 0.0,
    use_cache: true,
    torch_dtype: cfg.torchDtype ?? "float32",
  };
  if (cfg.arch === "llama") {
    if (cfg.attentionBias !== cfg.oProjBias) throw new Error("llama's attention_bias covers q/k/v and o_proj together");
    out.attention_bias = cfg.attentionBias;
    out.mlp_bias = cfg.mlpBias;
    out.pretraining_tp = 1;
  } else if (cfg.arch === "mistral") {
    out.sliding_window = cfg.slidingWindow;
  } else {
    const sliding = cfg.layerTypes.findIndex((t) => t === "sliding_attention");
    out.use_sliding_window = sliding >= 0;
    out.sliding_window = cfg.slidingWindow;
    out.max_window_layers = sliding >= 0 ? sliding : cfg.numLayers;
  }
  // transformers-4 fields cannot express every per-layer pattern (transformers 5 can): add
  // layer_types (and the window) whenever the fields above would be read back differently.
  const derived = parseModelConfig(out, "(serialized config)").layerTypes;
  if (derived.some((t, i) => t !== cfg.layerTypes[i])) {
    out.layer_types = cfg.layerTypes;
    out.sliding_window = cfg.slidingWindow;
  }
  return out;
}

function ropeScalingToJson(s: RopeScaling | null): Record<string, unknown> | null {
  if (s === null) return null;
  if (s.type === "linear") return { rope_type: "linear", factor: s.factor };
  return {
    rope_type: "llama3",
    factor: s.factor,
    low_freq_factor: s.lowFreqFactor,
    high_freq_factor: s.highFreqFactor,
    original_max_position_embeddings: s.originalMaxPositionEmbeddings,
  };
}
