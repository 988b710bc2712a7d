/**
 * Compute pipelines of one device, built once per (kernel, override constants, entry point),
 * with their shader modules (one per source) and bind group layouts. Dawn's console output while
 * a module compiles is captured and counted (dawn-messages.ts); validation errors are reported
 * by the runtime's next check, naming the pipeline.
 */
import { handleShaderOutput } from "./dawn-messages.ts";
import type { GpuErrorState } from "./gpu-errors.ts";
import { captureNativeOutput } from "./native-output.ts";
import { emulateSubgroupMatrices } from "./subgroup-matrix-emulation.ts";

/** A WGSL kernel: its source and a name used in labels and error messages. */
export interface KernelSource {
  name: string;
  code: string;
}

export class PipelineCache {
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly layouts = new WeakMap<GPUComputePipeline, GPUBindGroupLayout>();

  /** emulateTc: the device's subgroup matrices are emulated (device.ts), so sources are rewritten. */
  constructor(private readonly device: GPUDevice, private readonly errors: GpuErrorState, private readonly emulateTc = false) {}

  get(kernel: KernelSource, constants: Record<string, number> = {}, entryPoint = "main"): GPUComputePipeline {
    const key = `${kernel.name}|${entryPoint}|${Object.entries(constants).sort().map(([k, v]) => `${k}=${v}`).join(",")}|${kernel.code.length}`;
    const cached = this.pipelines.get(key);
    if (cached) return cached;
    this.errors.check();
    const device = this.device;
    let module = this.modules.get(kernel.code);
    const label = `${kernel.name}${Object.keys(constants).length ? `<${Object.entries(constants).map(([k, v]) => `${k}=${v}`).join(",")}>` : ""}`;
    // Rewritten before the error scope opens: a source the emulation refuses throws here, naming it.
    const code = !module && this.emulateTc ? emulateSubgroupMatrices(kernel.code) : kernel.code;
    device.pushErrorScope("validation");
    if (!module) {
      const { result, output } = captureNativeOutput(() => device.createShaderModule({ code, label: kernel.name }));
      handleShaderOutput(output);
      module = result;
      this.modules.set(kernel.code, module);
    }
    const pipeline = device.createComputePipeline({ label, layout: "auto", compute: { module, entryPoint, constants } });
    this.errors.trackPipelineScope(label, () => this.pipelines.delete(key));
    this.pipelines.set(key, pipeline);
    return pipeline;
  }

  /** The pipeline's bind group layout, fetched from Dawn once. */
  bindGroupLayout(pipeline: GPUComputePipeline): GPUBindGroupLayout {
    let layout = this.layouts.get(pipeline);
    if (!layout) this.layouts.set(pipeline, (layout = pipeline.getBindGroupLayout(0)));
    return layout;
  }
}
