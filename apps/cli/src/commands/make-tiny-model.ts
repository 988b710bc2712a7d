// `bun run make-tiny-model -- --out DIR [--arch llama|qwen2] [--template FILE] [--seed N] [--dtype f32|bf16]`
// Writes a small deterministic random model in the Hugging Face layout (see packages/model/src/tiny-model.ts).
import { readFileSync } from "node:fs";
import { writeTinyModel } from "@tuneloom/model";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";

const SPEC = {
  name: "make-tiny-model",
  usage: "--out DIR [--arch llama|qwen2] [--template FILE] [--seed N] [--dtype f32|bf16]",
  description: "Writes a small deterministic random model in the Hugging Face layout (for tests and the demo).",
  flags: {
    out: { type: "string", arg: "DIR", help: "where to write the model", aliases: ["output-dir"] },
    arch: { type: "string", arg: "llama|qwen2", help: "architecture", default: "llama" },
    template: { type: "string", arg: "FILE", help: "chat template to ship (default: ChatML)" },
    seed: { type: "number", help: "weight seed", default: 0 },
    dtype: { type: "string", arg: "f32|bf16", help: "weight dtype on disk", default: "f32" },
  },
} as const satisfies CommandSpec;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  if (!flags.out) throw new UsageError(`--out is required (usage: make-tiny-model ${SPEC.usage})`);
  const arch = flags.arch ?? "llama";
  if (arch !== "llama" && arch !== "qwen2") throw new Error(`--arch must be llama or qwen2, got '${arch}'`);
  const dtype = flags.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "bf16") throw new Error(`--dtype must be f32 or bf16, got '${dtype}'`);
  const seed = flags.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`--seed must be an integer in 0..4294967295, got ${seed}`);
  let chatTemplate: string | undefined;
  if (flags.template) {
    try {
      chatTemplate = readFileSync(flags.template, "utf8");
    } catch (e) {
      throw new Error(`cannot read --template ${flags.template}: ${(e as Error).message}`);
    }
  }
  const result = writeTinyModel(flags.out, { arch, seed, dtype, chatTemplate });
  const c = result.config;
  console.log(
    `wrote ${arch} tiny model to ${result.dir}: ${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numHeads} heads / ${c.numKvHeads} kv, ` +
      `vocab ${c.vocabSize}, ${dtype} weights, seed ${seed} (${result.files.join(", ")})`,
  );
  return 0;
}
