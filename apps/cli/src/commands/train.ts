/**
 * `bun run train`: with no flags, the bundled demo (a tiny model made on the fly, the bundled
 * made-up-capitals dataset, held-out exact match before and after). With flags or
 * `--config FILE` (JSON of the same names), a real LoRA run.
 */
import { existsSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import {
  type GpuModel, type LayerLora, encodeChatText, renderChatPrompt, generateIds, loadServingTokenizer, resolveServingTemplate, servingStopTokenIds,
  writeTinyModel,
} from "@tuneloom/model";
import {
  DEMO_EVAL_FILE, DEMO_TRAIN_FILE, TRAIN_DEFAULTS, type TrainOptions, demoAnswerMatches, demoQuestion, formatSummary, loadJsonl, train,
} from "@tuneloom/trainer";
import { type FlagSpec, parseFlags } from "../args.ts";

const spec = {
  config: "string", model: "string", data: "string", "eval-data": "string", "eval-fraction": "number", out: "string",
  rank: "number", alpha: "number", dropout: "number", "target-modules": "string", rslora: "boolean",
  lr: "number", epochs: "number", "max-steps": "number", "batch-size": "number", "grad-accum": "number",
  "max-length": "number", packing: "boolean", "warmup-steps": "number", "warmup-ratio": "number", scheduler: "string",
  "weight-decay": "number", "max-grad-norm": "number", seed: "number", "no-gradient-checkpointing": "boolean",
  "train-on-all-tokens": "boolean", "save-steps": "number", "keep-checkpoints": "number", "eval-steps": "number",
  "log-every": "number", resume: "string", "weight-dtype": "string", quiet: "boolean",
  overwrite: "boolean", "allow-replacement": "boolean",
} satisfies FlagSpec;

const camel = (k: string) => k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

export async function run(argv: string[]): Promise<number> {
  if (argv.length === 0) return runDemo();
  const flags = parseFlags(argv, spec, "train") as Record<string, unknown>;
  let fromFile: Record<string, unknown> = {};
  if (flags.config) {
    const file = String(flags.config);
    try {
      fromFile = JSON.parse(readFileSync(file, "utf8"));
    } catch (e) {
      throw new Error(`${file}: ${existsSync(file) ? `invalid JSON (${(e as Error).message})` : "not found"}`);
    }
    for (const k of Object.keys(fromFile)) {
      if (!(k in spec) && !(camel(k) in TRAIN_DEFAULTS) && !["model", "data", "out"].includes(k)) throw new Error(`${file}: unknown field '${k}'`);
    }
  }
  const merged: Record<string, unknown> = { ...TRAIN_DEFAULTS };
  for (const [k, v] of Object.entries({ ...fromFile, ...flags })) if (k !== "config") merged[camel(k)] = v;
  if (merged.noGradientCheckpointing) merged.gradientCheckpointing = false;
  for (const req of ["model", "data", "out"]) if (!merged[req]) throw new Error(`--${req} is required (or run with no flags for the demo)`);
  const result = await train(merged as unknown as TrainOptions);
  console.log(formatSummary({
    steps: result.steps, epochs: Number(merged.epochs), elapsedS: result.elapsedS, tokens: result.tokens,
    trainableParams: result.trainableParams, firstLoss: result.firstLoss, finalLoss: result.finalLoss,
    evalLoss: result.evalLoss, outputDir: result.adapterDir, notes: result.notes,
  }));
  console.log(`serve it: bun run serve -- --model ${merged.model} --adapter ${result.adapterDir}`);
  return 0;
}

/** Held-out exact match: greedy answers to the eval questions, prompted as the server would prompt them. */
async function exactMatch(model: GpuModel, modelDir: string, lora: readonly LayerLora[] | undefined): Promise<{ right: number; total: number }> {
  const tok = loadServingTokenizer(modelDir);
  const template = resolveServingTemplate(modelDir);
  const stopTokenIds = servingStopTokenIds(modelDir, model.cfg, tok);
  const rows = loadJsonl(DEMO_EVAL_FILE).rows;
  let right = 0;
  for (const row of rows) {
    const { prompt, answer } = demoQuestion(row);
    const ids = encodeChatText(tok, renderChatPrompt(template, prompt)).ids;
    const out = await generateIds(model, ids, { maxTokens: 8, sampling: { temperature: 0 }, stopTokenIds, lora });
    if (demoAnswerMatches(tok.decode(out.ids, { skipSpecialTokens: true }), answer)) right++;
  }
  return { right, total: rows.length };
}

async function runDemo(): Promise<number> {
  const root = path.resolve("runs/demo");
  const modelDir = path.join(root, "tiny-model");
  console.error(`demo: making a tiny random model in ${modelDir}`);
  writeTinyModel(modelDir, { arch: "llama", seed: 1 });
  // The demo's output is its own scratch (made by the previous demo, nothing of the user's):
  // each demo starts from an empty one rather than piling up .previous-* copies.
  const out = path.join(root, "output");
  if (existsSync(out)) {
    console.error(`demo: replacing the previous demo's output in ${out}`);
    rmSync(out, { recursive: true, force: true });
  }
  const result = await train({
    ...TRAIN_DEFAULTS, model: modelDir, data: DEMO_TRAIN_FILE, evalData: DEMO_EVAL_FILE, out,
    rank: 16, alpha: 32, dropout: 0.1, lr: 1e-2, epochs: 24, batchSize: 16, maxLength: 64, warmupRatio: 0.05, logEvery: 20, seed: 7,
  });
  const before = await exactMatch(result.model, modelDir, undefined);
  const after = await exactMatch(result.model, modelDir, result.trainer.lora);
  const pct = (x: { right: number; total: number }) => `${((100 * x.right) / x.total).toFixed(0)}% (${x.right}/${x.total})`;
  console.log(formatSummary({
    steps: result.steps, epochs: 24, elapsedS: result.elapsedS, tokens: result.tokens, trainableParams: result.trainableParams,
    firstLoss: result.firstLoss, finalLoss: result.finalLoss, evalLoss: result.evalLoss, outputDir: result.adapterDir, notes: result.notes,
  }));
  console.log(`held-out exact match: before ${pct(before)}, after ${pct(after)}`);
  console.log(`adapter: ${result.adapterDir}`);
  console.log(`serve it: bun run serve -- --model ${modelDir} --adapter ${result.adapterDir}`);
  return 0;
}
