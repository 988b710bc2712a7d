/**
 * Selective gradient checkpointing, for both trainers: layers keep part of their forward's
 * activations (model's SelectiveCheckpoint) so that their recompute skips the work that made them.
 *
 *   --keep-attention-layers N   the attention output and lse: the recompute skips the attention
 *                               forward (2·T·nH·hd bytes a layer with 16-bit weights)
 *   --keep-mlp-layers N         gate and up: the recompute skips the two largest products of the
 *                               layer (4·T·I bytes a layer)
 *
 * N counts layers from the one before the last down (the last layer is never recomputed: the forward
 * leaves its activations), so at most L − 1; `all` is every recomputed layer. Memory for time, as
 * Megatron's `--recompute-num-layers` trades it; per byte, attention is the better trade (Llama-3.2-1B
 * at 8×512 tokens: 16.5 MB a layer for ~0.58 ms, against 128 MiB for ~1.3 ms; docs/cli.md).
 *
 * Each micro-batch's copies are scratch of the step's recording, made by the forward and recycled
 * after the layer's backward, so micro-batches of a step reuse the same memory.
 */
import type { Recorder, Tensor } from "@tuneloom/kernels";
import { type GpuModel, type SelectiveCheckpoint, type SelectivePart, allocSelective, selectiveBytes } from "@tuneloom/model";

/** How many layers keep a part: a count, or every layer that is recomputed. */
export type KeepLayers = number | "all";

/** The trainers' options for it (absent: 0). */
export interface SelectiveOptions {
  keepAttentionLayers?: KeepLayers;
  keepMlpLayers?: KeepLayers;
}

/**
 * The counts that fit `gib` GiB of kept activations for micro-batches of T tokens (`--keep-activations-gib`):
 * the better trade first, attention outputs in as many recomputed layers as fit, then MLPs.
 */
export function selectiveForBudget(model: GpuModel, T: number, gib: number): Required<SelectiveOptions> {
  if (!(Number.isFinite(gib) && gib >= 0)) throw new Error(`keep-activations-gib must be a number of GiB ≥ 0, got ${gib}`);
  const dtype = model.weights.layers[0]!.gate.dtype;
  const recomputed = model.cfg.numLayers - 1;
  let room = gib * 2 ** 30;
  const fit = (part: SelectivePart) => {
    const n = Math.min(recomputed, Math.floor(room / selectiveBytes(model.cfg, T, dtype, part)));
    room -= n * selectiveBytes(model.cfg, T, dtype, part);
    return n;
  };
  const keepAttentionLayers = fit("attention");
  return { keepAttentionLayers, keepMlpLayers: keepAttentionLayers === recomputed ? fit("mlp") : 0 };
}

const FLAG: Record<SelectivePart, string> = { attention: "keep-attention-layers", mlp: "keep-mlp-layers" };

/**
 * The layers that keep `part` (L − 2 downward), for `keep` layers of a model of L. Throws on a count
 * that is not a non-negative integer, and on any keeping without gradient checkpointing (nothing is
 * recomputed then).
 */
export function keptLayerSet(numLayers: number, keep: KeepLayers | undefined, gradientCheckpointing: boolean, part: SelectivePart = "mlp"): ReadonlySet<number> {
  if (keep === undefined || keep === 0) return new Set();
  if (keep !== "all" && !(Number.isInteger(keep) && keep > 0)) throw new Error(`${FLAG[part]} must be a non-negative integer or "all", got ${JSON.stringify(keep)}`);
  if (!gradientCheckpointing) throw new Error(`${FLAG[part]} keeps activations that gradient checkpointing would recompute: it needs gradient checkpointing on`);
  const n = keep === "all" ? numLayers - 1 : Math.min(keep, numLayers - 1);
  return new Set(Array.from({ length: n }, (_, i) => numLayers - 2 - i));
}

/** The layer sets of both parts, checked (keptLayerSet). */
export interface SelectiveLayers {
  attention: ReadonlySet<number>;
  mlp: ReadonlySet<number>;
}
export function selectiveLayers(numLayers: number, o: SelectiveOptions, gradientCheckpointing: boolean): SelectiveLayers {
  return {
    attention: keptLayerSet(numLayers, o.keepAttentionLayers, gradientCheckpointing, "attention"),
    mlp: keptLayerSet(numLayers, o.keepMlpLayers, gradientCheckpointing, "mlp"),
  };
}

/** GPU bytes the kept parts hold for a micro-batch of T tokens. */
export function selectiveStepBytes(model: GpuModel, layers: SelectiveLayers, T: number): number {
  let bytes = 0;
  for (const part of ["attention", "mlp"] as const) {
    for (const l of layers[part]) bytes += selectiveBytes(model.cfg, T, model.weights.layers[l]!.gate.dtype, part);
  }
  return bytes;
}

/** `layers 0-14 (15 of 16) keep the attention output (247.5 MiB); layers 3-14 (12 of 16) keep the MLP's gate and up (1.50 GiB)` at T tokens, or null. */
export function formatSelective(model: GpuModel, layers: SelectiveLayers, T: number): string | null {
  const parts = (["attention", "mlp"] as const).filter((p) => layers[p].size > 0).map((p) => {
    const ls = [...layers[p]].sort((a, b) => a - b);
    const bytes = selectiveStepBytes(model, { attention: new Set(), mlp: new Set(), [p]: layers[p] }, T);
    const size = bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
    return `layers ${ls[0]}-${ls.at(-1)} (${ls.length} of ${model.cfg.numLayers}) keep ${p === "mlp" ? "the MLP's gate and up" : "the attention output"} (${size})`;
  });
  return parts.length ? parts.join("; ") : null;
}

/** One micro-batch's kept parts: made as the forward reaches each layer, recycled after its backward. */
export class SelectiveSets {
  private readonly sets = new Map<number, SelectiveCheckpoint>();

  constructor(private readonly rec: Recorder, private readonly model: GpuModel, private readonly layers: SelectiveLayers, private readonly T: number) {}

  /** For recordForward's `selective`: layer l's parts, allocated now (undefined where l keeps nothing). */
  readonly forward = (l: number): SelectiveCheckpoint | undefined => {
    const parts = { attention: this.layers.attention.has(l), mlp: this.layers.mlp.has(l) };
    if (!parts.attention && !parts.mlp) return undefined;
    const set = allocSelective(this.rec, this.model.cfg, this.T, this.model.weights.layers[l]!, parts);
    this.sets.set(l, set);
    return set;
  };

  /** Layer l's parts for its recompute (undefined where l keeps nothing). */
  get(l: number): SelectiveCheckpoint | undefined {
    return this.sets.get(l);
  }

  /** After layer l's backward: its copies go back to the recording's scratch. */
  recycle(l: number) {
    const set = this.sets.get(l);
    if (!set) return;
    const tensors: Tensor[] = [...(set.attention ? [set.attention.out, set.attention.lse] : []), ...(set.mlp ? [set.mlp.gate, set.mlp.up] : [])];
    for (const t of tensors) this.rec.recycle(t);
    this.sets.delete(l);
  }
}
