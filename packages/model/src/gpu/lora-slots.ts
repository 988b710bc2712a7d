/**
 * Adapter slots for serving several adapters from one base in ONE forward per batch (Punica /
 * S-LoRA's BGMV; kernels' bgmv.ts). Every loaded adapter lives in a slot s of stacks shared by
 * all adapters, per layer and projection group (decoder-layer.ts LORA_GROUPS):
 *
 *   A stack of a group  (S, n·R, in)   slot s, module i: rows i·R … i·R + r_s − 1 = A_i (r_s, in)
 *   B stack of a module (S, out, R)    slot s: columns 0 … r_s − 1 = B (out, r_s)
 *   ranks               u32 (S, 7)     r_s per target module (LORA_TARGETS order), 0: not adapted
 *   scales              f32 (S)        s = α/r (α/√r with rsLoRA)
 *
 * R is the largest rank a slot takes (`maxRank`); a smaller adapter's padding is zeros and is
 * skipped by the kernels through `ranks`. Each row of a batch carries its slot (i32, −1: the
 * base), so a batch mixing adapters and base rows is one forward: per group one shrink
 * h = x·A[slot]ᵀ and one expand y += s·h·B[slot]ᵀ per module.
 *
 * Writing a slot (an adapter load) and clearing it (an unload) are queue writes: they land
 * between submits, and a slot is only written while no running sequence uses it. The stacks
 * are allocated on the first write, so a server that never loads an adapter pays nothing.
 */
import { type GpuRuntime, Tensor } from "@tuneloom/kernels";
import { toBf16Bits, toF16Bits } from "@tuneloom/kernels/host-data.ts";
import type { LoadedAdapter } from "../adapter-dir.ts";
import type { ModelConfig } from "../config.ts";
import { LORA_TARGETS, type LoraTarget, loraProjectionShape } from "../lora-config.ts";
import { LORA_GROUPS, type LoraGroup } from "./decoder-layer.ts";
import type { GatheredGroup, GatheredLayerLora, SlotSegment } from "./lora.ts";

export type LoraSlotDtype = "f32" | "f16" | "bf16";

/** serve's `--lora-dtype` values (vLLM's spelling, plus tuneloom's short dtype names). */
const LORA_DTYPE_NAMES: Record<string, LoraSlotDtype | "auto"> = {
  auto: "auto", float32: "f32", f32: "f32", float16: "f16", half: "f16", f16: "f16", bfloat16: "bf16", bf16: "bf16",
};

/**
 * The slots' storage for a `--lora-dtype` value: `auto` (the default) stores them in f16 when the
 * base weights are f16 (16-bit serving: the adapters' bytes are read every step by every row, so
 * 16 adapters cost half the traffic), else in f32 as the one-adapter path computes. Throws naming
 * the flag on anything else.
 */
export function resolveLoraSlotDtype(value: string | undefined, weightsDtype: string): LoraSlotDtype {
  const d = LORA_DTYPE_NAMES[value ?? "auto"];
  if (!d) throw new Error(`--lora-dtype must be one of ${Object.keys(LORA_DTYPE_NAMES).join(", ")}, got ${JSON.stringify(value)}`);
  return d === "auto" ? (weightsDtype === "f16" ? "f16" : "f32") : d;
}

export interface LoraSlotsOptions {
  /** Adapters held at once (serve's --max-loras). */
  slots: number;
  /** Largest rank a slot takes (serve's --max-lora-rank): the stacks' padded rank R. */
  maxRank: number;
  /** Storage of A and B (default f32, what the single-adapter path computes with). */
  dtype?: LoraSlotDtype;
}

const GROUPS = Object.entries(LORA_GROUPS) as [LoraGroup, readonly LoraTarget[]][];

/** Mean rows per run from which LoraSlots.segments prefers dense per-run products to per-row kernels. */
export const MIN_SEGMENT_ROWS = 8;

export class LoraSlots {
  readonly count: number;
  readonly maxRank: number;
  readonly dtype: LoraSlotDtype;
  /** Per layer, per group: the stacks (allocated on the first write). */
  private stacks: Record<LoraGroup, GatheredGroup>[] | null = null;
  private ranksT: Tensor | null = null;
  private scalesT: Tensor | null = null;
  /** Host copies of the tables (written whole on every change: a few dozen bytes). */
  private readonly ranks: Uint32Array;
  private readonly scales: Float32Array;
  /** Slot → who holds it (null: free). */
  private readonly holders: (string | null)[];
  /** After dispose, recordings that bound the stacks are stale: no new stacks are made. */
  private disposed = false;

  constructor(readonly rt: GpuRuntime, readonly cfg: ModelConfig, o: LoraSlotsOptions) {
    if (!Number.isInteger(o.slots) || o.slots < 1) throw new RangeError(`LoraSlots: slots must be an integer ≥ 1, got ${o.slots}`);
    if (!Number.isInteger(o.maxRank) || o.maxRank < 1) throw new RangeError(`LoraSlots: maxRank must be an integer ≥ 1, got ${o.maxRank}`);
    const dtype = o.dtype ?? "f32";
    if (!["f32", "f16", "bf16"].includes(dtype)) throw new Error(`LoraSlots: dtype must be f32, f16 or bf16, got ${JSON.stringify(dtype)}`);
    // 16-bit stacks are written per slot block: every block must start on a 4-byte boundary.
    if (dtype !== "f32" && o.maxRank % 2 !== 0)
      throw new RangeError(`LoraSlots: ${dtype} adapter slots need an even rank, got ${o.maxRank} (serve's --max-lora-rank; or --lora-dtype float32)`);
    this.count = o.slots;
    this.maxRank = o.maxRank;
    this.dtype = dtype;
    this.ranks = new Uint32Array(o.slots * LORA_TARGETS.length);
    this.scales = new Float32Array(o.slots);
    this.holders = Array.from({ length: o.slots }, () => null);
  }

  /** Bytes the stacks take once allocated: S·R·Σ(in + out) over the 7 projections and the layers. */
  get bytes(): number {
    const per = LORA_TARGETS.reduce((n, t) => {
      const { inFeatures, outFeatures } = loraProjectionShape(this.cfg, t);
      return n + inFeatures + outFeatures;
    }, 0);
    return this.count * this.maxRank * per * this.cfg.numLayers * (this.dtype === "f32" ? 4 : 2);
  }

  get free(): number {
    return this.holders.filter((h) => h === null).length;
  }

  /** The first free slot, now held by `holder`; null when every slot is taken. */
  acquire(holder: string): number | null {
    const s = this.holders.indexOf(null);
    if (s < 0) return null;
    this.holders[s] = holder;
    return s;
  }

  private check(slot: number, fn: string) {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.count) throw new RangeError(`LoraSlots.${fn}: slot ${slot} is not one of 0…${this.count - 1}`);
  }

  /**
   * Uploads `adapter` (checked against the model by readAdapterDir) into `slot`: its A's and B's
   * padded to R with zeros, its ranks and scale. Modules it does not adapt get rank 0.
   */
  write(slot: number, adapter: LoadedAdapter) {
    this.check(slot, "write");
    if (this.disposed) throw new Error("LoraSlots.write: the slots were disposed");
    const r = adapter.lora.rank, R = this.maxRank;
    if (r > R) throw new RangeError(`adapter ${adapter.dir} has rank ${r}, above the largest rank a slot takes (${R}; serve's --max-lora-rank)`);
    if (this.dtype === "f16") {
      // f16 tops out at 65504: a value past it would become ±inf in the slot, silently.
      for (const w of adapter.weights) {
        for (const [k, v] of [["A", w.A], ["B", w.B]] as const) {
          let mx = 0;
          for (const x of v) mx = Math.max(mx, Math.abs(x));
          if (!(mx <= 65504)) throw new RangeError(`adapter ${adapter.dir}: ${w.spec.base} lora_${k} holds ${mx}, beyond f16's range; serve it with --lora-dtype float32 (or bfloat16)`);
        }
      }
    }
    const stacks = this.allocate();
    for (const w of adapter.weights) {
      const { layer, module, inFeatures: inF, outFeatures: outF } = w.spec;
      if (layer < 0 || layer >= this.cfg.numLayers) throw new RangeError(`LoraSlots.write: ${w.spec.base} is past the model's ${this.cfg.numLayers} layers`);
      const [group, i] = groupOf(module);
      const g = stacks[layer]![group];
      const n = LORA_GROUPS[group].length;
      // A (r, in) into rows i·R … of the slot's block; rows r … R − 1 zeros.
      const a = new Float32Array(R * inF);
      a.set(w.A.subarray(0, r * inF));
      this.rt.write(g.A, this.encode(a), (slot * n + i) * R * inF);
      // B (out, r) → (out, R), columns r … R − 1 zeros.
      const b = new Float32Array(outF * R);
      for (let o = 0; o < outF; o++) b.set(w.B.subarray(o * r, (o + 1) * r), o * R);
      this.rt.write(g.B[i]!, this.encode(b), slot * outF * R);
    }
    this.ranks.fill(0, slot * LORA_TARGETS.length, (slot + 1) * LORA_TARGETS.length);
    for (const t of adapter.targets) this.ranks[slot * LORA_TARGETS.length + LORA_TARGETS.indexOf(t)] = r;
    this.scales[slot] = adapter.scaling;
    this.writeTables();
  }

  /** Frees `slot`: rank 0 everywhere (a row still pointing at it would get no LoRA delta). */
  clear(slot: number) {
    this.check(slot, "clear");
    this.ranks.fill(0, slot * LORA_TARGETS.length, (slot + 1) * LORA_TARGETS.length);
    this.scales[slot] = 0;
    this.holders[slot] = null;
    if (this.stacks) this.writeTables();
  }

  /** True once a write allocated the stacks (a batch with slot rows needs them). */
  get allocated(): boolean {
    return this.stacks !== null;
  }

  /**
   * Layer `layer`'s stacks with the rows' slots (i32 (T)), for recordForward's `gathered`; with
   * `segments` (see segments()) the LoRA runs per run of rows instead of per row.
   */
  layer(layer: number, rows: Tensor, segments?: readonly SlotSegment[] | null): GatheredLayerLora {
    if (!this.stacks || !this.ranksT || !this.scalesT) throw new Error("LoraSlots.layer: no adapter was written into a slot yet");
    return { gathered: { rows, ranks: this.ranksT, scales: this.scalesT, R: this.maxRank, ...(segments ? { segments } : {}) }, groups: this.stacks[layer]! };
  }

  /**
   * The runs of consecutive rows on one adapter slot in `rowSlots` (−1 rows: the base, in no run),
   * with the slots' ranks and scales as written now, when the runs are long enough for dense
   * per-run products to beat the per-row kernels (prefill: a prompt's tokens share a slot):
   * at least MIN_SEGMENT_ROWS rows per run on average; else null (decode: one row per sequence).
   * Valid while the slots do not change, i.e. for a recording submitted before the next write.
   */
  segments(rowSlots: Int32Array): SlotSegment[] | null {
    const runs: SlotSegment[] = [];
    for (let t = 0; t < rowSlots.length;) {
      const slot = rowSlots[t]!;
      let end = t + 1;
      while (end < rowSlots.length && rowSlots[end] === slot) end++;
      if (slot >= 0) {
        const at = slot * LORA_TARGETS.length;
        runs.push({ start: t, count: end - t, slot, ranks: Array.from(this.ranks.subarray(at, at + LORA_TARGETS.length)), scale: this.scales[slot]! });
      }
      t = end;
    }
    const rows = runs.reduce((n, r) => n + r.count, 0);
    return runs.length > 0 && rows >= MIN_SEGMENT_ROWS * runs.length ? runs : null;
  }

  dispose() {
    this.disposed = true;
    if (!this.stacks) return;
    for (const layer of this.stacks) for (const g of Object.values(layer)) this.rt.release(g.A, ...g.B);
    this.rt.release(this.ranksT!, this.scalesT!);
    this.stacks = this.ranksT = this.scalesT = null;
  }

  private encode(v: Float32Array): ArrayBufferView {
    return this.dtype === "f32" ? v : this.dtype === "f16" ? toF16Bits(v) : toBf16Bits(v);
  }

  private writeTables() {
    this.rt.write(this.ranksT!, this.ranks);
    this.rt.write(this.scalesT!, this.scales);
  }

  private allocate(): Record<LoraGroup, GatheredGroup>[] {
    if (this.stacks) return this.stacks;
    const { rt, cfg, count: S, maxRank: R, dtype } = this;
    const stacks = Array.from({ length: cfg.numLayers }, (_, l) => {
      const groups = {} as Record<LoraGroup, GatheredGroup>;
      for (const [group, modules] of GROUPS) {
        const inF = loraProjectionShape(cfg, modules[0]!).inFeatures;
        groups[group] = {
          A: rt.zeros(dtype, [S, modules.length * R, inF], `lora_slots.${l}.${group}.A`),
          B: modules.map((m) => rt.zeros(dtype, [S, loraProjectionShape(cfg, m).outFeatures, R], `lora_slots.${l}.${m}.B`)),
          rankCol: LORA_TARGETS.indexOf(modules[0]!),
        };
      }
      return groups;
    });
    this.stacks = stacks;
    this.ranksT = rt.zeros("u32", [S, LORA_TARGETS.length], "lora_slots.ranks");
    this.scalesT = rt.zeros("f32", [S], "lora_slots.scales");
    return stacks;
  }
}

/** The group of a target module and its index there. */
function groupOf(module: LoraTarget): [LoraGroup, number] {
  for (const [group, modules] of GROUPS) {
    const i = modules.indexOf(module);
    if (i >= 0) return [group, i];
  }
  throw new Error(`no LoRA group holds ${module}`);
}
