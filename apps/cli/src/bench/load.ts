/**
 * `bun run bench -- --load --model DIR|NAME [--weight-dtype f16|bf16|f32] [--repeat N]`: loads a model's
 * weights onto the GPU (GpuModel.load: positioned reads, 4×64 MiB staging ring, conversions on the GPU)
 * and prints one line per load: seconds, GB read, GB/s, the GPU conversions and any underflow.
 * DIR is a Hugging Face model directory; a NAME (smollm2-135m, ...) writes that benchmark model first.
 * Repeats after the first read the file from the page cache: the first line of a fresh file is the cold one.
 */
import { formatUnderflow, GpuModel, type WeightDtype } from "@tuneloom/model";
import { benchModelDir } from "./model-shapes.ts";

export async function benchLoad(o: { model: string; weightDtype?: WeightDtype; repeat: number }, out: (line: object) => void) {
  const { dir, cleanup } = benchModelDir(o.model, "tuneloom-bench-load-");
  try {
    for (let i = 0; i < o.repeat; i++) {
      const model = await GpuModel.load(dir, { weightDtype: o.weightDtype });
      const r = model.loadReport;
      out({
        op: "load", model: o.model, weights: model.weights.dtype, load_s: Math.round(r.seconds * 1000) / 1000,
        gb: Math.round(r.bytes / 1e7) / 100, gb_s: Math.round((r.bytes / 1e9 / r.seconds) * 100) / 100, tensors: r.tensors,
        read_s: Math.round(r.readSeconds * 1000) / 1000, gpu_wait_s: Math.round(r.waitSeconds * 1000) / 1000,
        conversions: r.conversions, underflow: formatUnderflow(r.losses), staging_mib: r.stagingBytes / 2 ** 20,
        device: model.rt.caps.description,
      });
      const seen = new Set<GPUBuffer>();
      const w = model.weights;
      for (const t of [w.embed, w.lmHead, w.finalNorm, ...w.layers.flatMap((l) => Object.values(l))]) {
        if (t && !seen.has(t.buffer)) (seen.add(t.buffer), model.rt.destroyBuffer(t.buffer));
      }
    }
  } finally {
    cleanup();
  }
}
