/**
 * A LoRA fine-tuning run, end to end: data → chat-template rendering and assistant-only labels
 * → batches (padded or packed) → GPU steps with gradient accumulation → checkpoints, metrics,
 * eval → a PEFT adapter directory that HF PEFT, vLLM and `bun run serve` load as it is.
 * With `full: true` (`train --full`), every weight is trained (FullTrainer) and the output is a
 * plain model directory OUT/model (model-dir.ts), checkpoints hold the f32 masters; one process
 * only (docs/full-finetuning.md "Status").
 *
 * Semantics (torchtune-style):
 *  - one optimizer step = `gradAccum` micro-batches of `batchSize` rows; the loss is the mean
 *    over all target tokens of the step's micro-batches (not a mean of micro-batch means);
 *  - `--out` is a run directory (run-dir.ts): `run.json` (run id + defining settings) is written
 *    before any expensive work; a new run refuses a non-empty directory unless `--overwrite`
 *    (which moves the old contents aside); interrupted writes are recovered at every start;
 *  - `--resume OUT` continues the newest checkpoint of OUT's own run, and only with the run's
 *    settings (more steps, save/eval/log frequency may change). It restores LoRA weights, AdamW
 *    moments and step, the data position and the schedule, so the run ends with the same adapter
 *    as an uninterrupted one (a changed step count re-spans the schedule, with a notice);
 *  - LoRA dropout masks are a hash of (seed, step, layer, module, micro-batch) (see
 *    LoraTrainer), so restoring the step restores them: they draw nothing from the RNG stream;
 *  - a NaN/inf loss or gradient stops the run (the update is skipped on the GPU) and leaves
 *    the last good checkpoint in place;
  if (o.forgettingMonitor === false && o.maxForgetting !== undefined) throw new Error("--max-forgetting needs the forgetting monitor (drop --no-forgetting-monitor)");
  const generalText = o.forgettingMonitor === false ? null : readGeneralText(o.generalEval);
  const run = onRootThenShare(world, () => openRunDir({ out: o.out, resume: o.resume, overwrite: o.overwrite, ...runSettings(o, template), log }));
 */
import { existsSync } from "node:fs";
import path from "node:path";
import {
  type AdapterContents, type LoraWeights, type ModelDirContents, formatLoadReport, formatUnderflow, GpuModel, type LoraConfig, loadServingTokenizer, loraParameterCount,
  openCheckpoint, parseLoraConfig, resolveServingTemplate, tensorsWithWeights, writeAdapterDir, writeModelDir,
} from "@tuneloom/model";
import { type Batch, DataLoader } from "./batching.ts";
import { loadCheckpoint, loadFullCheckpoint, saveCheckpoint, type TrainerState } from "./checkpoint.ts";
import { loadTrainingData } from "./data.ts";
import { forgettingPct, formatGeneralEvalLine, formatPct, formatPpl, generalEvalSet, generalTextPerplexity, readGeneralText } from "./general-eval.ts";
import { formatFullBuffers, formatFullMemory, fullAllocationError, fullFinetuneMemory, fullParameterCount, planFullBuffers } from "./full-memory.ts";
import { FullTrainer } from "./gpu/full-trainer.ts";
import { LoraTrainer } from "./gpu/lora-trainer.ts";
import { type SelectiveOptions, formatSelective, selectiveForBudget, selectiveLayers, selectiveStepBytes } from "./gpu/selective-checkpoint.ts";
import { renderLossCurveSvg } from "./loss-curve-svg.ts";
import { MetricsLog } from "./metrics.ts";
import { ProgressReporter, formatEvalLine } from "./progress.ts";
import { openRunDir, runSettings } from "./run-dir.ts";
import { learningRate, resolveWarmupSteps, type ScheduleConfig, type ScheduleKind } from "./schedule.ts";
import { tokenizeDataset } from "./tokenize-conversation.ts";
import { nextMicroBatches, onRootThenShare, startFromRoot } from "./distributed/data-parallel.ts";
import { SINGLE_PROCESS, type World } from "./distributed/world.ts";

export interface TrainOptions {
  model: string;
  data: string;
  evalData?: string;
  evalFraction?: number;
  out: string;
  rank: number;
  alpha: number;
  dropout: number;
  targetModules: string | readonly string[];
  rslora: boolean;
  lr: number;
  epochs: number;
  maxSteps?: number;
  batchSize: number;
  gradAccum: number;
  maxLength: number;
  packing: boolean;
  warmupSteps?: number;
  warmupRatio?: number;
  scheduler: ScheduleKind;
  /** cosine / cosine_with_min_lr: the floor as a fraction of lr (transformers' min_lr_rate). */
  minLrRate?: number;
  weightDecay: number;
  maxGradNorm: number;
  seed: number;
  gradientCheckpointing: boolean;
  /** Selective checkpointing: layers that keep their attention output / MLP for the recompute (gpu/selective-checkpoint.ts; default 0). */
  keepAttentionLayers?: SelectiveOptions["keepAttentionLayers"];
  keepMlpLayers?: SelectiveOptions["keepMlpLayers"];
  /** Or a budget in GiB that picks both counts (selectiveForBudget). */
  keepActivationsGib?: number;
  trainOnAllTokens: boolean;
  /** Save a checkpoint every N optimizer steps (absent: none). */
  saveSteps?: number;
  keepCheckpoints?: number;
  /** Evaluate every N optimizer steps (absent: at the end only). */
  evalSteps?: number;
  logEvery: number;
  resume?: string;
  /** Start a new run in a non-empty `out`, moving its contents into `out/.previous-<id>/`. */
  overwrite?: boolean;
  /** Read invalid UTF-8 in the data as U+FFFD instead of failing. */
  allowReplacement?: boolean;
  weightDtype?: "f32" | "f16" | "bf16";
  /** The forgetting monitor's general text: plain text or {"text"} JSONL (default: the bundled text). */
  generalEval?: string;
  /** false: no forgetting monitor (default true). */
  forgettingMonitor?: boolean;
  /** Stop when the general-text perplexity is more than this % above the base model's. */
  maxForgetting?: number;
  /** Progress output (default stderr). */
  log?: (line: string) => void;
  /**
   * Called after each optimizer step, once its metrics and checkpoint (if any) are written.
   * An exception thrown here ends the run with that exception, as a crash would: what is on
   * disk is the checkpoints so far, no final adapter.
   */
  onStepEnd?: (info: { step: number; loss: number }) => void;
  quiet?: boolean;
  /** Data-parallel ranks (distributed/world.ts initWorld()); absent: this process alone. */
  world?: World;
  /**
   * Full fine-tuning (FullTrainer): every weight trained, the output a model directory OUT/model
   * instead of an adapter; the LoRA options are ignored. One process only.
   */
  full?: boolean;
}

export const TRAIN_DEFAULTS = {
  rank: 16, alpha: 32, dropout: 0, targetModules: "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", rslora: false,
  lr: 2e-4, epochs: 1, batchSize: 8, gradAccum: 1, maxLength: 1024, packing: false, scheduler: "cosine" as ScheduleKind,
  warmupRatio: 0.03, weightDecay: 0, maxGradNorm: 1, seed: 42, gradientCheckpointing: true, trainOnAllTokens: false,
  logEvery: 10, forgettingMonitor: true,
} satisfies Partial<TrainOptions>;

export interface TrainResult {
  /** What the run wrote: OUT/adapter (LoRA) or OUT/model (full fine-tuning). */
  adapterDir: string;
  steps: number;
  firstLoss: number;
  finalLoss: number;
  evalLoss: number | null;
  bestEvalLoss: number | null;
  /** Epochs actually run (fractional): micro-batches consumed / micro-batches per epoch. */
  epochs: number;
  tokens: number;
  elapsedS: number;
  trainableParams: number;
  /** The forgetting monitor: general-text perplexity of the base model and of the adapter written. */
  generalPpl: { base: number; final: number } | null;
  model: GpuModel;
  trainer: LoraTrainer | FullTrainer;
  notes: string[];
}

export async function train(o: TrainOptions): Promise<TrainResult> {
  const world = o.world ?? SINGLE_PROCESS;
  const log = !world.isRoot ? () => {} : o.log ?? ((l: string) => process.stderr.write(l + "\n"));
  const notes: string[] = [];
  const lora: LoraConfig = parseLoraConfig({
    rank: o.rank, alpha: o.alpha, dropout: o.dropout, targetModules: o.targetModules as string, rslora: o.rslora,
  });
  // The model's template and tokenizer, chosen as serving the base model would choose them.
  const template = resolveServingTemplate(o.model);
  const tokenizer = loadServingTokenizer(o.model);
  // Read and validate every row first: a bad file is refused before the run directory changes.
  const data = loadTrainingData({ trainFile: o.data, evalFile: o.evalData, evalFraction: o.evalFraction, seed: o.seed, allowReplacement: o.allowReplacement });
  if (o.forgettingMonitor === false && o.maxForgetting !== undefined) throw new Error("--max-forgetting needs the forgetting monitor (drop --no-forgetting-monitor)");
  const generalText = o.forgettingMonitor === false ? null : readGeneralText(o.generalEval);
  const run = onRootThenShare(world, () => openRunDir({ out: o.out, resume: o.resume, overwrite: o.overwrite, ...runSettings(o, template), log }));
  for (const line of data.report) log(`data: ${line}`);
  const tokOpts = { template: template.source, specialTokens: template.specialTokens, tokenizer, maxLength: o.maxLength, trainOnAllTokens: o.trainOnAllTokens };
  const trainSet = tokenizeDataset(data.train, tokOpts);
  for (const w of trainSet.warnings) { log(`warning: ${w}`); notes.push(w); }
  const s = trainSet.stats;
  log(`data: ${s.examples} training examples, ${s.targetTokens} target tokens (${s.truncated} truncated, ${s.droppedByTruncation + s.droppedNoTargets} dropped)`);
  if (trainSet.examples.length === 0) throw new Error(`${o.data}: no usable training examples after tokenization`);
  const evalSet = data.eval.length ? tokenizeDataset(data.eval, tokOpts) : null;

  const padId = tokenizer.padId ?? tokenizer.eosId ?? 0;
  const loader = new DataLoader(trainSet.examples, {
    mode: o.packing ? "pack" : "pad", batchSize: o.batchSize, maxLength: o.maxLength, seed: o.seed, padId,
  });
  // Fractional epochs (HF's num_train_epochs=0.5) take that share of the last epoch's batches.
  const wholeEpochs = Math.floor(o.epochs);
  const microTotal = loader.totalBatches(wholeEpochs) + Math.ceil((o.epochs - wholeEpochs) * loader.batchesInEpoch(wholeEpochs));
  const totalSteps = o.maxSteps ?? Math.max(1, Math.ceil(microTotal / (o.gradAccum * world.size)));
  const epochAt = () => { // fractional epoch of the data position
    const p = loader.position;
    return p.epoch + p.step / Math.max(1, loader.batchesInEpoch(p.epoch));
  };
  const schedule: ScheduleConfig = {
    kind: o.scheduler, baseLr: o.lr, totalSteps, ...(o.minLrRate !== undefined ? { minLrRatio: o.minLrRate } : {}),
    warmupSteps: resolveWarmupSteps(totalSteps, { warmupSteps: o.warmupSteps, warmupRatio: o.warmupRatio }),
  };

  const model = await GpuModel.load(o.model, { weightDtype: o.weightDtype });
  log(`load: ${formatLoadReport(model.loadReport)}`);
  const underflow = formatUnderflow(model.loadReport.losses);
  if (underflow) log(`load: ${underflow}`);
  let trainer: LoraTrainer | FullTrainer, trainableParams: number;
  // Selective checkpointing: the counts given, or those a budget picks for this model's micro-batches.
  const selective: SelectiveOptions = o.keepActivationsGib !== undefined
    ? selectiveForBudget(model, o.batchSize * o.maxLength, o.keepActivationsGib)
    : { keepAttentionLayers: o.keepAttentionLayers, keepMlpLayers: o.keepMlpLayers };
  log(`model: ${o.model} (${model.cfg.arch}, ${model.cfg.numLayers} layers, weights ${model.weights.dtype}) on ${model.rt.caps.description}`);
  if (o.full) {
    // The memory statement, and the refusal (with its numbers) before anything is allocated.
    const estimate = fullFinetuneMemory(model.cfg, {
      params: fullParameterCount(model.cfg, model.weights.layers[0]?.qBias !== undefined), weightBytes: model.weights.dtype === "f32" ? 4 : 2,
      tokensPerMicroBatch: o.batchSize * o.maxLength, gradientCheckpointing: o.gradientCheckpointing,
      selectiveBytes: selectiveStepBytes(model, selectiveLayers(model.cfg.numLayers, selective, o.gradientCheckpointing), o.batchSize * o.maxLength),
    });
    log(`full fine-tuning ${formatFullMemory(estimate)}`);
    const plan = planFullBuffers(model.cfg, model.rt.caps.limits, model.rt.caps.description);
    log(`full fine-tuning ${formatFullBuffers(plan)}`);
    try {
      trainer = new FullTrainer(model, { gradientCheckpointing: o.gradientCheckpointing, ...selective, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm, collectives: world });
      await model.rt.sync(); // an allocation the device could not make surfaces here
    } catch (e) {
      throw fullAllocationError(e, estimate, model.rt.caps.description);
    }
    trainableParams = trainer.parameterCount;
    log(`full: every weight trained (${trainer.names.length} tensors): ${trainableParams.toLocaleString("en-US")} trainable parameters`);
  } else {
    trainer = new LoraTrainer(model, lora, {
      gradientCheckpointing: o.gradientCheckpointing, ...selective, seed: o.seed, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
      collectives: world,
    });
    trainableParams = loraParameterCount(trainer.specs, lora.rank);
    log(`lora: r=${lora.rank} alpha=${lora.alpha}${lora.rslora ? " rslora" : ""} on ${lora.targetModules.join(",")}: ${trainableParams.toLocaleString("en-US")} trainable parameters`);
  }
  const kept = formatSelective(model, trainer.selectiveLayers, o.batchSize * o.maxLength);
  if (kept) log(`selective checkpointing at ${o.batchSize}×${o.maxLength} tokens${o.keepActivationsGib !== undefined ? ` within ${o.keepActivationsGib} GiB` : ""}: ${kept}`);
  const fullTrainer = trainer instanceof FullTrainer ? trainer : null, loraTrainer = trainer instanceof LoraTrainer ? trainer : null;
  const outputKind = fullTrainer ? "model" : "adapter";
  /** The trained weights (a snapshot to restore), and restoring one. */
  const getWeights = (): Promise<LoraWeights[] | Map<string, Float32Array>> => trainer.getWeights();
  const setWeights = (w: LoraWeights[] | Map<string, Float32Array>) => (w instanceof Map ? fullTrainer!.setWeights(w) : loraTrainer!.setWeights(w));
  // A resumed checkpoint, read before the monitor scores the base model (the weights are set after).
  const ckSizes = () => new Map(fullTrainer!.segments.map((seg) => [seg.name, seg.numel]));
  const ck = run.resumeFrom && world.isRoot ? (fullTrainer ? loadFullCheckpoint(run.resumeFrom, ckSizes()) : loadCheckpoint(run.resumeFrom, model.cfg)) : null;
  const general = generalText && generalEvalSet(generalText, tokenizer, Math.min(o.maxLength, model.cfg.maxPositionEmbeddings), tokenizer.padId ?? tokenizer.eosId ?? 0);
  // The base model: LoRA disabled (B = 0 gives the same, but no adapter is exact and cheaper); a
  // resumed run takes the score its checkpoint recorded (a full run's weights are no longer the base's).
  const storedBase = ck?.state.generalPplBase;
  const generalBase = general && (typeof storedBase === "number" ? storedBase : await generalTextPerplexity(model, general));
  if (general && generalBase !== null) {
    const limit = o.maxForgetting !== undefined ? `; stops above ${formatPct(o.maxForgetting)}` : "";
    log(`forgetting monitor: ${general.text.label} (${general.tokens} tokens), base model general-text ppl ${formatPpl(generalBase)}${typeof storedBase === "number" ? " (recorded at the start of the run)" : ""}${limit}`);
  }

  let step = 0, tokensSeen = 0, elapsedBefore = 0, bestEval: number | null = null;
  const evalBatches = evalSet && evalSet.examples.length
    ? new DataLoader(evalSet.examples, { mode: "pad", batchSize: o.batchSize, maxLength: o.maxLength, seed: o.seed, padId, shuffle: false })
    : null;
  if (world.size > 1) log(`data parallel: ${world.size} ranks × ${o.gradAccum} micro-batches of ${o.batchSize} rows per step`);
  if (ck) {
    const ckDir = ck.dir;
    setWeights("adapter" in ck ? ck.adapter.weights : ck.weights);
    trainer.setOptimizerMoments(ck.optimizer.moments);
    step = ck.state.step;
    tokensSeen = ck.state.tokensSeen;
    elapsedBefore = ck.state.elapsedS;
    bestEval = ck.state.bestEvalLoss;
    loader.seek(ck.state.dataPosition);
    log(`resumed run ${run.runId} from ${ckDir} at step ${step}`);
    if (ck.state.schedule.totalSteps !== totalSteps) {
      log(`resume: the run now has ${totalSteps} steps (was ${ck.state.schedule.totalSteps}): the ${schedule.kind} lr schedule spans the new total from step ${step + 1} on`);
    }
  }
  ({ step, tokensSeen, elapsedBefore, bestEval } = await startFromRoot(world, trainer, loader, { step, tokensSeen, elapsedBefore, bestEval }));
  const metrics = new MetricsLog(world.isRoot ? path.join(o.out, "metrics.jsonl") : null, run.resumeFrom ? { resumeFromStep: step } : {});
  const progress = new ProgressReporter({ total: totalSteps, logEvery: o.logEvery, startStep: step, startElapsedS: elapsedBefore, ...(o.quiet || !world.isRoot ? { stream: { write: () => true } } : {}) });

  // A full run records no LoRA options (its training_args.json is a valid --config for --full).
  const { rank: _r, alpha: _a, dropout: _d, targetModules: _t, rslora: _s, ...notLora } = o;
  const trainingArgs = {
    ...(fullTrainer ? notLora : o), log: undefined, onStepEnd: undefined, world: undefined, ...(world.size > 1 ? { world_size: world.size } : {}), model: o.model, totalSteps, schedule, trainableParams, tool: "tuneloom",
    run_id: run.runId, run_history: run.record.history,
  };
  const metricsJsonl = () => metrics.records.map((r) => JSON.stringify(r)).join("\n") + (metrics.records.length ? "\n" : "");
  const adapterContents = async (): Promise<AdapterContents> => ({
    baseModel: o.model, lora, weights: await loraTrainer!.getWeights(), chatTemplate: template.source, trainingArgs,
    tokenizerDir: o.model, metricsJsonl: metricsJsonl(), lossCurveSvg: renderLossCurveSvg(metrics.records),
  });
  /**
   * A full run's model directory: the base's layout, config and tokenizer, the trained weights
   * (in the base's dtype; "F32": the f32 masters, for checkpoints), the template trained with.
   * `use` gets the contents while the base's weight files are open.
   */
  const withModelContents = async <T>(dtype: "F32" | undefined, use: (c: ModelDirContents) => T): Promise<T> => {
    const weights = await fullTrainer!.getWeights();
    const store = openCheckpoint(o.model);
    try {
      return use({
        baseDir: o.model, store, tensors: tensorsWithWeights(store, weights, dtype), tokenizerDir: o.model, chatTemplate: template.source,
        extraFiles: {
          "training_args.json": JSON.stringify({ ...trainingArgs, chat_template_sha256: template.sha256 }, null, 2) + "\n",
          "metrics.jsonl": metricsJsonl(), "loss_curve.svg": renderLossCurveSvg(metrics.records),
        },
      });
    } finally {
      store.close();
    }
  };
  const evaluate = async () => {
    if (!evalBatches) return null;
    const batches: Batch[] = [];
    for (let i = 0; i < evalBatches.batchesInEpoch(0); i++) batches.push(evalBatches.batchAt({ epoch: 0, step: i }));
    return trainer.evaluate(batches);
  };

  // The forgetting monitor: the last score, and (with a limit) the last adapter under it.
  let generalFinal: number | null = null, generalStep = -1, stopped = false;
  // A full run keeps all its weights in host memory (4·P bytes).
  type UnderLimit = { step: number; weights: LoraWeights[] | Map<string, Float32Array>; ppl: number; evalLoss: number | null };
  let underLimit = null as UnderLimit | null; // (not narrowed to null: the closure below assigns it)
  /** Scores the general text at `step`; true when that exceeds --max-forgetting (the last adapter under it is restored). */
  const forgettingExceeded = async (step: number, evalLoss: number | null): Promise<boolean> => {
    if (!general || generalBase === null || generalStep === step) return false;
    const ppl = await generalTextPerplexity(model, general, loraTrainer?.lora);
    generalFinal = ppl;
    generalStep = step;
    metrics.attach(step, { general_ppl: ppl, general_ppl_base: generalBase });
    progress.log(`general: step ${step} ${formatGeneralEvalLine(ppl, generalBase)}`);
    if (o.maxForgetting === undefined) return false;
    if (forgettingPct(ppl, generalBase) <= o.maxForgetting) {
      underLimit = { step, weights: await getWeights(), ppl, evalLoss };
      return false;
    }
    const over = `step ${step}: ${formatGeneralEvalLine(ppl, generalBase)} exceeds --max-forgetting ${formatPct(o.maxForgetting)}`;
    if (!underLimit) {
      throw new Error(`${over}, and no evaluation since the run ${run.resumeFrom ? "resumed" : "started"} was under the limit: no ${outputKind} written. Lower --lr, evaluate earlier (--eval-steps) or raise --max-forgetting.`);
    }
    const kept = underLimit;
    setWeights(kept.weights);
    generalFinal = kept.ppl;
    const message = `stopped: ${over}; the ${outputKind} is step ${kept.step}'s, the last under the limit (${formatGeneralEvalLine(kept.ppl, generalBase)})`;
    progress.log(message);
    notes.push(message);
    return true;
  };

  let firstLoss = Number.NaN, lastLoss = Number.NaN;
  let evaluatedAt: { step: number; loss: number | null } | null = null;
  const t0 = performance.now();
  const elapsed = () => elapsedBefore + (performance.now() - t0) / 1000;
  while (step < totalSteps) {
    const micro = nextMicroBatches(loader, o.gradAccum, world);
    const lr = learningRate(schedule, step);
    const ts = performance.now();
    const r = await trainer.step(micro, lr, step + 1);
    if (r.nonFinite) {
      throw new Error(`step ${step + 1}: the loss or a gradient is NaN/inf (loss ${r.loss}); the update was skipped and the run stopped. The last good checkpoint (if any) is in ${o.out}. Lower --lr or check the data.`);
    }
    step++;
    tokensSeen += r.tokens;
    if (Number.isNaN(firstLoss)) firstLoss = r.loss;
    lastLoss = r.loss;
    const tokS = r.tokens / ((performance.now() - ts) / 1000);
    metrics.log({ step, loss: r.loss, lr, grad_norm: r.gradNorm, tokens: tokensSeen, tok_s: tokS, elapsed_s: elapsed() });
    progress.update({ step, loss: r.loss, lr, tokS, gradNorm: r.gradNorm, elapsedS: elapsed(), epoch: epochAt() });
    if (o.evalSteps && step % o.evalSteps === 0) {
      const ev = await evaluate();
      evaluatedAt = { step, loss: ev };
      if (ev !== null) {
        metrics.logEval(step, ev);
        bestEval = bestEval === null ? ev : Math.min(bestEval, ev);
        progress.log(formatEvalLine(step, epochAt(), ev, bestEval));
      }
      if (await forgettingExceeded(step, ev)) {
        stopped = true;
        break;
      }
    }
    if (world.isRoot && o.saveSteps && step % o.saveSteps === 0 && step < totalSteps) {
      const moments = await trainer.getOptimizerMoments();
      const optimizer = { step, moments };
      const state: TrainerState = {
        runId: run.runId, step, dataPosition: loader.position, schedule: { ...schedule, step }, tokensSeen, elapsedS: elapsed(), bestEvalLoss: bestEval,
        ...(generalBase !== null ? { generalPplBase: generalBase } : {}),
      };
      const saved = fullTrainer
        ? await withModelContents("F32", (model) => saveCheckpoint(o.out, { model, optimizer, state }, { keepLast: o.keepCheckpoints }))
        : saveCheckpoint(o.out, { adapter: await adapterContents(), optimizer, state }, { keepLast: o.keepCheckpoints });
      progress.log(`checkpoint: step ${step} saved to ${saved}`);
    }
    o.onStepEnd?.({ step, loss: r.loss });
  }
  progress.finish();
  // The last step's evaluation, unless --eval-steps has just done it.
  const evaluatedLast = evaluatedAt?.step === step;
  let evalLoss = stopped ? null : evaluatedLast ? evaluatedAt!.loss : await evaluate();
  if (evalLoss !== null && !evaluatedLast) {
    metrics.logEval(step, evalLoss);
    bestEval = bestEval === null ? evalLoss : Math.min(bestEval, evalLoss);
    progress.log(formatEvalLine(step, epochAt(), evalLoss, bestEval));
  }
  if (!stopped) stopped = await forgettingExceeded(step, evalLoss);
  // Stopped by the monitor: the adapter (and so the eval loss reported) is the last one under the limit.
  if (stopped) evalLoss = underLimit?.evalLoss ?? null;
  const adapterDir = path.join(o.out, outputKind);
  if (world.isRoot) {
    if (existsSync(adapterDir)) log(`replacing ${adapterDir}`);
    if (fullTrainer) await withModelContents(undefined, (c) => writeModelDir(adapterDir, c));
    else writeAdapterDir(adapterDir, await adapterContents());
  }
  return {
    adapterDir, steps: step, firstLoss, finalLoss: lastLoss, evalLoss, bestEvalLoss: bestEval, epochs: epochAt(), tokens: tokensSeen, elapsedS: elapsed(),
    trainableParams, generalPpl: generalBase !== null && generalFinal !== null ? { base: generalBase, final: generalFinal } : null, model, trainer, notes,
  };
}
