/**
 * Recorders: a batch of GPU work (dispatches, copies, clears) collected in order and submitted
 * as one command buffer, optionally timed per dispatch. Made by GpuRuntime.recorder().
 */
import { type DType, numelOf, storageBytes } from "./dtype.ts";
import { poolBucketSize } from "./memory.ts";
import type { GpuRuntime } from "./runtime.ts";
import { Tensor } from "./tensor.ts";

/** Uniform parameter blocks are packed into shared buffers at this alignment. */
const UNIFORM_ALIGN = 256;
const UNIFORM_CHUNK = 64 * 1024;
/** Dispatches recorded before a flushing recorder's first automatic submit (Recorder flushEvery). */
const FIRST_FLUSH = 32;

/** Timestamp queries of a profiled submit (Recorder.submitProfiled). */
type Profile = { sets: GPUQuerySet[]; perSet: number; resolve: GPUBuffer; staging: GPUBuffer; n: number };

/** One dispatch's GPU time from Recorder.submitProfiled(). */
export interface DispatchTiming {
  label: string;
  kernel: string;
  ms: number;
}

interface DispatchOp {
  kind: "dispatch";
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}
interface CopyOp {
  kind: "copy";
  src: Tensor;
  dst: Tensor;
  bytes: number;
  srcOffset: number;
  dstOffset: number;
}
interface ClearOp {
  kind: "clear";
  dst: Tensor;
}

/**
 * A recording's command buffer encoded ahead of its submit (Recorder.prepare): valid for one
 * submit of the same recording, as long as nothing was recorded, flushed or released since.
 */
export interface PreparedCommands {
  readonly recorder: Recorder;
  readonly commands: GPUCommandBuffer;
  /** The recording's version when it was encoded (Recorder counts every change). */
  readonly version: number;
}

/**
 * Collects dispatches (pipeline + bind group + grid) and copies in order. Dispatches go
 * into compute passes (WebGPU orders dispatches in a pass: each sees the writes of the one
 * before). `submit()` encodes and submits everything as one command buffer; the same
 * Recorder can be submitted again (bind groups and uniforms are kept) until release().
 */
export class Recorder {
  private readonly ops: (DispatchOp | CopyOp | ClearOp)[] = [];
  private readonly uniformChunks: GPUBuffer[] = [];
  private chunkUsed = UNIFORM_CHUNK;
  /** Uniform bytes not yet on the GPU: [from, to) of a chunk's host copy. */
  private readonly staged: { buffer: GPUBuffer; bytes: Uint8Array; from: number; to: number }[] = [];

  /** Scratch buffers this recording holds until release(): all, and those free for reuse by size. */
  private readonly scratchAll: GPUBuffer[] = [];
  private readonly scratchFree = new Map<number, GPUBuffer[]>();

  /**
   * `flushEvery`: submit automatically after this many recorded dispatches (see flush()); for
   * long one-shot recordings such as a training step. 0: only explicit submits. The first flush
   * comes after at most FIRST_FLUSH dispatches, so the GPU, idle since the last step's readback,
   * starts within a fraction of a millisecond instead of after flushEvery dispatches' recording.
   */
  constructor(readonly rt: GpuRuntime, readonly label: string, private readonly flushEvery = 0, private readonly cacheBindings = false) {
    if (cacheBindings) rt.bindings.recordingStarted();
  }
  private released = false;

  /**
   * A temporary tensor for work recorded after this call, held until release(). Give it back
   * with recycle() once the last dispatch that uses it is recorded: later dispatches of this
   * recording may then reuse its buffer (WebGPU orders them after the earlier ones).
   */
  scratch(dtype: DType, shape: readonly number[], label = "scratch"): Tensor {
    const size = poolBucketSize(Math.max(4, storageBytes(dtype, numelOf(shape))));
    let buffer = this.scratchFree.get(size)?.pop();
    if (!buffer) {
      buffer = this.rt.buffers.acquire(size, `${this.label}:${label}`);
      this.scratchAll.push(buffer);
    }
    return new Tensor(buffer, dtype, shape, 0, label);
  }

  /** Returns a scratch() tensor for reuse by dispatches recorded from now on. */
  recycle(t: Tensor) {
    const size = poolBucketSize(Math.max(4, t.byteLength));
    let list = this.scratchFree.get(size);
    if (!list) this.scratchFree.set(size, (list = []));
    list.push(t.buffer);
  }

  get length() {
    return this.ops.length;
  }

  /** Counts every change to what submit() would encode (ops recorded, flushed, released). */
  private version = 0;
  private used = new WeakSet<PreparedCommands>();

  /** Places a uniform parameter block; returns its binding. */
  private uniform(data: ArrayBuffer): GPUBufferBinding {
    const size = Math.ceil(data.byteLength / 16) * 16;
    if (this.chunkUsed + size > UNIFORM_CHUNK) {
      const buffer = this.rt.createBuffer(UNIFORM_CHUNK, `${this.label}:uniforms`, 0x40 | 0x08); // UNIFORM | COPY_DST
      this.uniformChunks.push(buffer);
      this.chunkUsed = 0;
    }
    const buffer = this.uniformChunks[this.uniformChunks.length - 1]!;
    const offset = this.chunkUsed;
    this.chunkUsed += Math.ceil(size / UNIFORM_ALIGN) * UNIFORM_ALIGN;
    // Staged in a host copy of the chunk; submit() uploads each chunk's new bytes in one write.
    let stage = this.staged.at(-1);
    if (!stage || stage.buffer !== buffer) {
      stage = { buffer, bytes: new Uint8Array(UNIFORM_CHUNK), from: offset, to: offset };
      this.staged.push(stage);
    }
    stage.bytes.set(new Uint8Array(data), offset);
    stage.to = offset + size;
    return { buffer, offset, size };
  }

  /**
   * Records one dispatch. `params` (if given) is bound at @binding(0) as a uniform block; the
   * tensors follow at @binding(1..n) in order, as the kernel's WGSL declares them.
   */
  dispatch(
    label: string,
    pipeline: GPUComputePipeline,
    params: ArrayBuffer | null,
    tensors: (Tensor | GPUBufferBinding)[],
    workgroups: [number, number?, number?],
  ) {
    const t0 = performance.now();
    try {
      this.record(label, pipeline, params, tensors, workgroups);
    } finally {
      this.rt.recordStats.ms += performance.now() - t0;
      this.rt.recordStats.dispatches++;
    }
  }

  private record(
    label: string,
    pipeline: GPUComputePipeline,
    params: ArrayBuffer | null,
    tensors: (Tensor | GPUBufferBinding)[],
    workgroups: [number, number?, number?],
  ) {
    let bindGroup: GPUBindGroup;
    if (this.cacheBindings) {
      const resources: GPUBufferBinding[] = [];
      if (params) resources.push(this.rt.bindings.uniform(params));
      for (const t of tensors) resources.push(t instanceof Tensor ? t.binding : t);
      bindGroup = this.rt.bindings.bindGroup(label, pipeline, this.rt.bindGroupLayout(pipeline), resources);
    } else {
      const entries: GPUBindGroupEntry[] = [];
      let binding = 0;
      if (params) entries.push({ binding: binding++, resource: this.uniform(params) });
      for (const t of tensors) entries.push({ binding: binding++, resource: t instanceof Tensor ? t.binding : t });
      bindGroup = this.rt.device.createBindGroup({ label, layout: this.rt.bindGroupLayout(pipeline), entries });
    }
    const [x, y = 1, z = 1] = workgroups;
    const max = this.rt.caps.limits.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) throw new Error(`${label}: grid ${x}x${y}x${z} exceeds ${max} workgroups per dimension`);
    if (x === 0 || y === 0 || z === 0) return;
    this.ops.push({ kind: "dispatch", label, pipeline, bindGroup, workgroups: [x, y, z] });
    this.version++;
    if (this.flushEvery && this.ops.length >= (this.flushes === 0 ? Math.min(FIRST_FLUSH, this.flushEvery) : this.flushEvery)) this.flush();
  }

  /**
   * Submits what is recorded so far and starts over (uniforms and scratch stay alive until
   * release()), so the GPU works while the CPU records the rest. A flushed recorder cannot be
   * submitted again as a whole.
   */
  flush() {
    this.submit();
    this.ops.length = 0;
    this.flushes++;
    this.version++;
  }
  private flushes = 0;

  copy(src: Tensor, dst: Tensor, bytes = src.byteLength, srcOffset = 0, dstOffset = 0) {
    if (srcOffset + bytes > src.byteLength || dstOffset + bytes > dst.byteLength) {
      throw new Error(`copy ${src.label} -> ${dst.label}: ${bytes} bytes out of range`);
    }
    this.ops.push({ kind: "copy", src, dst, bytes, srcOffset, dstOffset });
    this.version++;
  }

  clear(dst: Tensor) {
    this.ops.push({ kind: "clear", dst });
    this.version++;
  }

  /**
   * Encodes and submits all recorded work as one command buffer. `prepared` (from prepare(), for
   * this recording as it still is) is submitted instead of encoding again; a stale one (anything
   * recorded, flushed or released since, or already submitted) is dropped and the work encoded now.
   */
  submit(prepared?: PreparedCommands | null) {
    if (this.rt.profiled) {
      this.rt.profiled.push(this.submitProfiled());
      return;
    }
    if (prepared && prepared.recorder === this && prepared.version === this.version && !this.used.has(prepared) && !this.released) {
      this.used.add(prepared);
      this.rt.recordStats.preparedSubmits++;
      this.writeStaged();
      this.submitCommands(prepared.commands);
      return;
    }
    this.encodeAndSubmit(null);
  }

  /**
   * Encodes the recording's command buffer now, for a later submit(prepared): a replayed recording
   * (decode) encodes its next step while the GPU runs this one, so the CPU's encoding (2.4-5 µs a
   * dispatch of a replayed recording through dawn.node on a CPU machine; a prepared buffer's submit
   * 0.5) leaves the step's critical path. The uniforms must already be on the GPU (a recording
   * submitted once); null while profiling or when they are not.
   */
  prepare(): PreparedCommands | null {
    if (this.rt.profiled || this.released || this.staged.some((st) => st.to > st.from)) return null;
    return { recorder: this, commands: this.encodeCommands(null), version: this.version };
  }

  /**
   * Like submit(), but each dispatch runs in its own compute pass with GPU timestamps around
   * it (needs the timestamp-query feature). Resolves, once the work is done, to one entry per
   * dispatch in recording order: its label, its pipeline's label and its GPU time in ms.
   * For finding where time goes; per-pass timing serialises dispatches, so the total is an
   * upper bound of submit()'s.
   */
  async submitProfiled(): Promise<DispatchTiming[]> {
    const rt = this.rt;
    if (!rt.caps.timestampQuery) throw new Error("submitProfiled: this device has no timestamp-query feature");
    const dispatches = this.ops.filter((op): op is DispatchOp => op.kind === "dispatch");
    const n = dispatches.length;
    if (n === 0) {
      this.submit();
      return [];
    }
    const perSet = 2048; // 4096 timestamps: WebGPU's query set size limit
    const sets = Array.from({ length: Math.ceil(n / perSet) }, (_, i) =>
      rt.device.createQuerySet({ type: "timestamp", count: 2 * Math.min(perSet, n - i * perSet) }));
    const resolve = rt.device.createBuffer({ size: 16 * n, usage: 0x0200 | 0x0004, label: "profile:resolve" }); // QUERY_RESOLVE | COPY_SRC
    const staging = rt.device.createBuffer({ size: 16 * n, usage: 0x0001 | 0x0008, label: "profile:readback" }); // MAP_READ | COPY_DST
    this.encodeAndSubmit({ sets, perSet, resolve, staging, n });
    await staging.mapAsync(0x0001);
    const ns = new BigInt64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    resolve.destroy();
    for (const q of sets) q.destroy();
    return dispatches.map((op, i) => ({
      label: op.label,
      kernel: op.pipeline.label,
      ms: Number(ns[2 * i + 1]! - ns[2 * i]!) / 1e6,
    }));
  }

  private encodeAndSubmit(profile: Profile | null) {
    this.writeStaged();
    this.submitCommands(this.encodeCommands(profile));
  }

  /** Uploads the uniforms recorded since the last submit (this recorder's and the shared bind cache's). */
  private writeStaged() {
    const rt = this.rt;
    rt.checkErrors();
    const queue = rt.device.queue;
    rt.bindings.flushUniforms(queue);
    for (const s of this.staged) {
      if (s.to > s.from) queue.writeBuffer(s.buffer, s.from, s.bytes.buffer, s.from, Math.ceil((s.to - s.from) / 4) * 4);
      s.from = s.to;
    }
    this.staged.splice(0, this.staged.length - 1); // the last chunk may receive more uniforms
  }

  private submitCommands(commands: GPUCommandBuffer) {
    this.rt.device.pushErrorScope("validation");
    this.rt.device.queue.submit([commands]);
    this.rt.trackErrorScope(this.label);
  }

  /** The recorded ops as one command buffer (each dispatch in its own timed pass with `profile`). */
  private encodeCommands(profile: Profile | null): GPUCommandBuffer {
    const rt = this.rt;
    const enc = rt.device.createCommandEncoder({ label: this.label });
    let pass: GPUComputePassEncoder | null = null;
    let d = 0;
    for (const op of this.ops) {
      if (op.kind === "dispatch") {
        if (profile) {
          const querySet = profile.sets[Math.floor(d / profile.perSet)]!, q = 2 * (d % profile.perSet);
          pass = enc.beginComputePass({ label: op.label, timestampWrites: { querySet, beginningOfPassWriteIndex: q, endOfPassWriteIndex: q + 1 } });
          d++;
        }
        pass ??= enc.beginComputePass({ label: this.label });
        pass.setPipeline(op.pipeline);
        pass.setBindGroup(0, op.bindGroup);
        pass.dispatchWorkgroups(op.workgroups[0], op.workgroups[1], op.workgroups[2]);
        if (profile) {
          pass.end();
          pass = null;
        }
      } else {
        if (pass) {
          pass.end();
          pass = null;
        }
        if (op.kind === "copy") {
          enc.copyBufferToBuffer(op.src.buffer, op.src.byteOffset + op.srcOffset, op.dst.buffer, op.dst.byteOffset + op.dstOffset, op.bytes);
        } else enc.clearBuffer(op.dst.buffer, op.dst.byteOffset, op.dst.byteLength);
      }
    }
    pass?.end();
    if (profile) {
      profile.sets.forEach((set, i) => {
        const count = 2 * Math.min(profile.perSet, profile.n - i * profile.perSet);
        enc.resolveQuerySet(set, 0, count, profile.resolve, 16 * i * profile.perSet);
      });
      enc.copyBufferToBuffer(profile.resolve, 0, profile.staging, 0, 16 * profile.n);
    }
    return enc.finish();
  }

  /** Frees the uniform buffers. Call after the submitted work is no longer needed again. */
  release() {
    for (const b of this.uniformChunks) this.rt.destroyBuffer(b);
    this.uniformChunks.length = 0;
    this.staged.length = 0;
    this.chunkUsed = UNIFORM_CHUNK;
    for (const b of this.scratchAll) this.rt.buffers.release(b);
    this.scratchAll.length = 0;
    this.scratchFree.clear();
    if (this.cacheBindings && !this.released) this.rt.bindings.recordingReleased();
    this.released = true;
    this.ops.length = 0;
    this.version++;
  }
}
