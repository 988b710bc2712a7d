#!/usr/bin/env bun
// tuneloom command-line entry: `bun apps/cli/src/main.ts <command> [flags]`.
// Each command lives in ./commands/<name>.ts and exports `run(argv): Promise<number>` (the exit code).
const commands: Record<string, string> = {
  train: "./commands/train.ts",
  serve: "./commands/serve.ts",
  generate: "./commands/generate.ts",
  perplexity: "./commands/perplexity.ts",
  template: "./commands/template.ts",
  "make-tiny-model": "./commands/make-tiny-model.ts",
  merge: "./commands/merge.ts",
  bench: "./commands/bench.ts",
  "gpu-info": "./commands/gpu-info.ts",
};

const [name, ...argv] = process.argv.slice(2);
if (!name || !(name in commands)) {
  console.error(`usage: tuneloom <${Object.keys(commands).join("|")}> [flags]`);
  process.exit(2);
}
const mod: { run(argv: string[]): Promise<number> } = await import(commands[name]!);
let code: number;
try {
  code = await mod.run(argv);
} catch (err) {
  // Every command reports errors as one clear line; a stack only with TUNELOOM_DEBUG=1.
  const e = err as Error;
  console.error(`${name}: ${e?.message ?? String(err)}`);
  if (process.env.TUNELOOM_DEBUG) console.error(e?.stack);
  code = 1;
}
process.exit(code);

export {};
