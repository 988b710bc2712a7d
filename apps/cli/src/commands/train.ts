/**
 * `bun run train`: with no flags, the bundled demo (a tiny model made on the fly, the bundled
 * made-up-capitals dataset, held-out exact match before and after); `bun run train -- --full`
 * alone is the same demo with every weight trained. With flags or
 * `--config FILE` (YAML or JSON of the same names), a real LoRA run (or, with --full, a full
 * fine-tuning run writing OUT/model); every option is checked
 * (train-options.ts) before the data or the model is loaded.
 */
import { existsSync, rmSync } from "node:fs";
import path from "node:path";
import {
  GpuModel, type LayerLora, encodeChatText, renderChatPrompt, generateIds, loadServingTokenizer, resolveModelDir, resolveServingTemplate, servingStopTokenIds,
  writeTinyModel,
} from "@tuneloom/model";
import {
  DEMO_EVAL_FILE, DEMO_TRAIN_FILE, TRAIN_DEFAULTS, type TrainResult, demoAnswerMatches, demoQuestion, formatSummary, loadJsonl, runAsRank, train,
} from "@tuneloom/trainer";
import { dawnMessageSummary } from "@tuneloom/kernels";
import { resolveTrainOptions } from "../train-options.ts";

export async function run(argv: string[]): Promise<number> {
  if (argv.length === 0) return runDemo(false);
  if (argv.length === 1 && argv[0] === "--full") return runDemo(true);
  const options = resolveTrainOptions(argv);
  const model = resolveModelDir(options.model);
  // Under mpirun, one data-parallel rank (docs/distributed.md); otherwise this process alone.
  return runAsRank(async (world) => {
    const result = await train({ ...options, model, world });
    if (!world.isRoot) return 0;
    console.log(summary(result));
    console.log(options.full
      ? `serve it: bun run serve -- --model ${result.adapterDir}`
      : `serve it: bun run serve -- --model ${options.model} --adapter ${result.adapterDir}`);
    return 0;
  });
}

function summary(result: TrainResult, extraNotes: string[] = []): string {
  return formatSummary({
    steps: result.steps, epochs: result.epochs, elapsedS: result.elapsedS, tokens: result.tokens,
    trainableParams: result.trainableParams, firstLoss: result.firstLoss, finalLoss: result.finalLoss,
    evalLoss: result.evalLoss, bestEvalLoss: result.bestEvalLoss, generalPpl: result.generalPpl, outputDir: result.adapterDir,
    // Dawn's own warnings are counted, not printed (kernels' dawn-messages.ts): one line says so.
    notes: [...extraNotes, ...result.notes, ...[dawnMessageSummary()].filter((n): n is string => n !== null)],
  });
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

async function runDemo(full: boolean): Promise<number> {
  const root = path.resolve(full ? "runs/demo-full" : "runs/demo");
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
  const common = {
    ...TRAIN_DEFAULTS, model: modelDir, data: DEMO_TRAIN_FILE, evalData: DEMO_EVAL_FILE, out,
    epochs: 16, batchSize: 16, maxLength: 64, warmupRatio: 0.05, logEvery: 20, evalSteps: 36, seed: 7,
  };
  // Full fine-tuning moves every weight: a smaller step than LoRA's (which moves a low-rank delta from zero).
  const base = full ? await GpuModel.load(modelDir) : null;
  const before = base ? await exactMatch(base, modelDir, undefined) : null;
  const result = await train(full
    ? { ...common, full: true, lr: 2e-3 }
    : { ...common, rank: 16, alpha: 32, dropout: 0.1, lr: 1e-2 });
  const beforeScore = before ?? await exactMatch(result.model, modelDir, undefined);
  const after = await exactMatch(result.model, modelDir, "lora" in result.trainer ? result.trainer.lora : undefined);
  const pct = (x: { right: number; total: number }) => `${((100 * x.right) / x.total).toFixed(0)}% (${x.right}/${x.total})`;
  // What the tuning gained (the task) beside what it cost (the summary's forgetting line).
  const gained = after.right - beforeScore.right;
  console.log(summary(result, [`task gain    held-out exact match ${pct(beforeScore)} → ${pct(after)}, ${gained >= 0 ? "+" : ""}${gained} of ${after.total}`]));
  console.log(`${full ? "model" : "adapter"}: ${result.adapterDir}`);
  console.log(full
    ? `serve it: bun run serve -- --model ${result.adapterDir}`
    : `serve it: bun run serve -- --model ${modelDir} --adapter ${result.adapterDir}`);
  return 0;
}
