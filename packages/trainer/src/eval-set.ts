/**
 * Scoring batches (DataLoader.evalBatches: padded, file order): the NLL summed over their target
 * tokens (labels ≠ −100), for training's eval and for `perplexity --data`.
 */
import type { GpuModel, LayerLora } from "@tuneloom/model";
import type { Batch } from "./batching.ts";

/** Σ NLL and the target count over batches (no dropout, no update). */
export async function sumNll(model: GpuModel, batches: readonly Batch[], lora?: readonly LayerLora[]): Promise<{ sum: number; count: number }> {
  let sum = 0, count = 0;
  for (const b of batches) {
    const r = await model.nll(b.inputIds, b.positions, b.seqIds, b.labels, lora);
    sum += r.sum;
    count += r.count;
  }
  return { sum, count };
}
