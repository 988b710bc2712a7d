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
 * The copies live in the trainer's SelectiveBuffers: every micro-batch and step reuses them.
 */
import { type GpuRuntime, Tensor } from "@tuneloom/kernels";
import { type GpuModel, type SelectiveCheckpoint, type SelectivePart, allocSelective, selectiveBytes } from "@tuneloom/model";

/** How many layers keep a part: a count, or every layer that is recomputed. */
export type KeepLayers = number | "all";

/** What a KeepLayers value is, for messages that name the flag or key: `--keep-mlp-layers: expected …`. */
export const KEEP_LAYERS_EXPECTED = `a number of layers (0 or more) or "all"`;

/** A flag's or config's value as KeepLayers ("12" from a command line too), or null when it is none. */
export function parseKeepLayers(v: unknown): KeepLayers | null {
  if (v === "all") return "all";
  if (typeof v === "string" && /^\s*\d+\s*$/.test(v)) return Number(v);
  return typeof v === "number" && Number.isInteger(v) && v >= 0 ? v : null;
}

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

/**
 * A trainer's kept parts, one set per keeping layer, allocated once for the longest micro-batch so
 * far and reused by every micro-batch and step (a micro-batch of T tokens gets (T, …) views of them).
 * Allocating them per step from the recording's scratch gave the same logical tensor a different
 * buffer from step to step, so the cached bind groups of every dispatch that read them missed
 * (session 14's call: SmolLM2-135M's step recorded in 70 ms instead of 36 and ran 1.6× slower).
 * Only GPU commands write them, so reuse needs no ordering beyond the queue's. Growing replaces them
 * between micro-batches (the trainers submit each micro-batch before the next is recorded).
 */
export class SelectiveBuffers {
  private capacity = 0;
  private sets = new Map<number, SelectiveCheckpoint>();

  constructor(private readonly rt: GpuRuntime, private readonly model: GpuModel, private readonly layers: SelectiveLayers) {}

  /** The parts of each keeping layer for a micro-batch of T tokens (recordForward's `selective`, then the recompute's). */
  forTokens(T: number): (l: number) => SelectiveCheckpoint | undefined {
    if (T > this.capacity) {
      this.release();
      for (const l of new Set([...this.layers.attention, ...this.layers.mlp])) {
        const parts = { attention: this.layers.attention.has(l), mlp: this.layers.mlp.has(l) };
        this.sets.set(l, allocSelective((dtype, shape, label) => this.rt.empty(dtype, shape, label), this.model.cfg, T, this.model.weights.layers[l]!, parts));
      }
      this.capacity = T;
    }
    const view = (t: Tensor) => new Tensor(t.buffer, t.dtype, [T, t.shape[1]!], t.byteOffset, t.label);
    const views = new Map<number, SelectiveCheckpoint>();
    for (const [l, set] of this.sets) {
      views.set(l, {
        ...(set.attention ? { attention: { out: view(set.attention.out), lse: view(set.attention.lse) } } : {}),
        ...(set.mlp ? { mlp: { gate: view(set.mlp.gate), up: view(set.mlp.up) } } : {}),
      });
    }
    return (l) => views.get(l);
  }

  /** Gives every kept tensor back to the pool. */
  release() {
    for (const set of this.sets.values()) {
      this.rt.release(...(set.attention ? [set.attention.out, set.attention.lse] : []), ...(set.mlp ? [set.mlp.gate, set.mlp.up] : []));
    }
    this.sets.clear();
    this.capacity = 0;
  }
}
