#!/usr/bin/env bun
// tuneloom command-line entry: `bun apps/cli/src/main.ts <command> [flags]`.
// Each command lives in ./commands/<name>.ts and exports `run(argv): Promise<number>` (the exit code).
import { PrintAndExit, VERSION, closest } from "./args.ts";

const commands: Record<string, [file: string, summary: string]> = {
  train: ["./commands/train.ts", "LoRA fine-tuning (no flags: the bundled demo)"],
  serve: ["./commands/serve.ts", "OpenAI-compatible HTTP server"],
  generate: ["./commands/generate.ts", "one completion on stdout"],
  perplexity: ["./commands/perplexity.ts", "mean next-token NLL of a text or of a dataset's target tokens"],
  template: ["./commands/template.ts", "render a chat template"],
  "make-tiny-model": ["./commands/make-tiny-model.ts", "a small random model in HF layout"],
  merge: ["./commands/merge.ts", "fold an adapter into the base weights"],
  bench: ["./commands/bench.ts", "benchmarks, one JSON line per measurement"],
  "gpu-info": ["./commands/gpu-info.ts", "the GPU adapter's capabilities"],
};

const usage = () =>
  [`usage: tuneloom <command> [flags]   (from the repo: bun run <command> -- [flags])`, "", "commands:",
    ...Object.entries(commands).map(([n, [, s]]) => `  ${n.padEnd(16)}${s}`), "", "`tuneloom <command> --help` lists a command's flags."].join("\n");

const [name, ...argv] = process.argv.slice(2);
if (name === "--help" || name === "-h") {
  console.log(usage());
  process.exit(0);
}
if (name === "--version") {
  console.log(`tuneloom ${VERSION}`);
  process.exit(0);
}
if (!name || !(name in commands)) {
  const guess = name ? closest(name, Object.keys(commands)) : null;
  console.error(`${name ? `unknown command '${name}'${guess ? ` (did you mean ${guess}?)` : ""}\n` : ""}${usage()}`);
  process.exit(2);
}
const mod: { run(argv: string[]): Promise<number> } = await import(commands[name]![0]);
let code: number;
try {
  code = await mod.run(argv);
} catch (err) {
  if (err instanceof PrintAndExit) {
    await Bun.write(Bun.stdout, err.text + "\n");
    process.exit(0);
  }
  // Every command reports errors as one clear line; a stack only with TUNELOOM_DEBUG=1.
  const e = err as Error;
  console.error(`${name}: ${e?.message ?? String(err)}`);
  if (process.env.TUNELOOM_DEBUG) console.error(e?.stack);
  code = 1;
}
process.exit(code);
