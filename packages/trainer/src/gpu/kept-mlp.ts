/**
 * Selective gradient checkpointing (`--keep-mlp-layers N`), for both trainers: the N layers before
 * the last keep their MLP's gate and up projections from the forward (model's KeptMlp: 4·T·I bytes
 * a layer with 16-bit weights), so their recompute skips the two largest products of the layer
 * (with LoRA, only their rank-r h is recomputed). The last layer is never recomputed (the forward
 * leaves its activations), so at most L − 1 layers can keep theirs. Memory for time: Llama-3.2-1B at
 * 8×512 tokens keeps 128 MiB a layer to save ~1.3 ms of its ~15 ms a layer (docs/cli.md).
 *
 * Each micro-batch's copies are scratch of the step's recording, made by the forward and recycled
 * after the layer's backward, so micro-batches of a step reuse the same memory.
 */
import type { Recorder } from "@tuneloom/kernels";
import { type GpuModel, type KeptMlp, allocKeptMlp, keptMlpBytes } from "@tuneloom/model";

/** How many layers keep their MLP: a count, or every layer that is recomputed. */
export type KeepMlpLayers = number | "all";

/**
 * The layers that keep their MLP (L − 2 downward), for `keep` layers of a model of L. Throws on a
 * count that is not a non-negative integer, and on any keeping without gradient checkpointing
 * (nothing is recomputed then).
 */
export function keptMlpLayerSet(numLayers: number, keep: KeepMlpLayers | undefined, gradientCheckpointing: boolean): ReadonlySet<number> {
  if (keep === undefined || keep === 0) return new Set();
  if (keep !== "all" && !(Number.isInteger(keep) && keep > 0)) throw new Error(`keep-mlp-layers must be a non-negative integer or "all", got ${JSON.stringify(keep)}`);
  if (!gradientCheckpointing) throw new Error("keep-mlp-layers keeps activations that gradient checkpointing would recompute: it needs gradient checkpointing on");
  const n = keep === "all" ? numLayers - 1 : Math.min(keep, numLayers - 1);
  return new Set(Array.from({ length: n }, (_, i) => numLayers - 2 - i));
}

/** GPU bytes the kept MLPs of `layers` hold for a micro-batch of T tokens. */
export function keptMlpStepBytes(model: GpuModel, layers: ReadonlySet<number>, T: number): number {
  let bytes = 0;
  for (const l of layers) bytes += keptMlpBytes(model.cfg, T, model.weights.layers[l]!.gate.dtype);
  return bytes;
}

/** One micro-batch's kept MLPs: made as the forward reaches each kept layer, recycled after its backward. */
export class KeptMlpSets {
  private readonly sets = new Map<number, KeptMlp>();

  constructor(private readonly rec: Recorder, private readonly model: GpuModel, private readonly layers: ReadonlySet<number>, private readonly T: number) {}

  /** For recordForward's `keptMlp`: layer l's set, allocated now (undefined where l keeps nothing). */
  readonly forward = (l: number): KeptMlp | undefined => {
    if (!this.layers.has(l)) return undefined;
    const set = allocKeptMlp(this.rec, this.model.cfg, this.T, this.model.weights.layers[l]!);
    this.sets.set(l, set);
    return set;
  };

  /** Layer l's set for its recompute (undefined where l keeps nothing). */
  get(l: number): KeptMlp | undefined {
    return this.sets.get(l);
  }

  /** After layer l's backward: its copies go back to the recording's scratch. */
  recycle(l: number) {
    const set = this.sets.get(l);
    if (!set) return;
    this.rec.recycle(set.gate);
    this.rec.recycle(set.up);
    this.sets.delete(l);
  }
}
