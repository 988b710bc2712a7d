import { getRuntime } from "@tuneloom/kernels";
import { parseFlags } from "../args.ts";
import { kernelBenchmarks, kernelTolerance } from "../bench/kernels.ts";
import { benchTrain } from "../bench/train.ts";
import { benchDecode } from "../bench/decode.ts";
import { benchServe } from "../bench/serve.ts";
import { benchLoad } from "../bench/load.ts";

/**
 * `bun run bench -- --kernels [--quick] [--ops matmul,rmsnorm,...] [--model smollm2-135m,...]`: every kernel at the
 *   published models' shapes (or tiny ones with --quick), one line per op and shape (bench/kernels.ts); exits 1
 *   if an op failed or a relErr is over its tolerance, after running the rest. Or
 * `bun run bench -- --train --model NAME|DIR --batch 8 --seq 512 --rank 16 [--no-gradient-checkpointing] [--steps N] [--weight-dtype f16|bf16|f32] [--profile] [--target-fraction F]`
 *   (--target-fraction: labels only on the last F of each row, as assistant-only SFT labels; default 1)
 *   (--profile adds GPU ms per kernel of one step, from timestamp queries).
 * `bun run bench -- --decode --model NAME|DIR [--tokens 128] [--batch 1] [--weight-dtype ...]`.
 * `bun run bench -- --serve --model smollm2-135m|qwen2.5-0.5b|llama3.2-1b|tiny [--streams 1,16] [--tokens 128] [--prompt-tokens 64] [--weight-dtype ...]`
 *   (bench/serve.ts: TTFT and decode tok/s over HTTP, one line per stream count).
 * NAME: tiny, smollm2-135m, qwen2.5-0.5b, llama3.2-1b, llama3.2-3b, llama3.1-8b, qwen2.5-7b (random weights of
 * the published shape, written to a temporary directory); DIR: a Hugging Face model directory, loaded as it is.
 * `bun run bench -- --load --model DIR|NAME [--weight-dtype ...] [--repeat N]` (bench/load.ts: weight loading time and GB/s).
 * Prints one JSON line per measurement.
 */
export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, {
    kernels: "boolean", quick: "boolean", train: "boolean", model: "string", batch: "number", seq: "number", rank: "number",
    steps: "number", "no-gradient-checkpointing": "boolean", "weight-dtype": "string",
    decode: "boolean", tokens: "number", ops: "string", profile: "boolean",
    serve: "boolean", streams: "string", "prompt-tokens": "number", "target-fraction": "number",
    load: "boolean", repeat: "number",
  }, "bench");
  if (flags.load) {
    if (!flags.model) throw new Error("--load needs --model DIR (a Hugging Face model directory) or a benchmark model name");
    await benchLoad({ model: flags.model, weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined, repeat: flags.repeat ?? 1 },
      (line) => console.log(JSON.stringify(line)));
    return 0;
  }
  if (flags.serve) {
    await benchServe({
      model: flags.model ?? "smollm2-135m", streams: (flags.streams ?? "1,16").split(",").map((s) => Number(s.trim())),
      tokens: flags.tokens ?? 128, promptTokens: flags["prompt-tokens"] ?? 64,
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined,
    }, (line) => console.log(JSON.stringify(line)));
    return 0;
  }
  if (flags.decode) {
    const line = await benchDecode({
      model: flags.model ?? "smollm2-135m", tokens: flags.tokens ?? 128, batch: flags.batch ?? 1,
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined, profile: flags.profile ?? false,
    });
    console.log(JSON.stringify(line));
    return 0;
  }
  if (flags.train) {
    const line = await benchTrain({
      model: flags.model ?? "smollm2-135m", batch: flags.batch ?? 8, seq: flags.seq ?? 512, rank: flags.rank ?? 16,
      steps: flags.steps ?? 8, gradientCheckpointing: !flags["no-gradient-checkpointing"],
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined, profile: flags.profile ?? false,
      targetFraction: flags["target-fraction"] ?? 1,
    });
    console.log(JSON.stringify(line));
    return 0;
  }
  if (!flags.kernels) throw new Error("say what to measure: --kernels, --train, --decode, --serve or --load (see the command's doc)");
  const rt = await getRuntime();
  console.error(`bench: ${rt.caps.description} (${rt.caps.vendor})`);
  let failed = 0;
  const lines = kernelBenchmarks(rt, {
    quick: flags.quick ?? false,
    ops: flags.ops?.split(",").map((s) => s.trim()).filter(Boolean),
    models: flags.model?.split(",").map((s) => s.trim()).filter(Boolean),
    onError: (op, shape, err) => {
      failed++;
      console.error(`bench: ${op} (${shape}) failed: ${err instanceof Error ? err.message : String(err)}`);
    },
  });
  for await (const line of lines) {
    console.log(JSON.stringify(line));
    if (!(line.relErr <= kernelTolerance(line))) {
      failed++;
      console.error(`bench: ${line.op} ${line.shape} relErr ${line.relErr} is over its tolerance ${kernelTolerance(line)}`);
    }
  }
  return failed ? 1 : 0;
}
