/**
 * A PEFT LoRA adapter on the GPU: one LayerLora per layer, for the forward that adds
 * s·(x·Aᵀ)·Bᵀ to each adapted projection. Reading and checking the directory is adapter-dir.ts.
 */
import { Tensor } from "@tuneloom/kernels";
import { type LoadedAdapter, readAdapterDir } from "../adapter-dir.ts";
import type { LayerLora } from "./lora.ts";
import type { GpuModel } from "./model.ts";

/**
 * Uploads the adapter's A and B (f32) for `model`'s forward: one LayerLora per layer. Each
 * layer's A's go back to back into one buffer in module order where every A is a whole number
 * of binding alignments, so q/k/v and gate/up run their LoRA as one product each (lora.ts).
 */
export function uploadAdapter(model: GpuModel, adapter: LoadedAdapter): LayerLora[] {
  const rt = model.rt, r = adapter.lora.rank;
  const align = rt.caps.limits.minStorageBufferOffsetAlignment;
  const lora: LayerLora[] = Array.from({ length: model.cfg.numLayers }, () => ({}));
  for (let layer = 0; layer < model.cfg.numLayers; layer++) {
    const mods = adapter.weights.filter((w) => w.spec.layer === layer).map((w) => ({ ...w.spec, A: w.A, B: w.B })); // in LORA_TARGETS order
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
      lora[layer]![m.module] = { A, B: rt.upload("f32", [m.outFeatures, r], m.B, `${m.base}.lora_B`), scaling: adapter.scaling };
    }
  }
  return lora;
}

/** readAdapterDir (checked against the model) + uploadAdapter. */
export function loadGpuAdapter(model: GpuModel, dir: string): LayerLora[] {
  return uploadAdapter(model, readAdapterDir(dir, model.cfg));
}

/** Frees what uploadAdapter allocated (a stacked A buffer once, through its view at offset 0). */
export function releaseAdapter(model: GpuModel, lora: readonly LayerLora[]) {
  for (const layer of lora) for (const m of Object.values(layer)) if (m) model.rt.release(m.A, m.B);
}
