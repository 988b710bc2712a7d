import { getRuntime } from "@tuneloom/kernels";
import { KEEP_LAYERS_EXPECTED, type KeepLayers, parseKeepLayers } from "@tuneloom/trainer";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";
import { kernelBenchmarks, kernelTolerance } from "../bench/kernels.ts";
import { benchTrain, planTrainFull } from "../bench/train.ts";
import { benchDecode } from "../bench/decode.ts";
import { benchServe } from "../bench/serve.ts";
import { benchLoad } from "../bench/load.ts";
import { benchMultiLora, parseAdapterCounts } from "../bench/multi-lora.ts";

/**
 * `bun run bench -- --kernels [--quick] [--ops matmul,rmsnorm,...] [--model smollm2-135m,...]`: every kernel at the
 *   published models' shapes (or tiny ones with --quick), one line per op and shape (bench/kernels.ts); exits 1
 *   if an op failed or a relErr is over its tolerance, after running the rest. Or
 * `bun run bench -- --train --model NAME|DIR --batch 8 --seq 512 (--rank 16 | --full) [--no-gradient-checkpointing] [--steps N] [--weight-dtype f16|bf16|f32] [--profile] [--target-fraction F]`
 *   (--full: full fine-tuning's step, as shared/bench/peft_bench.py --full 1; its memory statement and flat-buffer plan go
 *   to stderr first; --train --full --plan prints only those, as the JSON line, without loading the model)
 *   (--target-fraction: labels only on the last F of each row, as assistant-only SFT labels; default 1)
 *   (--profile adds GPU ms per kernel of one step, from timestamp queries).
 * `bun run bench -- --decode --model NAME|DIR [--tokens 128] [--batch 1] [--weight-dtype ...]`.
 * `bun run bench -- --decode-loras 1,4,16 --model NAME|DIR [--batch 16] [--tokens 128] [--rank 16] [--weight-dtype ...] [--lora-dtype auto] [--prompt-tokens 64]`
 *   (bench/multi-lora.ts: one batch over k distinct adapters in adapter slots vs one adapter, one line per k,
 *   plus the batch without LoRA and the per-adapter-forward path for comparison).
 * `bun run bench -- --serve --model smollm2-135m|qwen2.5-0.5b|llama3.2-1b|tiny [--streams 1,16] [--tokens 128] [--prompt-tokens 64] [--weight-dtype ...]`
 *   (bench/serve.ts: TTFT and decode tok/s over HTTP, one line per stream count).
 * NAME: tiny, smollm2-135m, qwen2.5-0.5b, llama3.2-1b, llama3.2-3b, llama3.1-8b, qwen2.5-7b (random weights of
 * the published shape, written to a temporary directory); DIR: a Hugging Face model directory, loaded as it is.
 * `bun run bench -- --load --model DIR|NAME [--weight-dtype ...] [--repeat N]` (bench/load.ts: weight loading time and GB/s).
 * Prints one JSON line per measurement.
 */
const SPEC = {
  name: "bench",
  usage: "(--kernels | --train | --decode | --decode-loras 1,4,16 | --serve | --load) [flags]",
  description: "Benchmarks; one JSON line per measurement (docs/benchmarks.md).\nMODEL: tiny, smollm2-135m, qwen2.5-0.5b, llama3.2-1b, llama3.2-3b, llama3.1-8b, qwen2.5-7b (random weights of the published shape), or a model directory.",
  flags: {
    kernels: { type: "boolean", help: "every kernel at the published models' shapes; exits 1 if an op fails or is over its tolerance" },
    train: { type: "boolean", help: "training steps/s and tokens/s" },
    decode: { type: "boolean", help: "decode tokens/s" },
    "decode-loras": { type: "string", arg: "1,4,16", help: "decode tokens/s of one batch over k distinct adapters (one line per k) vs one adapter" },
    serve: { type: "boolean", help: "TTFT and decode tok/s over HTTP, one line per stream count" },
    load: { type: "boolean", help: "weight loading time and GB/s" },
    quick: { type: "boolean", help: "--kernels: tiny shapes" },
    ops: { type: "string", arg: "A,B", help: "--kernels: only these ops (matmul,rmsnorm,...)" },
    model: { type: "string", arg: "MODEL", help: "benchmark model name(s) or directory", default: "smollm2-135m" },
    batch: { type: "number", help: "--train: rows per step (default 8); --decode: sequences (default 1); --decode-loras: sequences (default 16)" },
    seq: { type: "number", help: "--train: tokens per row", default: 512 },
    rank: { type: "number", help: "--train, --decode-loras: LoRA rank", default: 16 },
    "lora-dtype": { type: "string", arg: "DTYPE", help: "--decode-loras: adapter slot storage, as serve's (auto, float32, float16, bfloat16)" },
    full: { type: "boolean", help: "--train: full fine-tuning (every weight, f32 masters, AdamW) instead of LoRA" },
    plan: { type: "boolean", help: "--train --full: only the memory statement and flat-buffer plan on this device (loads no model)" },
    steps: { type: "number", help: "--train: steps measured", default: 8 },
    "gradient-checkpointing": { type: "boolean", help: "--train: recompute activations in backward (--no-gradient-checkpointing to keep them)", default: true },
    "keep-attention-layers": { type: "string", arg: "N|all", help: "--train: selective checkpointing, N layers keep their attention output (as train's)" },
    "keep-mlp-layers": { type: "string", arg: "N|all", help: "--train: selective checkpointing, N layers keep their MLP's gate and up (as train's)" },
    "keep-activations-gib": { type: "number", arg: "GIB", help: "--train: selective checkpointing within GIB GiB (as train's)" },
    "weight-dtype": { type: "string", arg: "f32|f16|bf16", help: "GPU weight dtype (default: the model's)" },
    profile: { type: "boolean", help: "--train/--decode: GPU ms per kernel from timestamp queries" },
    "target-fraction": { type: "number", arg: "F", help: "--train: labels only on the last F of each row", default: 1 },
    tokens: { type: "number", help: "--decode/--serve: tokens generated", default: 128 },
    streams: { type: "string", arg: "1,16", help: "--serve: concurrent stream counts", default: "1,16" },
    "prompt-tokens": { type: "number", help: "--serve: prompt length; --decode-loras: prompt length of the prefill measurement", default: 64 },
    repeat: { type: "number", help: "--load: repetitions", default: 1 },
  },
} as const satisfies CommandSpec;

/** `--keep-attention-layers` / `--keep-mlp-layers` N|all (absent: none), as train reads them. */
function keepLayersFlag(flag: string, v: string | undefined): KeepLayers | undefined {
  if (v === undefined) return undefined;
  const k = parseKeepLayers(v);
  if (k === null) throw new UsageError(`--${flag}: expected ${KEEP_LAYERS_EXPECTED}, got ${JSON.stringify(v)}`);
  return k;
}

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
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
  if (flags["decode-loras"] !== undefined) {
    const batch = flags.batch ?? 16;
    await benchMultiLora({
      model: flags.model ?? "smollm2-135m", adapters: parseAdapterCounts(flags["decode-loras"], batch), batch,
      tokens: flags.tokens ?? 128, rank: flags.rank ?? 16, weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined,
      loraDtype: flags["lora-dtype"], promptTokens: flags["prompt-tokens"] ?? 64,
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
  if (flags.plan && !(flags.train && flags.full)) throw new UsageError("--plan goes with --train --full");
  if (flags.train && flags.plan) {
    const { estimate: _, ...plan } = await planTrainFull({
      model: flags.model ?? "smollm2-135m", batch: flags.batch ?? 8, seq: flags.seq ?? 512, gradientCheckpointing: flags["gradient-checkpointing"] ?? true,
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined,
    });
    console.log(JSON.stringify(plan));
    return 0;
  }
  if (flags.train) {
    const line = await benchTrain({
      model: flags.model ?? "smollm2-135m", batch: flags.batch ?? 8, seq: flags.seq ?? 512, rank: flags.rank ?? 16,
      steps: flags.steps ?? 8, gradientCheckpointing: flags["gradient-checkpointing"] ?? true,
      weightDtype: flags["weight-dtype"] as "f32" | "f16" | "bf16" | undefined, profile: flags.profile ?? false,
      targetFraction: flags["target-fraction"] ?? 1, full: flags.full ?? false,
      selective: { keepAttentionLayers: keepLayersFlag("keep-attention-layers", flags["keep-attention-layers"]), keepMlpLayers: keepLayersFlag("keep-mlp-layers", flags["keep-mlp-layers"]) },
      keepActivationsGib: flags["keep-activations-gib"],
    });
    console.log(JSON.stringify(line));
    return 0;
  }
  if (!flags.kernels) throw new UsageError("say what to measure: --kernels, --train, --decode, --decode-loras, --serve or --load (see the command's doc)");
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
