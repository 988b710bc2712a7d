/**
 * The run directory (`--out`): one run's identity, checkpoints, metrics and adapter. A run has
 * an id and the settings that define it, written to `run.json` before any expensive work; each
 * checkpoint records the run id. From that:
 *
 *  - a new run into a directory that holds anything (but earlier `.previous-*` folders) is
 *    refused; `--overwrite` moves the old contents into `.previous-<old run id>/` (nothing is
 *    deleted) and says so;
 *  - `--resume` continues only its own run's checkpoints, and refuses settings that contradict
 *    the run, naming each with the run's value and the new one. What cannot change the steps
 *    already taken (more epochs or steps, save/eval/log frequency, where the data file lives when
 *    its bytes are the same) may change, with a notice; run.json keeps the history;
 *  - every start first finishes or undoes writes a crash interrupted (`recoverDirWrites`).
 *
 * docs/runs.md describes the layout and the rules for users.
 */
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync, renameSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { type LoadedChatTemplate, normalizeTargetModules, readJsonObject, recoverDirWrites } from "@tuneloom/model";
import { listCheckpoints, readCheckpointRunId, TRAINER_STATE_FILE } from "./checkpoint.ts";
import type { TrainOptions } from "./train-loop.ts";

export const RUN_FILE = "run.json";
const PREVIOUS_DIR = /^\.previous-/;
/** What a run writes atomically in its directory (see recovery). */
const RUN_WRITES = /^(adapter|model|checkpoint-\d+|run\.json)$/;

/** A run directory that cannot be used as asked; the message says what to do instead. */
export class RunDirError extends Error {
  override readonly name = "RunDirError";
}

type Settings = Record<string, string | number | boolean | null>;

export interface RunEvent {
  event: "start" | "resume";
  at: string;
  /** resume: the checkpoint continued from. */
  checkpoint?: string;
  /** resume: adjustable settings that changed, [before, after]. */
  changed?: Record<string, [unknown, unknown]>;
}

export interface RunRecord {
  format: "tuneloom-run";
  version: 1;
  runId: string;
  createdAt: string;
  /** What defines the run: a resume must match every one. */
  settings: Settings;
  /** What a resume may change (with a notice): the latest values. */
  adjustable: Settings;
  history: RunEvent[];
}

export interface OpenedRun {
  dir: string;
  runId: string;
  record: RunRecord;
  /** The checkpoint to continue from (resume only). */
  resumeFrom: string | null;
}

/** The flag that sets a setting, for messages. */
const FLAG: Record<string, string> = {
  modelConfig: "the model's config.json", chatTemplate: "the model's chat template",
  dataContents: "the contents of --data", evalDataContents: "the contents of --eval-data",
};
const flagOf = (key: string) => FLAG[key] ?? `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** sha256 and size of a file, read in chunks (data files can be large). */
export function fileFingerprint(file: string): string {
  const hash = createHash("sha256");
  const fd = openSync(file, "r");
  const buf = new Uint8Array(1 << 20);
  let size = 0;
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; size += n) hash.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return `sha256:${hash.digest("hex")} (${size} bytes)`;
}

/** The settings that define a run, and those a resume may change. */
export function runSettings(o: TrainOptions, template: LoadedChatTemplate): { settings: Settings; adjustable: Settings } {
  const v = <T>(x: T | undefined) => (x === undefined ? null : x);
  const modelConfig = path.join(o.model, "config.json");
  const settings: Settings = {
    model: path.resolve(o.model),
    modelConfig: existsSync(modelConfig) ? fileFingerprint(modelConfig) : null,
    chatTemplate: `sha256:${template.sha256}`,
    dataContents: fileFingerprint(o.data),
    evalDataContents: o.evalData ? fileFingerprint(o.evalData) : null,
    evalFraction: v(o.evalFraction),
    allowReplacement: o.allowReplacement ?? false,
    rank: o.rank, alpha: o.alpha, dropout: o.dropout, rslora: o.rslora,
    targetModules: normalizeTargetModules(o.targetModules).join(","),
    seed: o.seed, lr: o.lr, scheduler: o.scheduler, minLrRate: v(o.minLrRate), warmupSteps: v(o.warmupSteps), warmupRatio: v(o.warmupRatio),
    weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
    batchSize: o.batchSize, gradAccum: o.gradAccum, maxLength: o.maxLength, packing: o.packing,
    trainOnAllTokens: o.trainOnAllTokens, weightDtype: v(o.weightDtype),
    // Only when set: runs of earlier versions (LoRA) have no such key, which reads as null.
    ...(o.full ? { full: true } : {}),
  };
  const adjustable: Settings = {
    epochs: o.epochs, maxSteps: v(o.maxSteps), saveSteps: v(o.saveSteps), keepCheckpoints: v(o.keepCheckpoints),
    evalSteps: v(o.evalSteps), logEvery: o.logEvery, gradientCheckpointing: o.gradientCheckpointing, keepAttentionLayers: v(o.keepAttentionLayers), keepMlpLayers: v(o.keepMlpLayers), keepActivationsGib: v(o.keepActivationsGib),
    data: path.resolve(o.data), evalData: o.evalData ? path.resolve(o.evalData) : null,
    // The forgetting monitor only measures: its text and limit never change the steps taken.
    forgettingMonitor: o.forgettingMonitor !== false,
    generalEval: o.generalEval ? fileFingerprint(o.generalEval) : null, maxForgetting: v(o.maxForgetting),
  };
  return { settings, adjustable };
}

export function readRunRecord(dir: string): RunRecord | null {
  const file = path.join(dir, RUN_FILE);
  if (!existsSync(file)) return null;
  const json = readJsonObject(file) as unknown as RunRecord;
  if (json.format !== "tuneloom-run" || typeof json.runId !== "string" || typeof json.settings !== "object") {
    throw new RunDirError(`${file}: not a tuneloom run record (format "tuneloom-run" with runId and settings)`);
  }
  return json;
}

/** Written beside, then renamed over: a crash leaves the old run.json or the new one. */
function writeRunRecord(dir: string, record: RunRecord): void {
  const file = path.join(dir, RUN_FILE);
  writeFileSync(`${file}.tmp-${process.pid}`, JSON.stringify(record, null, 2) + "\n");
  renameSync(`${file}.tmp-${process.pid}`, file);
}

function newRunId(): string {
  return `${new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}-${randomBytes(3).toString("hex")}`;
}

export interface OpenRunOptions {
  out: string;
  resume?: string;
  overwrite?: boolean;
  settings: Settings;
  adjustable: Settings;
  log: (line: string) => void;
}

/**
 * Makes `out` this run's directory (see the header): recovers interrupted writes, then either
 * starts a new run (refusing a non-empty directory unless `overwrite`) or checks a resume
 * against run.json and picks the run's newest checkpoint. Throws RunDirError before any
 * training work when the directory cannot be used as asked.
 */
export function openRunDir(o: OpenRunOptions): OpenedRun {
  const dir = path.resolve(o.out);
  if (existsSync(dir) && !statSync(dir).isDirectory()) throw new RunDirError(`--out ${o.out}: exists and is not a directory`);
  // Only in a run directory, and only what a run writes there: `--out` may name a user's folder by mistake.
  if (existsSync(path.join(dir, RUN_FILE))) {
    for (const line of recoverDirWrites(dir, (name) => RUN_WRITES.test(name))) o.log(`recovery: ${line}`);
  }
  if (o.resume !== undefined) {
    if (o.overwrite) throw new RunDirError("--resume and --overwrite contradict each other: resume continues the run in --out, overwrite starts a new one");
    return resumeRun(dir, o);
  }
  mkdirSync(dir, { recursive: true });
  const existing = readdirSync(dir).filter((name) => !PREVIOUS_DIR.test(name));
  const previous = existing.length ? readRunRecordOrNull(dir) : null;
  if (existing.length && !o.overwrite) {
    const what = previous
      ? `run ${previous.runId}, started ${previous.createdAt}: ${describeContents(dir, existing)}`
      : `${existing.length} entr${existing.length === 1 ? "y" : "ies"} not from a tuneloom run: ${existing.slice(0, 5).join(", ")}${existing.length > 5 ? ", ..." : ""}`;
    throw new RunDirError(
      `--out ${o.out} is not empty (${what}). ` +
        (previous ? `Continue that run with --resume ${o.out}, or pass` : "Pass") +
        ` --overwrite to move its contents into ${path.join(o.out, ".previous-...")}/ and start a new run there, or choose another --out.`,
    );
  }
  if (existing.length) {
    const aside = uniqueName(dir, `.previous-${previous?.runId ?? newRunId()}`);
    mkdirSync(path.join(dir, aside));
    for (const name of existing) renameSync(path.join(dir, name), path.join(dir, aside, name));
    o.log(`overwrite: moved ${existing.length} entr${existing.length === 1 ? "y" : "ies"} of ${previous ? `run ${previous.runId}` : "the earlier contents"} into ${path.join(dir, aside)}/ (nothing was deleted)`);
  }
  const runId = newRunId();
  const at = new Date().toISOString();
  const record: RunRecord = {
    format: "tuneloom-run", version: 1, runId, createdAt: at, settings: o.settings, adjustable: o.adjustable, history: [{ event: "start", at }],
  };
  writeRunRecord(dir, record);
  return { dir, runId, record, resumeFrom: null };
}

function readRunRecordOrNull(dir: string): RunRecord | null {
  try {
    return readRunRecord(dir);
  } catch {
    return null;
  }
}

function describeContents(dir: string, names: string[]): string {
  const checkpoints = listCheckpoints(dir).length;
  const parts = [names.includes("adapter") ? "an adapter" : "no adapter", `${checkpoints} checkpoint${checkpoints === 1 ? "" : "s"}`];
  const others = names.length - checkpoints - (names.includes("adapter") ? 1 : 0);
  if (others > 0) parts.push(`${others} other entr${others === 1 ? "y" : "ies"}`);
  return parts.join(", ");
}

function uniqueName(dir: string, base: string): string {
  let name = base;
  for (let i = 2; existsSync(path.join(dir, name)); i++) name = `${base}-${i}`;
  return name;
}

function resumeRun(dir: string, o: OpenRunOptions): OpenedRun {
  const resume = path.resolve(o.resume!);
  const record = readRunRecord(dir);
  if (!record) {
    throw new RunDirError(
      `--resume ${o.resume}: ${path.join(o.out, RUN_FILE)} not found, so nothing says which run wrote the checkpoints there or with what settings ` +
        `(a directory from an older tuneloom, or not a run directory). Start a new run: another --out, or --overwrite to move the contents aside.`,
    );
  }
  const differing = Object.keys({ ...record.settings, ...o.settings })
    .filter((k) => JSON.stringify(record.settings[k] ?? null) !== JSON.stringify(o.settings[k] ?? null))
    .map((k) => `${flagOf(k)}: the run has ${JSON.stringify(record.settings[k] ?? null)}, this command ${JSON.stringify(o.settings[k] ?? null)}`);
  if (differing.length) {
    throw new RunDirError(
      `--resume ${o.resume}: ${differing.length} setting${differing.length === 1 ? "" : "s"} contradict run ${record.runId} (${path.join(o.out, RUN_FILE)}):\n  ` +
        differing.join("\n  ") +
        `\nA resumed run continues with the settings it started with; give those, or start a new run (another --out, or --overwrite) to change them.`,
    );
  }

  let checkpoint: string | null;
  const isCheckpoint = existsSync(path.join(resume, TRAINER_STATE_FILE));
  if (isCheckpoint) {
    if (path.dirname(resume) !== dir) throw new RunDirError(`--resume ${o.resume}: not a checkpoint of --out ${o.out}; resume continues the run in --out`);
    checkpoint = resume;
  } else {
    if (resume !== dir) throw new RunDirError(`--resume ${o.resume}: names neither --out (${o.out}) nor one of its checkpoints`);
    const all = listCheckpoints(dir);
    const own = all.filter((c) => readCheckpointRunId(c.dir) === record.runId);
    const foreign = all.filter((c) => !own.includes(c));
    if (foreign.length) {
      o.log(`warning: ignoring ${foreign.map((c) => path.basename(c.dir)).join(", ")}: written by another run than ${record.runId}`);
    }
    checkpoint = own.at(-1)?.dir ?? null;
    if (!checkpoint) {
      throw new RunDirError(
        `--resume ${o.resume}: run ${record.runId} has no checkpoint to continue from (checkpoints are written every --save-steps steps; ` +
          `${record.adjustable.saveSteps ? `${record.adjustable.saveSteps} for this run` : "0, never, for this run"}). Start over with --overwrite.`,
      );
    }
  }
  const owner = readCheckpointRunId(checkpoint);
  if (owner !== record.runId) {
    throw new RunDirError(
      `--resume ${o.resume}: ${checkpoint} was written by ${owner ? `run ${owner}` : "an older tuneloom (no run id)"}, not by run ${record.runId} of ${path.join(o.out, RUN_FILE)}; refusing to continue another run's weights`,
    );
  }

  const changed: Record<string, [unknown, unknown]> = {};
  for (const k of Object.keys({ ...record.adjustable, ...o.adjustable })) {
    const before = record.adjustable[k] ?? null, after = o.adjustable[k] ?? null;
    if (JSON.stringify(before) !== JSON.stringify(after)) {
      changed[k] = [before, after];
      o.log(`resume: ${flagOf(k)} changed from ${JSON.stringify(before)} to ${JSON.stringify(after)} (allowed: it does not change the steps already taken)`);
    }
  }
  const event: RunEvent = { event: "resume", at: new Date().toISOString(), checkpoint: path.basename(checkpoint) };
  if (Object.keys(changed).length) event.changed = changed;
  const updated: RunRecord = { ...record, adjustable: o.adjustable, history: [...record.history, event] };
  writeRunRecord(dir, updated);
  return { dir, runId: record.runId, record: updated, resumeFrom: checkpoint };
}
