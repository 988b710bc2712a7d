/**
 * The GPU runtime every kernel, the model and the trainer share: one Dawn device, tracked
 * buffers with a reuse pool, cached pipelines, and Recorders that collect dispatches so a
 * whole training step can go to the GPU as one submit.
 */
import { handleShaderOutput } from "./dawn-messages.ts";
import { captureNativeOutput } from "./native-output.ts";
import { acquireDevice, type AcquiredDevice, type Capabilities } from "./device.ts";
import { type DType, numelOf, storageBytes } from "./dtype.ts";
import { DeviceLostError, GpuError } from "./errors.ts";
import { BindingCache } from "./bind-cache.ts";
import { MemoryTracker, poolBucketSize } from "./memory.ts";
import { Tensor } from "./tensor.ts";

const STORAGE = 0x80 | 0x04 | 0x08; // STORAGE | COPY_SRC | COPY_DST

/** A WGSL kernel: its source and a name used in labels and error messages. */
export interface KernelSource {
  name: string;
  code: string;
}

export class GpuRuntime {
  readonly memory = new MemoryTracker();
  /** CPU time spent recording dispatches (bind groups, uniforms), for the benchmarks. */
  readonly recordStats = { ms: 0, dispatches: 0 };
  /** When set, every Recorder.submit() is timed per dispatch and its timings land here. */
  profiled: Promise<DispatchTiming[]>[] | null = null;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly pool = new Map<string, GPUBuffer[]>();
  private readonly sizes = new WeakMap<GPUBuffer, number>();
  private readonly pendingErrors: Promise<void>[] = [];
  private lost: DeviceLostError | null = null;
  private uncaptured: GpuError[] = [];

  /** Bind groups and uniforms shared by recordings made with `{ cacheBindings: true }`. */
  readonly bindings: BindingCache;

  private constructor(private readonly acquired: AcquiredDevice) {
    const device = acquired.device;
    this.bindings = new BindingCache(device, (bytes) => this.createBuffer(bytes, "uniform-arena", 0x40 | 0x08), (b) => this.destroyBuffer(b));
    device.lost.then((info) => {
      this.lost = new DeviceLostError(info.reason ?? "unknown", info.message);
    });
    device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      this.uncaptured.push(new GpuError("uncaptured", ev.error.message));
    };
  }

  static async create(): Promise<GpuRuntime> {
    return new GpuRuntime(await acquireDevice());
  }

  get device(): GPUDevice {
    return this.acquired.device;
  }
  get caps(): Capabilities {
    return this.acquired.caps;
  }

  /** Throws the first GPU error seen so far (device loss first). */
  checkErrors() {
    if (this.lost) throw this.lost;
    const e = this.uncaptured.shift();
    if (e) {
      this.uncaptured = [];
      throw e;
    }
  }

  // ---------------------------------------------------------------- buffers

  /** A fresh storage buffer from the device (tracked), at least 4 bytes. */
  createBuffer(bytes: number, label: string, usage = STORAGE): GPUBuffer {
    this.checkErrors();
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    if (size > this.caps.limits.maxBufferSize) {
      throw new Error(`${label}: ${size} bytes exceeds the device's maxBufferSize ${this.caps.limits.maxBufferSize}`);
    }
    const buffer = this.device.createBuffer({ size, usage, label });
    this.sizes.set(buffer, size);
    this.memory.allocated(size);
    this.memory.acquired(size);
    return buffer;
  }

  /** Frees a buffer made by createBuffer or acquireBuffer now (not back to the pool). */
  destroyBuffer(buffer: GPUBuffer) {
    const size = this.sizes.get(buffer);
    if (size === undefined) return; // not ours, or destroyed already
    this.sizes.delete(buffer);
    this.memory.released(size);
    this.memory.freed(size);
    this.bindings.forgetBuffer(buffer);
    buffer.destroy();
  }

  /** A storage buffer from the pool (bucketed sizes), or a new one. Give it back with releaseBuffer. */
  acquireBuffer(bytes: number, label: string): GPUBuffer {
    const size = poolBucketSize(Math.max(4, bytes));
    const free = this.pool.get(String(size));
    const reused = free?.pop();
    if (reused) {
      this.memory.acquired(size);
      return reused;
    }
    return this.createBuffer(size, label);
  }

  releaseBuffer(buffer: GPUBuffer) {
    const size = this.sizes.get(buffer);
    if (size === undefined) return;
    this.memory.released(size);
    const key = String(size);
    let list = this.pool.get(key);
    if (!list) this.pool.set(key, (list = []));
    list.push(buffer);
  }

  /** Frees every pooled (unused) buffer. */
  trimPool() {
    for (const list of this.pool.values()) {
      for (const b of list) {
        const size = this.sizes.get(b)!;
        this.sizes.delete(b);
        this.memory.freed(size);
        this.bindings.forgetBuffer(b);
        b.destroy();
      }
    }
    this.pool.clear();
  }

  // ---------------------------------------------------------------- tensors

  /** An uninitialised tensor in a pooled buffer. */
  empty(dtype: DType, shape: readonly number[], label = "tensor"): Tensor {
    const bytes = storageBytes(dtype, numelOf(shape));
    return new Tensor(this.acquireBuffer(bytes, label), dtype, shape, 0, label);
  }

  /** A zero-filled tensor (zeroed on the queue before any later submit). */
  zeros(dtype: DType, shape: readonly number[], label = "zeros"): Tensor {
    const t = this.empty(dtype, shape, label);
    const enc = this.device.createCommandEncoder({ label: `${label}:clear` });
    enc.clearBuffer(t.buffer, 0, t.byteLength);
    this.device.queue.submit([enc.finish()]);
    return t;
  }

  /**
   * Uploads host data as a new tensor. 16-bit data is passed as raw u16 bits (Uint16Array),
   * never as a Float16Array (dawn.node reads its element size as 0 and dies with SIGFPE).
   */
  upload(dtype: DType, shape: readonly number[], data: ArrayBufferView, label = "upload"): Tensor {
    const t = this.empty(dtype, shape, label);
    this.write(t, data);
    return t;
  }

  /** Writes host data into a tensor (queued before the next submit). */
  write(t: Tensor, data: ArrayBufferView, elementOffset = 0) {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const elemBytes = t.dtype === "f16" || t.dtype === "bf16" ? 2 : 4;
    const offset = t.byteOffset + elementOffset * elemBytes;
    if (offset + bytes.byteLength > t.byteOffset + t.byteLength) {
      throw new Error(`write into ${t.label}: ${bytes.byteLength} bytes at element ${elementOffset} overruns ${t.byteLength} bytes`);
    }
    // writeBuffer needs a multiple of 4 bytes: pad a trailing odd 16-bit element.
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      this.device.queue.writeBuffer(t.buffer, offset, padded.buffer, 0, padded.byteLength);
    } else {
      this.device.queue.writeBuffer(t.buffer, offset, bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
  }

  /** Reads a tensor back (waits for all submitted work). */
  async readBytes(t: Tensor): Promise<ArrayBuffer> {
    this.checkErrors();
    const size = Math.max(4, t.byteLength);
    const staging = this.device.createBuffer({ size, usage: 0x0001 | 0x0008, label: `${t.label}:readback` });
    const enc = this.device.createCommandEncoder({ label: `${t.label}:readback` });
    enc.copyBufferToBuffer(t.buffer, t.byteOffset, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    try {
      await staging.mapAsync(0x0001);
    } catch (err) {
      this.checkErrors();
      throw new GpuError(`${t.label}:readback`, (err as Error).message);
    }
    const out = staging.getMappedRange().slice(0, t.numel * (t.dtype === "f16" || t.dtype === "bf16" ? 2 : 4));
    staging.unmap();
    staging.destroy();
    await this.flushErrorScopes();
    this.checkErrors();
    return out;
  }

  /** Reads an f32/f16/bf16 tensor as Float32Array (16-bit values widened exactly). */
  async read(t: Tensor): Promise<Float32Array> {
    const bytes = await this.readBytes(t);
    if (t.dtype === "f32") return new Float32Array(bytes);
    if (t.dtype === "bf16") {
      const u16 = new Uint16Array(bytes);
      const u32 = new Uint32Array(u16.length);
      for (let i = 0; i < u16.length; i++) u32[i] = u16[i]! << 16;
      return new Float32Array(u32.buffer);
    }
    if (t.dtype === "f16") return Float32Array.from(new Float16Array(bytes));
    throw new Error(`read: ${t.label} is ${t.dtype}; use readBytes`);
  }

  /**
   * Reads several tensors back in one round trip: one copy each into a shared staging buffer,
   * one submit, one map. Returns each tensor's bytes (numel × element size), in order.
   */
  async readMany(tensors: readonly Tensor[]): Promise<ArrayBuffer[]> {
    this.checkErrors();
    const at: number[] = [];
    let size = 0;
    for (const t of tensors) {
      at.push(size);
      size += Math.max(4, Math.ceil(t.byteLength / 4) * 4);
    }
    const staging = this.createBuffer(size, "readMany:readback", 0x0001 | 0x0008); // MAP_READ | COPY_DST
    const enc = this.device.createCommandEncoder({ label: "readMany" });
    tensors.forEach((t, i) => enc.copyBufferToBuffer(t.buffer, t.byteOffset, staging, at[i]!, Math.max(4, Math.ceil(t.byteLength / 4) * 4)));
    this.device.queue.submit([enc.finish()]);
    try {
      const bytes = await this.mapRead(staging, size, "readMany");
      return tensors.map((t, i) => bytes.slice(at[i]!, at[i]! + t.numel * (t.dtype === "f16" || t.dtype === "bf16" ? 2 : 4)));
    } finally {
      this.destroyBuffer(staging);
    }
  }

  /**
   * Maps a MAP_READ buffer once the work submitted so far is done, copies its first `bytes` out
   * and unmaps it (so it can be copied into again), then reports any GPU error seen meanwhile.
   * For persistent readback buffers that a replayed recording copies its results into.
   */
  async mapRead(buffer: GPUBuffer, bytes: number, label = buffer.label): Promise<ArrayBuffer> {
    this.checkErrors();
    try {
      await buffer.mapAsync(0x0001, 0, Math.ceil(bytes / 4) * 4);
    } catch (err) {
      this.checkErrors();
      throw new GpuError(`${label}:map`, (err as Error).message);
    }
    const out = buffer.getMappedRange(0, Math.ceil(bytes / 4) * 4).slice(0, bytes);
    buffer.unmap();
    await this.flushErrorScopes();
    this.checkErrors();
    return out;
  }

  async readI32(t: Tensor): Promise<Int32Array> {
    return new Int32Array(await this.readBytes(t));
  }
  async readU32(t: Tensor): Promise<Uint32Array> {
    return new Uint32Array(await this.readBytes(t));
  }

  release(...tensors: (Tensor | undefined | null)[]) {
    for (const t of tensors) if (t && t.byteOffset === 0) this.releaseBuffer(t.buffer);
  }

  /** Waits until the GPU finished everything submitted so far, then reports any error. */
  async sync() {
    await this.device.queue.onSubmittedWorkDone();
    await this.flushErrorScopes();
    this.checkErrors();
  }

  // ---------------------------------------------------------------- pipelines

  /**
   * The compute pipeline of `kernel` specialised by its override constants, built once.
   * Compilation/validation errors are reported by the next sync()/read, naming the kernel.
   */
  pipeline(kernel: KernelSource, constants: Record<string, number> = {}, entryPoint = "main"): GPUComputePipeline {
    const key = `${kernel.name}|${entryPoint}|${Object.entries(constants).sort().map(([k, v]) => `${k}=${v}`).join(",")}|${kernel.code.length}`;
    const cached = this.pipelines.get(key);
    if (cached) return cached;
    this.checkErrors();
    const device = this.device;
    let module = this.modules.get(kernel.code);
    const label = `${kernel.name}${Object.keys(constants).length ? `<${Object.entries(constants).map(([k, v]) => `${k}=${v}`).join(",")}>` : ""}`;
    device.pushErrorScope("validation");
    if (!module) {
      const code = kernel.code;
      const { result, output } = captureNativeOutput(() => device.createShaderModule({ code, label: kernel.name }));
      handleShaderOutput(output);
      module = result;
      this.modules.set(kernel.code, module);
    }
    const pipeline = device.createComputePipeline({
      label,
      layout: "auto",
      compute: { module, entryPoint, constants },
    });
    this.pendingErrors.push(
      device.popErrorScope().then((err) => {
        if (err) {
          this.pipelines.delete(key);
          // The root cause goes first: later errors (bind groups of this pipeline) only echo it.
          this.uncaptured.unshift(new GpuError(label, err.message));
        }
      }),
    );
    this.pipelines.set(key, pipeline);
    return pipeline;
  }

  /** Like pipeline(), but waits for validation so a broken kernel throws right here. */
  async pipelineChecked(kernel: KernelSource, constants: Record<string, number> = {}, entryPoint = "main") {
    const p = this.pipeline(kernel, constants, entryPoint);
    await this.flushErrorScopes();
    this.checkErrors();
    return p;
  }

  /** Pops the error scope pushed before a submit; an error there names `label`. */
  trackErrorScope(label: string) {
    this.pendingErrors.push(
      this.device.popErrorScope().then((err) => {
        if (err) this.uncaptured.push(new GpuError(label, err.message));
      }),
    );
  }

  /** A 16-byte tensor bound where a kernel's optional input is absent (never read). */
  get placeholder(): Tensor {
    this.placeholderTensor ??= new Tensor(this.createBuffer(16, "placeholder"), "f32", [4], 0, "placeholder");
    return this.placeholderTensor;
  }
  private placeholderTensor: Tensor | null = null;

  /**
   * A 16-byte tensor bound where a kernel's optional read_write output is absent (the kernel
   * skips or clamps its writes there; never read). One per `slot`, made once per runtime:
   * absent outputs of one dispatch take distinct slots, as WebGPU rejects a buffer bound
   * writable twice in one dispatch (so `placeholder` can stand in for only one of them).
   */
  writablePlaceholder(slot: number): Tensor {
    return (this.writablePlaceholders[slot] ??=
      new Tensor(this.createBuffer(16, `placeholder:w${slot}`), "f32", [4], 0, `placeholder:w${slot}`));
  }
  private readonly writablePlaceholders: Tensor[] = [];

  private async flushErrorScopes() {
    while (this.pendingErrors.length) await this.pendingErrors.shift();
  }

  /** Starts recording a batch of GPU work; submit() sends it as one command buffer. */
  /**
   * `flushEvery`: see Recorder. `cacheBindings`: take uniforms and bind groups from the
   * runtime's BindingCache (bind-cache.ts) instead of creating them, for recordings that repeat
   * the same dispatches (training steps).
   */
  recorder(label = "work", opts: { flushEvery?: number; cacheBindings?: boolean } = {}): Recorder {
    return new Recorder(this, label, opts.flushEvery ?? 0, opts.cacheBindings ?? false);
  }

  /** The pipeline's bind group layout, fetched from Dawn once. */
  bindGroupLayout(pipeline: GPUComputePipeline): GPUBindGroupLayout {
    let layout = this.layouts.get(pipeline);
    if (!layout) this.layouts.set(pipeline, (layout = pipeline.getBindGroupLayout(0)));
    return layout;
  }
  private readonly layouts = new WeakMap<GPUComputePipeline, GPUBindGroupLayout>();
}

/** Uniform parameter blocks are packed into shared buffers at this alignment. */
const UNIFORM_ALIGN = 256;
const UNIFORM_CHUNK = 64 * 1024;

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
   * long one-shot recordings such as a training step. 0: only explicit submits.
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
      buffer = this.rt.acquireBuffer(size, `${this.label}:${label}`);
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
    if (this.flushEvery && this.ops.length >= this.flushEvery) this.flush();
  }

  /**
   * Submits what is recorded so far and starts over (uniforms and scratch stay alive until
   * release()), so the GPU works while the CPU records the rest. A flushed recorder cannot be
   * submitted again as a whole.
   */
  flush() {
    this.submit();
    this.ops.length = 0;
  }

  copy(src: Tensor, dst: Tensor, bytes = src.byteLength, srcOffset = 0, dstOffset = 0) {
    if (srcOffset + bytes > src.byteLength || dstOffset + bytes > dst.byteLength) {
      throw new Error(`copy ${src.label} -> ${dst.label}: ${bytes} bytes out of range`);
    }
    this.ops.push({ kind: "copy", src, dst, bytes, srcOffset, dstOffset });
  }

  clear(dst: Tensor) {
    this.ops.push({ kind: "clear", dst });
  }

  /** Encodes and submits all recorded work as one command buffer. */
  submit() {
    if (this.rt.profiled) this.rt.profiled.push(this.submitProfiled());
    else this.encodeAndSubmit(null);
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

  private encodeAndSubmit(profile: { sets: GPUQuerySet[]; perSet: number; resolve: GPUBuffer; staging: GPUBuffer; n: number } | null) {
    const rt = this.rt;
    rt.checkErrors();
    const queue = rt.device.queue;
    rt.bindings.flushUniforms(queue);
    for (const s of this.staged) {
      if (s.to > s.from) queue.writeBuffer(s.buffer, s.from, s.bytes.buffer, s.from, Math.ceil((s.to - s.from) / 4) * 4);
      s.from = s.to;
    }
    this.staged.splice(0, this.staged.length - 1); // the last chunk may receive more uniforms
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
    rt.device.pushErrorScope("validation");
    queue.submit([enc.finish()]);
    rt.trackErrorScope(this.label);
  }

  /** Frees the uniform buffers. Call after the submitted work is no longer needed again. */
  release() {
    for (const b of this.uniformChunks) this.rt.destroyBuffer(b);
    this.uniformChunks.length = 0;
    this.staged.length = 0;
    this.chunkUsed = UNIFORM_CHUNK;
    for (const b of this.scratchAll) this.rt.releaseBuffer(b);
    this.scratchAll.length = 0;
    this.scratchFree.clear();
    if (this.cacheBindings && !this.released) this.rt.bindings.recordingReleased();
    this.released = true;
    this.ops.length = 0;
  }
}

let shared: Promise<GpuRuntime> | null = null;

/** The process-wide runtime (one device per process). */
export function getRuntime(): Promise<GpuRuntime> {
  shared ??= GpuRuntime.create();
  return shared;
}
