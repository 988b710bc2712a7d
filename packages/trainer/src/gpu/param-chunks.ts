/**
 * Full fine-tuning's trainable tensors in one or more flat f32 buffers ("chunks"). A chunk is a
 * FlatParamLayout over a run of consecutive tensors, with its master weights, gradients and AdamW
 * moments in four buffers of that layout; each buffer is at most `maxChunkBytes`, the device's
 * per-buffer limit (min of maxBufferSize and maxStorageBufferBindingSize) unless a test asks for
 * less. A model whose 4·P bytes fit one buffer gets one chunk (what LoRA has); a larger one (e.g.
 * Qwen2.5-0.5B: 4·494M = 1.98 GB against a 2 GiB − 4 binding limit with its 256-byte alignment
 * gaps, or anything over 1B parameters) is split, and gradNormClip / adamwStep / the gradient
 * scaling run once per chunk (the norm over all of them).
 */
import {
  type AdamWState, type GpuRuntime, type ParamSegment, type ParamSpec, type Tensor,
  FlatParamLayout, createAdamWState, releaseAdamWState,
} from "@tuneloom/kernels";

/** One chunk: params, grads (numel each) and AdamW's m, v of the same layout. */
export interface ParamChunk {
  layout: FlatParamLayout;
  params: Tensor;
  grads: Tensor;
  adam: AdamWState;
}

/** Which of a chunk's buffers. */
export type ChunkBuffer = "params" | "grads" | "m" | "v";

/** Bytes a tensor takes in a flat layout (segments start on 256-byte boundaries). */
const alignedBytes = (numel: number) => Math.ceil(numel / 64) * 64 * 4;

/**
 * Splits `specs` (in order) into runs whose flat f32 layout is at most `maxChunkBytes`, filling each
 * run greedily: one run when everything fits. A tensor that alone exceeds the limit is refused.
 */
export function planChunks(specs: readonly ParamSpec[], maxChunkBytes: number): ParamSpec[][] {
  if (!(Number.isFinite(maxChunkBytes) && maxChunkBytes >= 256)) throw new Error(`planChunks: maxChunkBytes must be a number ≥ 256, got ${maxChunkBytes}`);
  const chunks: ParamSpec[][] = [];
  let current: ParamSpec[] = [], bytes = 0;
  for (const s of specs) {
    const b = alignedBytes(s.shape.reduce((a, d) => a * d, 1));
    if (b > maxChunkBytes)
      throw new Error(`${s.name} [${s.shape.join(", ")}] alone needs a ${b.toLocaleString("en-US")}-byte f32 buffer, over the device's per-buffer limit of ${maxChunkBytes.toLocaleString("en-US")} bytes; full fine-tuning cannot split one tensor`);
    if (current.length && bytes + b > maxChunkBytes) {
      chunks.push(current);
      current = [], bytes = 0;
    }
    current.push(s);
    bytes += b;
  }
  if (current.length) chunks.push(current);
  return chunks;
}

/** The largest buffer the device lets a kernel bind whole, rounded down to 256 bytes. */
export function maxBindableBytes(limits: { maxBufferSize: number; maxStorageBufferBindingSize: number }): number {
  return Math.floor(Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize) / 256) * 256;
}

export class ParamChunks {
  readonly chunks: ParamChunk[];
  private readonly where = new Map<string, { chunk: ParamChunk; seg: ParamSegment }>();

  constructor(private readonly rt: GpuRuntime, specs: readonly ParamSpec[], o: { weightDecay: number; maxChunkBytes: number; label: string }) {
    this.chunks = planChunks(specs, o.maxChunkBytes).map((run, i) => {
      const layout = new FlatParamLayout(run, { weightDecay: o.weightDecay });
      const chunk = { layout, params: layout.allocate(rt, `${o.label}:params${i}`), grads: layout.allocate(rt, `${o.label}:grads${i}`), adam: createAdamWState(rt, layout) };
      for (const seg of layout.segments) this.where.set(seg.name, { chunk, seg });
      return chunk;
    });
  }

  /** Every tensor's segment, in order (offsets are within its chunk). */
  get segments(): ParamSegment[] {
    return this.chunks.flatMap((c) => c.layout.segments);
  }

  private locate(name: string) {
    const w = this.where.get(name);
    if (!w) throw new Error(`ParamChunks: no tensor named ${name}`);
    return w;
  }

  private static buffer(c: ParamChunk, which: ChunkBuffer): Tensor {
    return which === "params" ? c.params : which === "grads" ? c.grads : c.adam[which];
  }

  /** The tensor `name` inside its chunk's `which` buffer (bindable on its own). */
  view(which: ChunkBuffer, name: string): Tensor {
    const { chunk } = this.locate(name);
    return chunk.layout.view(ParamChunks.buffer(chunk, which), name);
  }

  /** One buffer kind of every chunk (the gradients for the norm, say). */
  all(which: ChunkBuffer): Tensor[] {
    return this.chunks.map((c) => ParamChunks.buffer(c, which));
  }

  /** `which` of every tensor, by name (reads one chunk at a time). */
  async read(which: ChunkBuffer): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const c of this.chunks) {
      const flat = await this.rt.read(ParamChunks.buffer(c, which));
      for (const s of c.layout.segments) out.set(s.name, flat.slice(s.offset, s.offset + s.numel));
    }
    return out;
  }

  /** Uploads `which` of every tensor, by name; every tensor must be given, at its size (`what` names the data in errors). */
  write(which: ChunkBuffer, values: ReadonlyMap<string, Float32Array>, what: string) {
    for (const c of this.chunks) {
      const flat = new Float32Array(c.layout.numel);
      for (const s of c.layout.segments) {
        const v = values.get(s.name);
        if (!v) throw new Error(`${what}: nothing for ${s.name}`);
        if (v.length !== s.numel) throw new Error(`${what}: ${s.name} has ${v.length} values, the tensor ${s.numel}`);
        flat.set(v, s.offset);
      }
      this.rt.write(ParamChunks.buffer(c, which), flat);
    }
  }

  release() {
    for (const c of this.chunks) {
      this.rt.release(c.params, c.grads);
      releaseAdamWState(this.rt, c.adam);
    }
  }
}
