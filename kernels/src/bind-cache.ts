/**
 * Reuse of bind groups across recordings that repeat the same dispatches (a training step
 * records ~5,000 dispatches, identical from step to step; creating their bind groups was ~88%
 * of the CPU cost of recording under Bun + dawn.node, ~11 µs each).
 *
 * Two pieces:
 * - Uniform blocks are content-addressed in a runtime-wide arena of 64 KiB buffers: the same
 *   parameter bytes always get the same (buffer, offset), whose contents never change once
 *   written. Blocks are uploaded in one write per arena chunk before the next submit.
 * - Bind groups are cached by pipeline and by the exact (buffer, offset, size) of every
 *   binding, so a hit binds exactly the resources a fresh one would. A destroyed buffer drops
 *   every cached bind group that refers to it.
 * The arena only grows (per-step values such as the learning rate add a few blocks per step);
 * past MAX_UNIFORM_BLOCKS it is emptied, together with the bind group cache, the next time a
 * caching recording starts while none is alive.
 */

const CHUNK = 64 * 1024;
const ALIGN = 256;
const MAX_UNIFORM_BLOCKS = 16384; // 4 MiB of 256-byte slots
const MAX_BIND_GROUPS = 200_000;

interface Chunk {
  buffer: GPUBuffer;
  host: Uint8Array;
  used: number;
  written: number;
}

export class BindingCache {
  private readonly uniforms = new Map<string, GPUBufferBinding>();
  private chunks: Chunk[] = [];
  private readonly groups = new Map<string, GPUBindGroup>();
  private readonly keysByBuffer = new Map<GPUBuffer, string[]>();
  private readonly ids = new WeakMap<object, number>();
  private nextId = 1;
  /** Caching recordings not yet released (their bind groups and uniforms must stay valid). */
  live = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly createUniformBuffer: (bytes: number) => GPUBuffer,
    private readonly destroy: (b: GPUBuffer) => void,
  ) {}

  private id(o: object): number {
    let id = this.ids.get(o);
    if (id === undefined) this.ids.set(o, (id = this.nextId++));
    return id;
  }

  /** The arena slot holding these uniform bytes (a multiple of 4 bytes, at most 256). */
  uniform(data: ArrayBuffer): GPUBufferBinding {
    const key = new Uint32Array(data).join(",");
    const hit = this.uniforms.get(key);
    if (hit) return hit;
    const size = Math.ceil(data.byteLength / 16) * 16;
    let chunk = this.chunks.at(-1);
    if (!chunk || chunk.used + size > CHUNK) {
      chunk = { buffer: this.createUniformBuffer(CHUNK), host: new Uint8Array(CHUNK), used: 0, written: 0 };
      this.chunks.push(chunk);
    }
    const offset = chunk.used;
    chunk.host.set(new Uint8Array(data), offset);
    chunk.used += Math.ceil(size / ALIGN) * ALIGN;
    const binding = { buffer: chunk.buffer, offset, size };
    this.uniforms.set(key, binding);
    return binding;
  }

  /** Uploads the uniform blocks added since the last call (call before every submit). */
  flushUniforms(queue: GPUQueue) {
    for (const c of this.chunks) {
      if (c.used > c.written) {
        queue.writeBuffer(c.buffer, c.written, c.host.buffer, c.written, c.used - c.written);
        c.written = c.used;
      }
    }
  }

  /** A bind group for `pipeline` with `resources` at bindings 0..n-1, from the cache when possible. */
  bindGroup(label: string, pipeline: GPUComputePipeline, layout: GPUBindGroupLayout, resources: GPUBufferBinding[]): GPUBindGroup {
    let key = String(this.id(pipeline));
    for (const r of resources) key += `|${this.id(r.buffer)}:${r.offset ?? 0}:${r.size ?? -1}`;
    const hit = this.groups.get(key);
    if (hit) return hit;
    if (this.groups.size >= MAX_BIND_GROUPS) this.clearGroups();
    const group = this.device.createBindGroup({ label, layout, entries: resources.map((resource, binding) => ({ binding, resource })) });
    this.groups.set(key, group);
    for (const r of resources) {
      let keys = this.keysByBuffer.get(r.buffer);
      if (!keys) this.keysByBuffer.set(r.buffer, (keys = []));
      keys.push(key);
    }
    return group;
  }

  /** Drops the bind groups that bind `buffer` (it is being destroyed). */
  forgetBuffer(buffer: GPUBuffer) {
    const keys = this.keysByBuffer.get(buffer);
    if (!keys) return;
    for (const k of keys) this.groups.delete(k);
    this.keysByBuffer.delete(buffer);
  }

  private clearGroups() {
    this.groups.clear();
    this.keysByBuffer.clear();
  }

  /** Called when a caching recording starts: empties an oversized arena if nothing uses it. */
  recordingStarted() {
    if (this.live === 0 && this.uniforms.size > MAX_UNIFORM_BLOCKS) {
      this.clearGroups();
      this.uniforms.clear();
      for (const c of this.chunks) this.destroy(c.buffer);
      this.chunks = [];
    }
    this.live++;
  }

  recordingReleased() {
    this.live = Math.max(0, this.live - 1);
  }

  /** Sizes, for tests and the benchmarks. */
  get stats() {
    return { uniformBlocks: this.uniforms.size, bindGroups: this.groups.size, chunks: this.chunks.length };
  }
}
