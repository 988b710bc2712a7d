import { acquireDevice, formatCapabilities } from "@tuneloom/kernels";
import { parseFlags } from "../args.ts";

/** `bun run gpu-info [--json]`: the adapter's capability report. */
export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, { json: "boolean" }, "gpu-info");
  const { caps, device } = await acquireDevice();
  console.log(flags.json ? JSON.stringify(caps, null, 2) : formatCapabilities(caps));
  device.destroy();
  return 0;
}
