/** The one message every entry point shows when no WebGPU adapter can be had. */
export const NO_ADAPTER_HELP = [
  "no WebGPU adapter found: Dawn (npm 'webgpu') found no Vulkan driver.",
  "On a machine without a GPU install Mesa's software Vulkan driver (lavapipe):",
  "  bun run setup:vulkan        (as root on Debian/Ubuntu; Debian 12 needs Mesa >= 24 from bookworm-backports)",
  "On an NVIDIA machine make sure the driver's Vulkan ICD is installed (libnvidia-gl / nvidia_icd.json).",
].join("\n");

export class GpuUnavailableError extends Error {
  constructor(detail?: string) {
    super(detail ? `${NO_ADAPTER_HELP}\n(${detail})` : NO_ADAPTER_HELP);
    this.name = "GpuUnavailableError";
  }
}

/** A validation, out-of-memory or internal error reported by the GPU, naming the kernel it came from. */
/** What WebGPU said went wrong: GPUOutOfMemoryError, GPUValidationError, GPUInternalError. */
export type GpuErrorKind = "out-of-memory" | "validation" | "internal" | "unknown";

/** The kind of a WebGPU error object (by its class, as dawn.node names them). */
export function gpuErrorKind(err: unknown): GpuErrorKind {
  const name = (err as { constructor?: { name?: string } } | null)?.constructor?.name ?? "";
  if (/OutOfMemory/i.test(name)) return "out-of-memory";
  if (/Validation/i.test(name)) return "validation";
  if (/Internal/i.test(name)) return "internal";
  return "unknown";
}

export class GpuError extends Error {
  constructor(readonly kernel: string, message: string, readonly kind: GpuErrorKind = "unknown") {
    super(`GPU error in ${kernel}: ${message}`);
    this.name = "GpuError";
  }
}

export class DeviceLostError extends Error {
  constructor(reason: string, message: string) {
    super(`GPU device lost (${reason}): ${message || "no message"}. Restart the process; state on the GPU is gone.`);
    this.name = "DeviceLostError";
  }
}
