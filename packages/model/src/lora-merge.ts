/**
 * An adapter folded into the base weights on the CPU, for the CPU reference engine and `merge`:
 *
 *   W' (out, in) = W + s·B·A        A (r, in), B (out, r), s = loraScaling (α/r, or α/√r with rsLoRA)
 *
 * computed in float32 and stored back in each tensor's own dtype.
 */
import { float32Tensor } from "./model-dir.ts";
import type { WeightStore } from "./checkpoint.ts";
import { AdapterFileError, type LoadedAdapter } from "./adapter-dir.ts";
import type { TensorToWrite } from "./safetensors.ts";

/** W (out, in) += s·B·A in float32, in place. */
export function addLoraDelta(W: Float32Array, A: Float32Array, B: Float32Array, scaling: number, outF: number, inF: number, r: number): Float32Array {
  if (W.length !== outF * inF || A.length !== r * inF || B.length !== outF * r) {
    throw new Error(`addLoraDelta: W ${W.length}, A ${A.length}, B ${B.length} values do not match out=${outF} in=${inF} r=${r}`);
  }
  for (let o = 0; o < outF; o++) {
    const row = W.subarray(o * inF, (o + 1) * inF);
    for (let k = 0; k < r; k++) {
      const b = Math.fround(scaling * B[o * r + k]!);
      if (b === 0) continue;
      const a = A.subarray(k * inF, (k + 1) * inF);
      for (let i = 0; i < inF; i++) row[i] = row[i]! + b * a[i]!;
    }
  }
  return W;
}

/** Folds every projection of `adapter` into float32 weights fetched (and cached) by `weightOf`. */
export function foldAdapter(adapter: LoadedAdapter, weightOf: (name: string) => Float32Array): void {
  for (const { spec, A, B } of adapter.weights) {
    addLoraDelta(weightOf(`${spec.base}.weight`), A, B, adapter.scaling, spec.outFeatures, spec.inFeatures, adapter.lora.rank);
  }
}

/**
 * Every tensor of the checkpoint, with each adapted projection replaced by W + s·B·A (computed in
 * float32, stored back in the tensor's own dtype). Unadapted tensors are views of the stored bytes.
 */
export function mergeAdapterWeights(store: WeightStore, adapter: LoadedAdapter): TensorToWrite[] {
  const byWeight = new Map(adapter.weights.map((w) => [`${w.spec.base}.weight`, w]));
  for (const name of byWeight.keys()) {
    if (!store.has(name)) throw new AdapterFileError(`${adapter.dir}: the adapter adapts '${name}', which the checkpoint in ${store.dir} lacks`);
  }
  return store.names().map((name): TensorToWrite => {
    const info = store.info(name);
    const w = byWeight.get(name);
    if (!w) return { name, dtype: info.dtype, shape: info.shape, data: store.raw(name) };
    const { outFeatures, inFeatures } = w.spec;
    if (info.shape[0] !== outFeatures || info.shape[1] !== inFeatures) {
      throw new AdapterFileError(`${info.file}: tensor '${name}': shape [${info.shape.join(", ")}], the adapter needs [${outFeatures}, ${inFeatures}]`);
    }
    const W = addLoraDelta(store.toFloat32(name), w.A, w.B, adapter.scaling, outFeatures, inFeatures, adapter.lora.rank);
    return float32Tensor(name, info.dtype, info.shape, W, info.file);
  });
}
