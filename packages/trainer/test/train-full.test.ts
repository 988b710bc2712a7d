/**
 * Full fine-tuning through train() (`full: true`): the output model directory, checkpoints and
 * exact resume, the forgetting monitor and --max-forgetting, the data-parallel refusal.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { GpuModel, openCheckpoint, openSafetensors, resolveServingTemplate, writeTinyModel } from "@tuneloom/model";
import { checkpointDirName, listCheckpoints, OPTIMIZER_FILE, TRAINER_STATE_FILE } from "../src/checkpoint.ts";
import { SINGLE_PROCESS } from "../src/distributed/world.ts";
import { Rng } from "../src/rng.ts";
import { FullTrainer } from "../src/gpu/full-trainer.ts";
import { type TrainOptions, train } from "../src/train-loop.ts";
import { smallRunOptions, tempDir, tinyModel, writeCapitalsData as writeData, optimizerBytes, stateWithoutClock, weightsOf } from "./helpers.ts";

const STEPS = 4, CRASH_AFTER = 2;

function options(data: string, out: string, overrides: Partial<TrainOptions> = {}): TrainOptions {
  return smallRunOptions(data, out, { full: true, lr: 2e-3, maxSteps: STEPS, saveSteps: 1, keepCheckpoints: 2, ...overrides });
}



describe("train({ full: true })", () => {
  test(`crash after step ${CRASH_AFTER}, resume to ${STEPS}: the same model, checkpoint and curve as an uninterrupted run; OUT/model is a plain model directory`, async () => {
    const root = tempDir("full-run-");
    const data = writeData(root);
    const lines: string[] = [];
    const uninterruptedOut = path.join(root, "uninterrupted"), crashOut = path.join(root, "crash");
    const full = await train(options(data, uninterruptedOut, { log: (l) => lines.push(l) }));
    expect(full.trainer).toBeInstanceOf(FullTrainer);
    expect(full.steps).toBe(STEPS);
    expect(full.finalLoss).toBeLessThan(full.firstLoss);
    expect(lines.some((l) => l.startsWith("full fine-tuning memory: f32 masters"))).toBe(true);
    expect(full.trainableParams).toBe((full.trainer as FullTrainer).parameterCount);

    // The output: a model directory with the trained weights, loadable as a plain model.
    const modelDir = full.adapterDir;
    expect(modelDir).toBe(path.join(uninterruptedOut, "model"));
    expect(existsSync(path.join(uninterruptedOut, "adapter"))).toBe(false);
    const files = readdirSync(modelDir);
    for (const f of ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "training_args.json", "metrics.jsonl", "loss_curve.svg"]) {
      expect(files).toContain(f);
    }
    const trained = await (full.trainer as FullTrainer).getWeights();
    const written = weightsOf(modelDir), base = weightsOf(tinyModel().dir);
    expect([...written.keys()].sort()).toEqual([...base.keys()].sort());
    for (const [name, w] of trained) expect(written.get(name)).toEqual(w);
    expect([...trained].some(([name, w]) => w.some((x, i) => x !== base.get(name)![i]))).toBe(true);
    expect(resolveServingTemplate(modelDir).source).toBe(resolveServingTemplate(tinyModel().dir).source);
    const reloaded = await GpuModel.load(modelDir);
    expect(reloaded.cfg.numLayers).toBe(tinyModel().config.numLayers);

    // Checkpoints: the f32 masters as a model directory, the moments, the base perplexity.
    expect(listCheckpoints(uninterruptedOut).map((c) => c.step)).toEqual([2, 3]);
    const ck3 = checkpointDirName(3);
    expect(stateWithoutClock(path.join(uninterruptedOut, ck3)).generalPplBase).toBe(full.generalPpl!.base);
    expect(optimizerBytes(path.join(uninterruptedOut, ck3)).has("model.embed_tokens.weight.exp_avg")).toBe(true);

    const crash = new Error("simulated crash");
    await expect(train({ ...options(data, crashOut), onStepEnd: ({ step }) => { if (step === CRASH_AFTER) throw crash; } })).rejects.toBe(crash);
    const resumeLines: string[] = [];
    const resumed = await train({ ...options(data, crashOut), resume: crashOut, log: (l) => resumeLines.push(l) });
    expect(resumed.steps).toBe(STEPS);
    // The base score comes from the checkpoint (the weights there are no longer the base's).
    expect(resumeLines.some((l) => l.includes("(recorded at the start of the run)"))).toBe(true);
    expect(resumed.generalPpl!.base).toBe(full.generalPpl!.base);
    expect(stateWithoutClock(path.join(crashOut, ck3))).toEqual(stateWithoutClock(path.join(uninterruptedOut, ck3)));
    expect(optimizerBytes(path.join(crashOut, ck3))).toEqual(optimizerBytes(path.join(uninterruptedOut, ck3)));
    const a = weightsOf(modelDir), b = weightsOf(resumed.adapterDir);
    for (const [name, w] of a) expect(b.get(name)).toEqual(w);
    expect(resumed.finalLoss).toBe(full.finalLoss);
    expect(resumed.generalPpl!.final).toBe(full.generalPpl!.final);
    const curve = (out: string) => readFileSync(path.join(out, "metrics.jsonl"), "utf8").trim().split("\n")
      .map((l) => JSON.parse(l)).map((r) => [r.step, r.loss, r.lr, r.grad_norm, r.tokens]);
    expect(curve(crashOut)).toEqual(curve(uninterruptedOut));
  }, 600_000);

  test("--max-forgetting: the model written is the last evaluation's under the limit", async () => {
    const root = tempDir("full-forget-");
    const data = writeData(root);
    // "General text" the training makes less likely: random characters (training on English-like
    // capitals lowers the random model's perplexity of English text itself).
    const rng = new Rng(9);
    const general = path.join(root, "general.txt");
    writeFileSync(general, Array.from({ length: 600 }, () => String.fromCharCode(33 + rng.nextInt(90))).join(""));
    // A checkpoint every step: each one's f32 masters are that step's weights.
    const out = path.join(root, "out");
    const r = await train(options(data, out, { lr: 5e-2, warmupSteps: 1, evalSteps: 1, maxForgetting: 1e-6, keepCheckpoints: undefined, generalEval: general }));
    // On this seed: step 1 (lr 0) scores the base, step 2 lower, step 3 above the base.
    expect(r.notes).toEqual([expect.stringMatching(/^stopped: step 3: general-text ppl .* exceeds --max-forgetting \+0\.0%; the model is step 2's, the last under the limit/)]);
    expect(r.steps).toBe(3);
    expect(r.generalPpl!.final).toBeLessThan(r.generalPpl!.base);
    const written = weightsOf(r.adapterDir), kept = weightsOf(path.join(out, checkpointDirName(2)));
    for (const [name, w] of kept) expect(written.get(name)).toEqual(w);
  }, 300_000);

  test("a bf16 model: OUT/model in bf16 as the base, checkpoints keep the f32 masters", async () => {
    const root = tempDir("full-bf16-");
    const data = writeData(root);
    const base = path.join(root, "base");
    writeTinyModel(base, { dtype: "bf16", seed: 4 });
    const out = path.join(root, "out");
    const r = await train(options(data, out, { model: base, maxSteps: 2, saveSteps: 1 }));
    const dtypes = (dir: string) => {
      const s = openCheckpoint(dir);
      try {
        return new Set(s.names().map((n) => s.info(n).dtype));
      } finally {
        s.close();
      }
    };
    expect(dtypes(r.adapterDir)).toEqual(new Set(["BF16"]));
    expect(dtypes(path.join(out, checkpointDirName(1)))).toEqual(new Set(["F32"]));
  }, 300_000);

});
