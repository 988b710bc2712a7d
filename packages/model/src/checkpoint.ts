// A model directory's weights: `model.safetensors`, or `model.safetensors.index.json` + shards,
// behind one WeightStore. Like nanoGPT's from_pretrained, `expectTensors` compares the checkpoint
// against what the config implies and reports every missing key and shape mismatch at once.
import { existsSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { ModelFileError, type ModelConfig } from "./config.ts";
import { openSafetensors, type SafetensorsDtype, type SafetensorsFile } from "./safetensors.ts";
import { bf16ToFloat32Array, f16ToFloat32Array } from "./half-floats.ts";

export interface TensorSpec {
  name: string;
  shape: number[];
}

export interface WeightInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Path of the safetensors file holding the tensor. */
  file: string;
  /** Stored size in bytes. */
  byteLength: number;
}

export interface WeightStore {
  dir: string;
  /** Every tensor name, sorted. */
  names(): string[];
  has(name: string): boolean;
  info(name: string): WeightInfo;
  /** A fresh copy of the stored bytes. */
  raw(name: string): Uint8Array;
  /** Reads `dst.length` stored bytes of the tensor, from `tensorByteOffset` within it (streaming large tensors in chunks). */
  readInto(name: string, dst: Uint8Array, tensorByteOffset?: number): void;
  /** readInto on I/O threads, so several reads can be in flight (SafetensorsFile.readIntoAsync). */
  readIntoAsync(name: string, dst: Uint8Array, tensorByteOffset?: number): Promise<void>;
  /** A fresh Float32Array of the tensor's values, widened from F32, F16 or BF16. */
  toFloat32(name: string): Float32Array;
  /** Throws one ModelFileError listing every missing tensor and shape mismatch. */
  expectTensors(expected: readonly TensorSpec[], options?: { allowUnexpected?: boolean }): void;
  close(): void;
}

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

/**
 * Tensor names and shapes (PyTorch Linear layout: (out_features, in_features)) implied by a config.
 * lm_head.weight is absent when the embeddings are tied.
 */
export function expectedTensors(cfg: ModelConfig): TensorSpec[] {
  const C = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const I = cfg.intermediateSize;
  const out: TensorSpec[] = [{ name: "model.embed_tokens.weight", shape: [cfg.vocabSize, C] }];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [C] });
    out.push({ name: `${p}.self_attn.q_proj.weight`, shape: [qDim, C] });
    out.push({ name: `${p}.self_attn.k_proj.weight`, shape: [kvDim, C] });
    out.push({ name: `${p}.self_attn.v_proj.weight`, shape: [kvDim, C] });
    out.push({ name: `${p}.self_attn.o_proj.weight`, shape: [C, qDim] });
    if (cfg.attentionBias) {
      out.push({ name: `${p}.self_attn.q_proj.bias`, shape: [qDim] });
      out.push({ name: `${p}.self_attn.k_proj.bias`, shape: [kvDim] });
      out.push({ name: `${p}.self_attn.v_proj.bias`, shape: [kvDim] });
    }
    if (cfg.oProjBias) out.push({ name: `${p}.self_attn.o_proj.bias`, shape: [C] });
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [C] });
    out.push({ name: `${p}.mlp.gate_proj.weight`, shape: [I, C] });
    out.push({ name: `${p}.mlp.up_proj.weight`, shape: [I, C] });
    out.push({ name: `${p}.mlp.down_proj.weight`, shape: [C, I] });
    if (cfg.mlpBias) {
      out.push({ name: `${p}.mlp.gate_proj.bias`, shape: [I] });
      out.push({ name: `${p}.mlp.up_proj.bias`, shape: [I] });
      out.push({ name: `${p}.mlp.down_proj.bias`, shape: [C] });
    }
  }
  out.push({ name: "model.norm.weight", shape: [C] });
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, C] });
  return out;
}

function readIndex(indexPath: string): Record<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(indexPath, "utf8"));
  } catch (e) {
    throw new ModelFileError(`${indexPath}: invalid JSON (${(e as Error).message})`);
  }
  const weightMap = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap))
    throw new ModelFileError(`${indexPath}: field 'weight_map': missing or not an object of tensor name → shard file`);
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string") throw new ModelFileError(`${indexPath}: field 'weight_map.${name}': not a file name`);
    // Shards live beside the index; a path could read files outside the model directory.
    if (basename(shard) !== shard || shard === "." || shard === "..")
      throw new ModelFileError(`${indexPath}: field 'weight_map.${name}': shard '${shard}' must be a plain file name`);
  }
  return weightMap as Record<string, string>;
}

/** Open the weights of a Hugging Face model directory (sharded or not), validating every file's header. */
export function openCheckpoint(dir: string): WeightStore {
  const indexPath = join(dir, INDEX_FILE);
  const singlePath = join(dir, SINGLE_FILE);
  const location = new Map<string, SafetensorsFile>();
  const files: SafetensorsFile[] = [];
  if (existsSync(indexPath)) {
    const weightMap = readIndex(indexPath);
    const shardNames = [...new Set(Object.values(weightMap))].sort();
    const missingShards = shardNames.filter((s) => !existsSync(join(dir, s)));
    if (missingShards.length)
      throw new ModelFileError(`${indexPath}: shard file(s) listed in weight_map not found in ${dir}: ${missingShards.join(", ")}`);
    const byShard = new Map<string, SafetensorsFile>();
    for (const s of shardNames) {
      const f = openSafetensors(join(dir, s));
      byShard.set(s, f);
      files.push(f);
    }
    const misplaced: string[] = [];
    for (const [name, shard] of Object.entries(weightMap)) {
      const f = byShard.get(shard)!;
      if (!f.tensors.has(name)) misplaced.push(`'${name}' (index says ${shard})`);
      else location.set(name, f);
    }
    if (misplaced.length)
      throw new ModelFileError(`${indexPath}: ${misplaced.length} tensor(s) not in the shard the index names: ${misplaced.join(", ")}`);
  } else if (existsSync(singlePath)) {
    const f = openSafetensors(singlePath);
    files.push(f);
    for (const name of f.tensors.keys()) location.set(name, f);
  } else {
    throw new ModelFileError(`${dir}: no weights found (expected ${SINGLE_FILE} or ${INDEX_FILE})`);
  }

  const fileOf = (name: string): SafetensorsFile => {
    const f = location.get(name);
    if (!f) throw new ModelFileError(`${dir}: no tensor named '${name}' in the checkpoint`);
    return f;
  };
  const describe = files.length === 1 ? files[0]!.path : `${indexPath} (${files.length} shards)`;

  return {
    dir,
    names: () => [...location.keys()].sort(),
    has: (name) => location.has(name),
    info(name) {
      const f = fileOf(name);
      const t = f.tensors.get(name)!;
      return { dtype: t.dtype, shape: [...t.shape], file: f.path, byteLength: t.byteLength };
    },
    raw: (name) => fileOf(name).bytes(name),
    readInto: (name, dst, tensorByteOffset) => fileOf(name).readInto(name, dst, tensorByteOffset),
    readIntoAsync: (name, dst, tensorByteOffset) => {
      try {
        return fileOf(name).readIntoAsync(name, dst, tensorByteOffset);
      } catch (e) {
        return Promise.reject(e);
      }
    },
    toFloat32(name) {
      const f = fileOf(name);
      const { dtype } = f.tensors.get(name)!;
      const copy = f.bytes(name); // a fresh, aligned copy: callers may mutate the result
      switch (dtype) {
        case "F32":
          return new Float32Array(copy.buffer, 0, copy.length / 4);
        case "BF16":
          return bf16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.length / 2));
        case "F16":
          return f16ToFloat32Array(new Uint16Array(copy.buffer, 0, copy.length / 2));
        default:
          throw new ModelFileError(`${f.path}: tensor '${name}' has dtype ${dtype}; only F32, F16 and BF16 convert to float32`);
      }
    },
    expectTensors(expected, options = {}) {
      const problems: string[] = [];
      const wanted = new Set<string>();
      for (const { name, shape } of expected) {
        wanted.add(name);
        const f = location.get(name);
        if (!f) {
          problems.push(`missing tensor '${name}' (expected shape [${shape.join(", ")}])`);
          continue;
        }
        const actual = f.tensors.get(name)!.shape;
        if (actual.length !== shape.length || actual.some((d, i) => d !== shape[i]))
          problems.push(`shape mismatch for '${name}': ${f.path} has [${actual.join(", ")}], config implies [${shape.join(", ")}]`);
      }
      if (options.allowUnexpected === false) {
        for (const name of location.keys()) if (!wanted.has(name)) problems.push(`unexpected tensor '${name}' in ${location.get(name)!.path}`);
      }
      if (problems.length)
        throw new ModelFileError(`${describe}: ${problems.length} problem(s) with the weights:\n  ${problems.join("\n  ")}`);
    },
    close() {
      for (const f of files) f.close();
    },
  };
}
