/**
 * The GPU runtime every kernel, the model and the trainer share: one Dawn device and the parts
 * built on it, each in its own module: buffers (buffer-pool.ts), pipelines (pipeline-cache.ts),
 * errors (gpu-errors.ts), bind groups and uniforms (bind-cache.ts), and Recorders
 * (recorder.ts) that collect dispatches so a whole training step goes to the GPU as one submit.
 * This class holds the tensor-level API (empty, upload, read, release, sync) on top of them.
 */
import { BindingCache } from "./bind-cache.ts";
import { BufferPool } from "./buffer-pool.ts";
import { acquireDevice, type AcquiredDevice, type Capabilities } from "./device.ts";
import { type DType, numelOf, storageBytes } from "./dtype.ts";
import { GpuError } from "./errors.ts";
import { GpuErrorState } from "./gpu-errors.ts";
import { MemoryTracker } from "./memory.ts";
import { type KernelSource, PipelineCache } from "./pipeline-cache.ts";
import { type DispatchTiming, Recorder } from "./recorder.ts";
import { Tensor } from "./tensor.ts";

export type { KernelSource } from "./pipeline-cache.ts";
export { type DispatchTiming, type PreparedCommands, Recorder } from "./recorder.ts";

export class GpuRuntime {
  readonly memory = new MemoryTracker();
  /**
   * CPU time spent recording dispatches (bind groups, uniforms) and their count, for the benchmarks;
   * submits of command buffers encoded ahead (Recorder.prepare).
   */
  readonly recordStats = { ms: 0, dispatches: 0, preparedSubmits: 0 };
  /** When set, every Recorder.submit() is timed per dispatch and its timings land here. */
  profiled: Promise<DispatchTiming[]>[] | null = null;
  /** Device loss, uncaptured errors and pending validation scopes. */
  readonly errors: GpuErrorState;
  /** Storage buffers: tracked allocation and the reuse pool. */
  readonly buffers: BufferPool;
  /** Compiled pipelines, shader modules and bind group layouts. */
  readonly pipelines: PipelineCache;

  /** Bind groups and uniforms shared by recordings made with `{ cacheBindings: true }`. */
  readonly bindings: BindingCache;

  private constructor(private readonly acquired: AcquiredDevice) {
    const device = acquired.device;
    this.errors = new GpuErrorState(device);
    this.buffers = new BufferPool(device, acquired.caps.limits.maxBufferSize, this.memory, (b) => this.bindings.forgetBuffer(b), () => this.errors.check());
    this.pipelines = new PipelineCache(device, this.errors, acquired.caps.subgroupMatrixEmulated);
    this.bindings = new BindingCache(device, (bytes) => this.buffers.create(bytes, "uniform-arena", 0x40 | 0x08), (b) => this.buffers.destroy(b));
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
    this.errors.check();
  }

  // Buffer-level shorthands (buffer-pool.ts owns the rules).
  createBuffer(bytes: number, label: string, usage?: number): GPUBuffer {
    return this.buffers.create(bytes, label, usage);
  }
  destroyBuffer(buffer: GPUBuffer) {
    this.buffers.destroy(buffer);
  }
  trimPool() {
    this.buffers.trim();
  }

  // ---------------------------------------------------------------- tensors

  /** An uninitialised tensor in a pooled buffer. */
  empty(dtype: DType, shape: readonly number[], label = "tensor"): Tensor {
    const bytes = storageBytes(dtype, numelOf(shape));
    return new Tensor(this.buffers.acquire(bytes, label), dtype, shape, 0, label);
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

  /**
   * Gives tensors' buffers back to the pool. Not while a recording not yet submitted still uses
   * them: the next upload/write/zeros may take the buffer, and its host write, queued at once,
   * lands before that recording runs. Temporaries inside a recording are Recorder.scratch().
   */
  release(...tensors: (Tensor | undefined | null)[]) {
    for (const t of tensors) if (t && t.byteOffset === 0) this.buffers.release(t.buffer);
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
    return this.pipelines.get(kernel, constants, entryPoint);
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
    this.errors.trackScope(label);
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
    await this.errors.flush();
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
    return this.pipelines.bindGroupLayout(pipeline);
  }
}

let shared: Promise<GpuRuntime> | null = null;

/** The process-wide runtime (one device per process). */
export function getRuntime(): Promise<GpuRuntime> {
  shared ??= GpuRuntime.create();
  return shared;
}
