import { acquireDevice, formatCapabilities } from "@tuneloom/kernels";
import { type CommandSpec, parseFlags } from "../args.ts";

const SPEC = {
  name: "gpu-info", usage: "[--json]",
  description: "The WebGPU adapter's capability report: backend, shader-f16, subgroups, subgroup-matrix configs, limits.",
  flags: { json: { type: "boolean", help: "print the report as JSON", default: false } },
} as const satisfies CommandSpec;

/** `bun run gpu-info [--json]`: the adapter's capability report. */
export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  const { caps, device } = await acquireDevice();
  console.log(flags.json ? JSON.stringify(caps, null, 2) : formatCapabilities(caps));
  device.destroy();
  return 0;
}
