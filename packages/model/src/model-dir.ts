/**
 * A plain Hugging Face model directory written from a base model's directory and new weights:
 * what `merge` (base + folded adapter) and full fine-tuning (`train --full`: its output and
 * checkpoints) both write, and what `generate`, `serve`, transformers and vLLM load as a model.
 *
 *   weights        the base's file layout: one model.safetensors, or the same shards with an
 *                  index (its weight_map, and metadata.total_size recomputed); each tensor in the
 *                  base's dtype unless the caller gives another (checkpoints: F32 masters)
 *   config.json, generation_config.json    copied from the base
 *   tokenizer files                        from `tokenizerDir`
 *   chat_template.jinja                    the template trained with (when given)
 *   extra files                            training_args.json, metrics.jsonl, ... (when given)
 *
 * `writeModelDir` builds it beside `dir` and renames it into place (atomic-dir.ts).
 */
import { copyFileSync, existsSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { copyTokenizerFiles } from "./adapter-dir.ts";
import { INDEX_FILE, SINGLE_FILE, type WeightStore } from "./checkpoint.ts";
import { ModelFileError } from "./config.ts";
import { writeDirAtomically } from "./atomic-dir.ts";
import { float32ToBf16Array, float32ToF16Array } from "./half-floats.ts";
import { DTYPE_BYTES, type SafetensorsDtype, type TensorToWrite, writeSafetensors } from "./safetensors.ts";

export interface ModelDirContents {
  /** The base model directory (config.json, generation_config.json). */
  baseDir: string;
  /** The base's weights: the file layout, and the tensors `tensors` leaves out... */
  store: WeightStore;
  /** ...are replaced by these (every tensor of the store is written). */
  tensors: readonly TensorToWrite[];
  tokenizerDir: string;
  /** chat_template.jinja's text; null: none written. */
  chatTemplate: string | null;
  /** More files, name → text. */
  extraFiles?: Record<string, string>;
}

/** `values` (float32) as a tensor of `dtype` (F32, F16 or BF16). */
export function float32Tensor(name: string, dtype: SafetensorsDtype, shape: number[], values: Float32Array, where = name): TensorToWrite {
  switch (dtype) {
    case "F32": return { name, dtype: "F32", shape, data: values };
    case "BF16": return { name, dtype: "BF16", shape, data: float32ToBf16Array(values) };
    case "F16": return { name, dtype: "F16", shape, data: float32ToF16Array(values) };
    default: throw new ModelFileError(`${where}: tensor '${name}': dtype ${dtype} cannot be written from float32 (F32, F16, BF16)`);
  }
}

/**
 * The store's tensors with those named in `weights` replaced by its values, each stored in the
 * base's dtype (or `dtype` when given). A weight the store lacks is refused.
 */
export function tensorsWithWeights(store: WeightStore, weights: ReadonlyMap<string, Float32Array>, dtype?: "F32"): TensorToWrite[] {
  for (const name of weights.keys()) {
    if (!store.has(name)) throw new ModelFileError(`${store.dir}: no tensor '${name}' to replace`);
  }
  return store.names().map((name) => {
    const info = store.info(name);
    const w = weights.get(name);
    if (!w) return { name, dtype: info.dtype, shape: info.shape, data: store.raw(name) };
    const numel = info.shape.reduce((a, b) => a * b, 1);
    if (w.length !== numel) throw new ModelFileError(`${info.file}: tensor '${name}' has ${numel} values, the new weight ${w.length}`);
    return float32Tensor(name, dtype ?? info.dtype, info.shape, w, info.file);
  });
}

/** Writes the model directory's files into `dir` (which exists). */
export function writeModelFiles(dir: string, c: ModelDirContents): void {
  const byFile = new Map<string, TensorToWrite[]>();
  for (const t of c.tensors) {
    const file = c.store.has(t.name) ? basename(c.store.info(t.name).file) : SINGLE_FILE;
    byFile.set(file, [...(byFile.get(file) ?? []), t]);
  }
  for (const [file, tensors] of byFile) writeSafetensors(join(dir, file), tensors, { format: "pt" });
  if (existsSync(join(c.baseDir, INDEX_FILE)) || byFile.size > 1) {
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    for (const [file, tensors] of byFile) {
      for (const t of tensors) {
        weightMap[t.name] = file;
        totalSize += t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
      }
    }
    const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    writeFileSync(join(dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sorted }, null, 2) + "\n");
  }
  for (const name of ["config.json", "generation_config.json"]) {
    if (existsSync(join(c.baseDir, name))) copyFileSync(join(c.baseDir, name), join(dir, name));
  }
  copyTokenizerFiles(c.tokenizerDir, dir);
  if (c.chatTemplate !== null) writeFileSync(join(dir, "chat_template.jinja"), c.chatTemplate);
  for (const [name, text] of Object.entries(c.extraFiles ?? {})) writeFileSync(join(dir, name), text);
}

/** Writes the model directory atomically: built beside `dir`, renamed into place. */
export function writeModelDir(dir: string, c: ModelDirContents): void {
  writeDirAtomically(dir, (tmp) => writeModelFiles(tmp, c));
}
