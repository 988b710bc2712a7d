/**
 * `bun run merge -- --model DIR --adapter DIR --out DIR`: folds a LoRA adapter into the base
 * weights, W' = W + s·B·A (float32 math, stored in the base checkpoint's dtype), and writes a
 * plain Hugging Face model directory that needs no PEFT to load.
 */
import { existsSync, readdirSync, readFileSync, realpathSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import {
  checkAdapterTemplate, loadModelConfig, mergeAdapterWeights, openCheckpoint, readAdapterDir, recoverDirWrites, servingTemplateFile,
  servingTokenizerDir, writeModelDir,
} from "@tuneloom/model";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";
import { ADAPTER_FLAG, MODEL_FLAG, requireDir, requireModelDir } from "../model-flags.ts";

const SPEC = {
  name: "merge",
  usage: "--model DIR --adapter DIR --out DIR",
  flags: {
    model: MODEL_FLAG,
    adapter: ADAPTER_FLAG,
    out: { type: "string", arg: "DIR", help: "where to write the merged model", aliases: ["output-dir"] },
  },
  description: `Writes to --out: config.json and generation_config.json (the model's), the merged safetensors (same
dtype and the same file/shard layout as the base), the tokenizer files (the adapter's copies when it
has them, else the model's) and chat_template.jinja (the adapter's: the template it was trained with;
refused, as by the server, when training_args.json records another template's sha256).
The directory is built beside --out and renamed into place, so --out is never half written. An
existing --out is replaced only if it is empty or holds a model (config.json).`,
} as const satisfies CommandSpec;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  const modelDir = requireModelDir(flags.model);
  const adapterDir = requireDir(flags.adapter, "--adapter");
  if (!flags.out) throw new UsageError(`--out is required (usage: merge ${SPEC.usage})`);
  const out = resolve(flags.out);
  if (existsSync(out)) {
    const real = realpathSync(out);
    if (real === realpathSync(modelDir) || real === realpathSync(adapterDir)) throw new Error(`--out ${flags.out}: must differ from --model and --adapter`);
    if (readdirSync(out).length > 0 && !existsSync(join(out, "config.json"))) {
      throw new Error(`--out ${flags.out}: exists and is not a model directory; refusing to replace it (remove it or pick another path)`);
    }
  }

  checkAdapterTemplate(modelDir, adapterDir);
  const cfg = loadModelConfig(modelDir);
  const adapter = readAdapterDir(adapterDir, cfg);
  const store = openCheckpoint(modelDir);
  try {
    const tensors = mergeAdapterWeights(store, adapter);
    // A merge killed earlier left its (large) temporaries beside --out: finish or clear them first.
    for (const line of recoverDirWrites(dirname(resolve(out)), (name) => name === basename(resolve(out)))) console.error(`recovery: ${line}`);
    const template = servingTemplateFile(modelDir, adapterDir);
    writeModelDir(out, {
      baseDir: modelDir, store, tensors, tokenizerDir: servingTokenizerDir(modelDir, adapterDir),
      chatTemplate: template ? readFileSync(template, "utf8") : null,
    });
  } finally {
    store.close();
  }
  console.error(
    `merged ${adapter.weights.length} LoRA projection(s) (r=${adapter.lora.rank}, scale ${adapter.scaling}, ${adapter.targets.join(", ")}) into ${out}`,
  );
  return 0;
}
