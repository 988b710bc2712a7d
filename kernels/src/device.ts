/**
 * Dawn WebGPU device acquisition for Bun (npm `webgpu`), with the facts from
 * shared/gpu/NOTES.md built in:
 *  - the `GPU` object and the adapter stay referenced for as long as the device lives
 *    (Bun's GC otherwise frees Dawn's instance and the next mapAsync segfaults);
 *  - NVIDIA needs `allow_unsafe_apis,vulkan_enable_f16_on_nvidia` for shader-f16 and
 *    subgroup matrices (tensor cores from WGSL);
 *  - Float16Array must never reach writeBuffer (the runtime's upload() converts views).
 */
import { handleAdapterOutput } from "./dawn-messages.ts";
import { captureNativeOutputAsync } from "./native-output.ts";
import { create, globals } from "webgpu";
import { GpuUnavailableError } from "./errors.ts";
import { throttleDawnPolling } from "./poll-throttle.ts";
import { EMULATED_CONFIG, subgroupMatrixEmulationRequested } from "./subgroup-matrix-emulation.ts";

// WebGPU enums (GPUBufferUsage, GPUMapMode, ...) as globals, the way browsers have them.
Object.assign(globalThis, globals);

export const DAWN_TOGGLES = "enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia";
/** Extra Dawn toggles to enable, comma-separated (experiments, e.g. TUNELOOM_DAWN_ENABLE=vulkan_use_cooperative_matrix_robust_access). */
const extraToggles = () => (process.env.TUNELOOM_DAWN_ENABLE ?? "").split(",").map((t) => t.trim()).filter((t) => /^[a-z0-9_]+$/.test(t));
/**
 * Dawn's robustness transform clamps every array index of every shader (storage, uniform,
 * workgroup and function arrays, subgroup-matrix loads and stores). On the H100 it cost a third
 * of the tensor-core GEMM's time (4096x1536x576: 64 → 97 TFLOP/s without it, docs/kernels.md).
 * tuneloom's kernels stay in bounds by construction instead: every wrapper checks its tensors'
 * sizes against the dispatch (expectTensor, matmul's `need`), and every shader guards its
 * global reads and writes against the sizes in its Params. So on GPUs the transform is off;
 * on software adapters (lavapipe: the GPU memory is the process's own) it stays on, and
 * TUNELOOM_ROBUSTNESS=1 keeps it on everywhere.
 */
export const robustnessOffOnGpus = () => process.env.TUNELOOM_ROBUSTNESS !== "1";
/** Full-resolution GPU timestamps for the profiler (Dawn quantizes them by default). */
export const DAWN_DISABLED = "disable-dawn-features=timestamp_quantization";

export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

export interface Capabilities {
  vendor: string;
  architecture: string;
  description: string;
  device: string;
  backend: string;
  isSoftware: boolean;
  /** Dawn's bounds clamping in shaders (off on GPUs: see robustnessOffOnGpus). */
  robustness: boolean;
  shaderF16: boolean;
  subgroups: boolean;
  subgroupMinSize: number;
  subgroupMaxSize: number;
  subgroupMatrix: boolean;
  subgroupMatrixConfigs: SubgroupMatrixConfig[];
  /**
   * Subgroup matrices emulated in plain WGSL (subgroup-matrix-emulation.ts): a CPU driver asked
   * for them with TUNELOOM_EMULATE_TC=1, so the tensor-core kernels run there for their tests.
   */
  subgroupMatrixEmulated: boolean;
  timestampQuery: boolean;
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupSizeX: number;
    maxComputeWorkgroupsPerDimension: number;
    maxStorageBuffersPerShaderStage: number;
    minStorageBufferOffsetAlignment: number;
    minUniformBufferOffsetAlignment: number;
  };
}

export interface AcquiredDevice {
  /** Held so Bun's GC cannot free Dawn's instance while the device lives. */
  gpu: GPU;
  adapter: GPUAdapter;
  device: GPUDevice;
  caps: Capabilities;
}

/** Module-level anchor: every GPU object and adapter ever handed out stays reachable. */
const keepAlive: unknown[] = [];

function readCapabilities(adapter: GPUAdapter): Capabilities {
  const info = adapter.info as GPUAdapterInfo & {
    subgroupMinSize?: number;
    subgroupMaxSize?: number;
    subgroupMatrixConfigs?: Iterable<Record<string, unknown>>;
    backendType?: string;
  };
  const has = (f: string) => adapter.features.has(f as GPUFeatureName);
  // Config fields are getters on Dawn's objects: read them one by one (JSON.stringify shows {}).
  const configs: SubgroupMatrixConfig[] = [];
  for (const c of info.subgroupMatrixConfigs ?? []) {
    configs.push({
      componentType: String(c.componentType),
      resultComponentType: String(c.resultComponentType),
      M: Number(c.M),
      N: Number(c.N),
      K: Number(c.K),
    });
  }
  const l = adapter.limits;
  const description = info.description ?? "";
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    description,
    device: info.device ?? "",
    backend: info.backendType ?? "vulkan",
    isSoftware: /llvmpipe|lavapipe|swiftshader/i.test(description + " " + (info.device ?? "")),
    robustness: true,
    shaderF16: has("shader-f16"),
    subgroups: has("subgroups"),
    subgroupMinSize: info.subgroupMinSize ?? 0,
    subgroupMaxSize: info.subgroupMaxSize ?? 0,
    subgroupMatrix: has("chromium-experimental-subgroup-matrix") && configs.length > 0,
    subgroupMatrixConfigs: configs,
    subgroupMatrixEmulated: false,
    timestampQuery: has("timestamp-query"),
    limits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
    },
  };
}

/** Requests the adapter (high performance) and a device with every feature and the largest limits the kernels use. */
export async function acquireDevice(): Promise<AcquiredDevice> {
  let gpu: GPU;
  try {
    gpu = create([[DAWN_TOGGLES, ...extraToggles()].join(","), DAWN_DISABLED]) as unknown as GPU;
  } catch (err) {
    throw new GpuUnavailableError(`loading dawn.node failed: ${(err as Error).message}`);
  }
  keepAlive.push(gpu);
  const request = async (g: GPU) => {
    const { result, output } = await captureNativeOutputAsync(() => g.requestAdapter({ powerPreference: "high-performance" }));
    handleAdapterOutput(output);
    return result;
  };
  let adapter = await request(gpu);
  if (!adapter) throw new GpuUnavailableError();
  keepAlive.push(adapter);
  let caps = readCapabilities(adapter);
  if (caps.isSoftware && !caps.subgroupMatrix && caps.shaderF16 && subgroupMatrixEmulationRequested()) {
    caps = { ...caps, subgroupMatrix: true, subgroupMatrixConfigs: [{ ...EMULATED_CONFIG }], subgroupMatrixEmulated: true };
  }
  if (!caps.isSoftware && robustnessOffOnGpus()) {
    // Toggles belong to the instance: a second one, without robustness, for the same GPU.
    const fast = create([[DAWN_TOGGLES, "disable_robustness", ...extraToggles()].join(","), DAWN_DISABLED]) as unknown as GPU;
    keepAlive.push(fast);
    const a = await request(fast);
    if (a) {
      keepAlive.push(a);
      gpu = fast;
      adapter = a;
      caps = { ...readCapabilities(a), robustness: false };
    }
  }

  const wanted = ["shader-f16", "subgroups", "chromium-experimental-subgroup-matrix", "timestamp-query"];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f as GPUFeatureName)) as GPUFeatureName[];
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    label: "tuneloom",
    requiredFeatures,
    requiredLimits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    },
  });
  keepAlive.push(device);
  // A CPU driver needs every core: dawn.node's wait loop must not spin one (poll-throttle.ts).
  if (caps.isSoftware) throttleDawnPolling();
  return { gpu, adapter, device, caps };
}

/** Human-readable capability report (what `bun run gpu-info` prints). */
export function formatCapabilities(caps: Capabilities): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const lines = [
    `adapter:        ${caps.description || caps.device} (${caps.vendor}${caps.architecture ? ", " + caps.architecture : ""})`,
    `backend:        ${caps.backend}${caps.isSoftware ? " (software rasterizer: expect CPU speed)" : ""}`,
    `robustness:     ${caps.robustness ? "on (Dawn clamps every shader index)" : "off (kernels stay in bounds by construction; TUNELOOM_ROBUSTNESS=1 turns it on)"}`,
    `shader-f16:     ${caps.shaderF16 ? "yes" : "no"}`,
    `subgroups:      ${caps.subgroups ? `yes (size ${caps.subgroupMinSize}${caps.subgroupMaxSize !== caps.subgroupMinSize ? `-${caps.subgroupMaxSize}` : ""})` : "no"}`,
    `subgroup matrices: ${caps.subgroupMatrixEmulated ? "emulated in WGSL (TUNELOOM_EMULATE_TC=1: for tests, not speed)" : caps.subgroupMatrix ? `yes, ${caps.subgroupMatrixConfigs.length} configs` : "no (portable matmul path)"}`,
    ...caps.subgroupMatrixConfigs.map(
      (c) => `  ${c.componentType} -> ${c.resultComponentType}  M=${c.M} N=${c.N} K=${c.K}`,
    ),
    `timestamp-query: ${caps.timestampQuery ? "yes" : "no"}`,
    `limits:`,
    `  maxStorageBufferBindingSize     ${mib(caps.limits.maxStorageBufferBindingSize)}`,
    `  maxBufferSize                   ${mib(caps.limits.maxBufferSize)}`,
    `  maxComputeWorkgroupStorageSize  ${caps.limits.maxComputeWorkgroupStorageSize} B`,
    `  maxComputeInvocationsPerWorkgroup ${caps.limits.maxComputeInvocationsPerWorkgroup}`,
    `  maxComputeWorkgroupsPerDimension ${caps.limits.maxComputeWorkgroupsPerDimension}`,
    `  maxStorageBuffersPerShaderStage ${caps.limits.maxStorageBuffersPerShaderStage}`,
  ];
  return lines.join("\n");
}
