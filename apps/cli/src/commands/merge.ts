/**
 * `bun run merge -- --model DIR --adapter DIR --out DIR`: folds a LoRA adapter into the base
 * weights, W' = W + s·B·A (float32 math, stored in the base checkpoint's dtype), and writes a
 * plain Hugging Face model directory that needs no PEFT to load.
 */
import { copyFileSync, existsSync, readdirSync, realpathSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { INDEX_FILE, loadModelConfig, mergeAdapterWeights, openCheckpoint, readPeftAdapter, writeSafetensors, type TensorToWrite } from "@tuneloom/model";
import { TOKENIZER_FILES, writeDirAtomically } from "@tuneloom/trainer/adapter-io.ts";
import { parseFlags } from "../args.ts";
import { requireDir } from "./generate.ts";

const HELP = `usage: merge --model DIR --adapter DIR --out DIR

Writes to --out: config.json and generation_config.json (the model's), the merged safetensors (same
dtype and the same file/shard layout as the base), the tokenizer files (the adapter's copies when it
has them, else the model's) and chat_template.jinja (the adapter's: the template it was trained with).
The directory is built beside --out and renamed into place, so --out is never half written. An
existing --out is replaced only if it is empty or holds a model (config.json).`;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, { model: "string", adapter: "string", out: "string", help: "boolean" }, "merge");
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const modelDir = requireDir(flags.model, "--model", HELP);
  const adapterDir = requireDir(flags.adapter, "--adapter", HELP);
  if (!flags.out) throw new Error(`--out is required (${HELP.split("\n")[0]})`);
  const out = resolve(flags.out);
  if (existsSync(out)) {
    const real = realpathSync(out);
    if (real === realpathSync(modelDir) || real === realpathSync(adapterDir)) throw new Error(`--out ${flags.out}: must differ from --model and --adapter`);
    if (readdirSync(out).length > 0 && !existsSync(join(out, "config.json"))) {
      throw new Error(`--out ${flags.out}: exists and is not a model directory; refusing to replace it (remove it or pick another path)`);
    }
  }

  const cfg = loadModelConfig(modelDir);
  const adapter = readPeftAdapter(adapterDir, cfg);
  const store = openCheckpoint(modelDir);
  try {
    const merged = mergeAdapterWeights(store, adapter);
    // Keep the base's file layout: one file, or the same shards under the same index.
    const byFile = new Map<string, TensorToWrite[]>();
    for (const t of merged) {
      const file = basename(store.info(t.name).file);
      byFile.set(file, [...(byFile.get(file) ?? []), t]);
    }
    writeDirAtomically(out, (tmp) => {
      for (const [file, tensors] of byFile) writeSafetensors(join(tmp, file), tensors, { format: "pt" });
      for (const name of ["config.json", "generation_config.json", INDEX_FILE]) {
        if (existsSync(join(modelDir, name))) copyFileSync(join(modelDir, name), join(tmp, name));
      }
      const tokenizerDir = existsSync(join(adapterDir, "tokenizer.json")) ? adapterDir : modelDir;
      for (const name of TOKENIZER_FILES) if (existsSync(join(tokenizerDir, name))) copyFileSync(join(tokenizerDir, name), join(tmp, name));
      const template = [adapterDir, modelDir].map((d) => join(d, "chat_template.jinja")).find((p) => existsSync(p));
      if (template) copyFileSync(template, join(tmp, "chat_template.jinja"));
    });
  } finally {
    store.close();
  }
  console.error(
    `merged ${adapter.modules.length} LoRA projection(s) (r=${adapter.rank}, scale ${adapter.scale}, ${adapter.targets.join(", ")}) into ${out}`,
  );
  return 0;
}
