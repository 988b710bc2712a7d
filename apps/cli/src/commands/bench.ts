import { getRuntime } from "@tuneloom/kernels";
import { parseFlags } from "../args.ts";
import { kernelBenchmarks } from "../bench/kernels.ts";
import { benchTrain } from "../bench/train.ts";
import { benchDecode } from "../bench/decode.ts";

/**
 * `bun run bench -- --kernels [--quick]`, or
 * `bun run bench -- --train --model smollm2-135m|qwen2.5-0.5b|llama3.2-1b|tiny --batch 8 --seq 512 --rank 16 [--no-gradient-checkpointing] [--steps N] [--weight-dtype f16|bf16|f32]`.
 * `bun run bench -- --decode --model smollm2-135m|qwen2.5-0.5b|llama3.2-1b|tiny [--tokens 128] [--batch 1] [--weight-dtype ...]`.
 * Prints one JSON line per measurement.
 */
export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, {
    kernels: "boolean", quick: "boolean", train: "boolean", model: "string", batch: "number", seq: "number", rank: "number",
    steps: "number", "no-gradient-checkpointing": "boolean", "weight-dtype": "string",
    decode: "boolean", tokens: "number",
  }, "bench");
  if (flags.decode) {
    const line = await benchDecode({
      model: flags.model ?? "smollm2-135m", tokens: flags.tokens ?? 128, batch: flags.batch ?? 1,
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined,
    });
    console.log(JSON.stringify(line));
    return 0;
  }
  if (flags.train) {
    const line = await benchTrain({
      model: flags.model ?? "smollm2-135m", batch: flags.batch ?? 8, seq: flags.seq ?? 512, rank: flags.rank ?? 16,
      steps: flags.steps ?? 8, gradientCheckpointing: !flags["no-gradient-checkpointing"],
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined,
    });
    console.log(JSON.stringify(line));
    return 0;
  }
  if (!flags.kernels) throw new Error("say what to measure: --kernels, --train or --decode (see the command's doc)");
  const rt = await getRuntime();
  console.error(`bench: ${rt.caps.description} (${rt.caps.vendor})`);
  for await (const line of kernelBenchmarks(rt, flags.quick ?? false)) console.log(JSON.stringify(line));
  return 0;
}
