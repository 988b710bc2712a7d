/**
 * Checkpoints: `<out>/checkpoint-<step>/` = a complete adapter directory (LoRA) or model directory
 * of the f32 master weights (full fine-tuning), loadable and servable as is, +
 * `optimizer.safetensors` (AdamW moments, `<tensor>.exp_avg` / `.exp_avg_sq`) + `trainer_state.json`.
 *
 * What resume restores, so that a resumed run takes exactly the steps the uninterrupted run
 * would have: the LoRA weights, AdamW's m and v and its step count, the data position (next
 * batch = {epoch, step}, which with the seed names the batch exactly), and the lr schedule
 * (config + steps taken). Nothing random needs state of its own: shuffles are derived from
 * (seed, epoch) and LoRA dropout masks are a hash of (seed, step, layer, module, micro-batch),
 * so the restored step brings them back. (Checkpoints of earlier versions carry an `rng` field;
 * it is ignored.)
 * Each checkpoint is written atomically (atomic-dir.ts); a run killed mid-save leaves only a
 * `.tmp-<pid>` directory, which resume ignores and the next start removes. `runId` names the run
 * (run-dir.ts) that wrote it: a resume continues only its own run's checkpoints.
 */
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import {
  type AdapterContents, AdapterFileError, type LoadedAdapter, type LoraWeights, loraTensorName, type ModelConfig, type ModelDirContents, openCheckpoint, openSafetensors,
  readAdapterDir, type TensorToWrite, writeAdapterFiles, writeDirAtomically, writeModelFiles, writeSafetensors,
} from "@tuneloom/model";
import type { DataPosition } from "./batching.ts";
import { SCHEDULE_KINDS, type ScheduleState } from "./schedule.ts";

export const TRAINER_STATE_FILE = "trainer_state.json";
export const OPTIMIZER_FILE = "optimizer.safetensors";
const CHECKPOINT_DIR = /^checkpoint-(\d+)$/;

export interface TrainerState {
  /** The run that wrote it (run.json); absent in checkpoints of earlier versions. */
  runId?: string;
  /** Optimizer steps taken. */
  step: number;
  /** Where the next batch comes from. */
  dataPosition: DataPosition;
  schedule: ScheduleState;
  /** Non-pad tokens trained on so far. */
  tokensSeen: number;
  /** Wall time spent training so far (resume adds to it). */
  elapsedS: number;
  /** Lowest eval loss so far, when evaluating. */
  bestEvalLoss: number | null;
  /**
   * The forgetting monitor's base-model general-text perplexity, measured before step 1 (absent:
   * no monitor, or an earlier version). A resumed full run no longer has the base weights.
   */
  generalPplBase?: number | null;
}

/** AdamW moments per LoRA tensor name (`...lora_A.weight`), same length as the tensor. */
export interface OptimizerState {
  /** Updates taken: bias correction uses it. */
  step: number;
  moments: Map<string, { m: Float32Array; v: Float32Array }>;
}

const trainerStateSchema = z.object({
  format: z.literal("tuneloom-trainer-state"),
  version: z.literal(1),
  runId: z.string().optional(),
  step: z.number().int().nonnegative(),
  dataPosition: z.object({ epoch: z.number().int().nonnegative(), step: z.number().int().nonnegative() }),
  schedule: z.object({
    kind: z.enum(SCHEDULE_KINDS),
    baseLr: z.number().positive(),
    warmupSteps: z.number().int().nonnegative(),
    totalSteps: z.number().int().positive(),
    minLrRatio: z.number().optional(),
    numCycles: z.number().optional(),
    step: z.number().int().nonnegative(),
  }),
  tokensSeen: z.number().nonnegative(),
  elapsedS: z.number().nonnegative(),
  bestEvalLoss: z.number().nullable(),
  generalPplBase: z.number().nullable().optional(),
  optimizerStep: z.number().int().nonnegative(),
});

export function checkpointDirName(step: number): string {
  return `checkpoint-${step}`;
}

export interface SaveCheckpointOptions {
  /** Keep only the newest K checkpoints (by step); undefined or 0 keeps all. */
  keepLast?: number;
}

/** Each moment as `<name>.exp_avg` / `<name>.exp_avg_sq`, checked against the tensor sizes. */
function momentTensors(optimizer: OptimizerState, sizes: ReadonlyMap<string, number>): TensorToWrite[] {
  const tensors: TensorToWrite[] = [];
  for (const [name, size] of sizes) {
    const moments = optimizer.moments.get(name);
    if (!moments) throw new Error(`saveCheckpoint: no optimizer moments for '${name}'`);
    if (moments.m.length !== size || moments.v.length !== size) {
      throw new Error(`saveCheckpoint: moments of '${name}' have ${moments.m.length}/${moments.v.length} values, the tensor ${size}`);
    }
    tensors.push({ name: `${name}.exp_avg`, dtype: "F32", shape: [size], data: moments.m });
    tensors.push({ name: `${name}.exp_avg_sq`, dtype: "F32", shape: [size], data: moments.v });
  }
  return tensors;
}

/** LoRA tensor name → size, in the adapter's order. */
function adapterSizes(weights: readonly LoraWeights[]): Map<string, number> {
  return new Map(weights.flatMap((w) => (["A", "B"] as const).map((which) => [loraTensorName(w.spec, which), which === "A" ? w.A.length : w.B.length] as const)));
}

/**
 * Writes `<outDir>/checkpoint-<step>/` atomically, then prunes old ones. Returns its path. A LoRA
 * run's holds its adapter; a full run's (`model`) a model directory of the f32 master weights.
 */
export function saveCheckpoint(
  outDir: string,
  checkpoint: ({ adapter: AdapterContents } | { model: ModelDirContents }) & { optimizer: OptimizerState; state: TrainerState },
  options: SaveCheckpointOptions = {},
): string {
  const { optimizer, state } = checkpoint;
  const dir = path.join(outDir, checkpointDirName(state.step));
  const sizes = "adapter" in checkpoint
    ? adapterSizes(checkpoint.adapter.weights)
    : new Map(checkpoint.model.tensors.filter((t) => optimizer.moments.has(t.name)).map((t) => [t.name, t.shape.reduce((a, b) => a * b, 1)]));
  const tensors = momentTensors(optimizer, sizes);
  writeDirAtomically(dir, (tmp) => {
    if ("adapter" in checkpoint) writeAdapterFiles(tmp, checkpoint.adapter);
    else writeModelFiles(tmp, checkpoint.model);
    writeSafetensors(path.join(tmp, OPTIMIZER_FILE), tensors, { format: "pt" });
    const json = { format: "tuneloom-trainer-state", version: 1, ...state, optimizerStep: optimizer.step };
    writeFileSync(path.join(tmp, TRAINER_STATE_FILE), JSON.stringify(json, null, 2) + "\n");
  });
  if (options.keepLast) pruneCheckpoints(outDir, options.keepLast);
  return dir;
}

/** Complete checkpoints under `outDir`, oldest first. */
export function listCheckpoints(outDir: string): { step: number; dir: string }[] {
  if (!existsSync(outDir)) return [];
  return readdirSync(outDir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && CHECKPOINT_DIR.test(e.name) && existsSync(path.join(outDir, e.name, TRAINER_STATE_FILE)))
    .map((e) => ({ step: Number(CHECKPOINT_DIR.exec(e.name)![1]), dir: path.join(outDir, e.name) }))
    .sort((a, b) => a.step - b.step);
}

/** Deletes all but the newest `keepLast` checkpoints. */
export function pruneCheckpoints(outDir: string, keepLast: number): string[] {
  if (!(Number.isInteger(keepLast) && keepLast >= 1)) throw new Error(`keepLast must be a positive integer, got ${keepLast}`);
  const all = listCheckpoints(outDir);
  const doomed = all.slice(0, Math.max(0, all.length - keepLast));
  for (const { dir } of doomed) rmSync(dir, { recursive: true, force: true });
  return doomed.map((c) => c.dir);
}

/** The run id a checkpoint records, or null (none recorded, or unreadable). */
export function readCheckpointRunId(dir: string): string | null {
  try {
    const runId = JSON.parse(readFileSync(path.join(dir, TRAINER_STATE_FILE), "utf8")).runId;
    return typeof runId === "string" ? runId : null;
  } catch {
    return null;
  }
}

export interface LoadedCheckpoint {
  dir: string;
  adapter: LoadedAdapter;
  optimizer: OptimizerState;
  state: TrainerState;
}

/** trainer_state.json, validated. */
function readTrainerState(dir: string): { state: TrainerState; optimizerStep: number } {
  const stateFile = path.join(dir, TRAINER_STATE_FILE);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(stateFile, "utf8"));
  } catch (e) {
    throw new AdapterFileError(`${stateFile}: ${existsSync(stateFile) ? `invalid JSON (${(e as Error).message})` : "not found (not a checkpoint directory)"}`);
  }
  const parsed = trainerStateSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new AdapterFileError(`${stateFile}: ${issue.path.join(".") || "(root)"}: ${issue.message}`);
  }
  const { format: _f, version: _v, optimizerStep, ...state } = parsed.data;
  return { state: state as TrainerState, optimizerStep };
}

/** optimizer.safetensors: the moments of exactly the tensors in `sizes`. */
function readMoments(dir: string, sizes: ReadonlyMap<string, number>): Map<string, { m: Float32Array; v: Float32Array }> {
  const optimizerFile = path.join(dir, OPTIMIZER_FILE);
  if (!existsSync(optimizerFile)) throw new AdapterFileError(`${optimizerFile}: not found`);
  const st = openSafetensors(optimizerFile);
  const moments = new Map<string, { m: Float32Array; v: Float32Array }>();
  try {
    const read = (name: string, size: number): Float32Array => {
      const info = st.tensors.get(name);
      if (!info) throw new AdapterFileError(`${optimizerFile}: missing tensor '${name}'`);
      if (info.dtype !== "F32" || info.shape.length !== 1 || info.shape[0] !== size) {
        throw new AdapterFileError(`${optimizerFile}: tensor '${name}': ${info.dtype} ${JSON.stringify(info.shape)}, expected F32 [${size}]`);
      }
      const copy = st.bytes(name); // a fresh, aligned copy
      return new Float32Array(copy.buffer, 0, size);
    };
    for (const [name, size] of sizes) moments.set(name, { m: read(`${name}.exp_avg`, size), v: read(`${name}.exp_avg_sq`, size) });
    if (st.tensors.size !== moments.size * 2) {
      const extra = [...st.tensors.keys()].filter((n) => !moments.has(n.replace(/\.exp_avg(_sq)?$/, "")));
      throw new AdapterFileError(`${optimizerFile}: tensors for no trained weight: ${extra.slice(0, 5).join(", ")}`);
    }
  } finally {
    st.close();
  }
  return moments;
}

/** Loads a LoRA run's checkpoint directory (validated against the model config when given). */
export function loadCheckpoint(dir: string, model?: ModelConfig): LoadedCheckpoint {
  const { state, optimizerStep } = readTrainerState(dir);
  const adapter = readAdapterDir(dir, model);
  const moments = readMoments(dir, adapterSizes(adapter.weights));
  return { dir, adapter, optimizer: { step: optimizerStep, moments }, state };
}

export interface LoadedFullCheckpoint {
  dir: string;
  /** The f32 master weights by HF name. */
  weights: Map<string, Float32Array>;
  optimizer: OptimizerState;
  state: TrainerState;
}

/** Loads a full run's checkpoint: the weights and moments of the tensors in `sizes` (HF name → values). */
export function loadFullCheckpoint(dir: string, sizes: ReadonlyMap<string, number>): LoadedFullCheckpoint {
  const { state, optimizerStep } = readTrainerState(dir);
  if (existsSync(path.join(dir, "adapter_config.json"))) throw new AdapterFileError(`${dir}: a LoRA checkpoint, not a full fine-tuning one`);
  const store = openCheckpoint(dir);
  const weights = new Map<string, Float32Array>();
  try {
    for (const [name, size] of sizes) {
      if (!store.has(name)) throw new AdapterFileError(`${dir}: checkpoint lacks '${name}'`);
      const w = store.toFloat32(name);
      if (w.length !== size) throw new AdapterFileError(`${dir}: '${name}' has ${w.length} values, the model's ${size}`);
      weights.set(name, w);
    }
  } finally {
    store.close();
  }
  return { dir, weights, optimizer: { step: optimizerStep, moments: readMoments(dir, sizes) }, state };
}
