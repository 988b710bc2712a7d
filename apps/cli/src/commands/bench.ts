import { getRuntime } from "@tuneloom/kernels";
import { parseFlags } from "../args.ts";
import { kernelBenchmarks } from "../bench/kernels.ts";

/**
 * `bun run bench -- --kernels [--quick]` prints one JSON line per measurement.
 * (`--train` and `--decode` arrive with the trainer and the inference engine.)
 */
export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, { kernels: "boolean", quick: "boolean" }, "bench");
  if (!flags.kernels) throw new Error("say what to measure: --kernels");
  const rt = await getRuntime();
  console.error(`bench: ${rt.caps.description} (${rt.caps.vendor})`);
  for await (const line of kernelBenchmarks(rt, flags.quick ?? false)) console.log(JSON.stringify(line));
  return 0;
}
