/**
 * `train`'s options: flags and `--config FILE` (YAML or JSON) checked together by ONE schema
 * before anything is loaded, every message naming the flag or key as the user wrote it.
 *
 *   names    ours (--lr), TRL/PEFT/Axolotl's (--learning-rate, learning_rate, lora_r, ...), in
 *            kebab-case, snake_case or camelCase: all one option
 *   merge    TRAIN_DEFAULTS < config file < flags
 *   config   a mapping of the same names; the training_args.json a run writes is such a file
 *            (the keys it only records, like totalSteps, are ignored)
 */
import { existsSync, readFileSync } from "node:fs";
import { z } from "zod";
import { KEEP_LAYERS_EXPECTED, type KeepLayers, SCHEDULE_KINDS, TRAIN_DEFAULTS, type TrainOptions, describeZodIssue, parseKeepLayers } from "@tuneloom/trainer";
import { type CommandSpec, UsageError, closest, kebab, nameTable, parseCommandLine } from "./args.ts";
import { MODEL_FLAG } from "./model-flags.ts";

const d = TRAIN_DEFAULTS;

export const TRAIN_SPEC = {
  name: "train",
  usage: "--model DIR --data FILE --out DIR [flags] | --config FILE [flags] | (no flags: the bundled demo)",
  description: `LoRA fine-tuning, or full fine-tuning with --full. Flags also take TRL/PEFT/Axolotl names (--learning-rate, --num-train-epochs, --lora-r,
--per-device-train-batch-size, --output-dir, ...), in kebab or snake case. --config reads the same names from YAML or JSON
(flags override it); the training_args.json of a finished run is a valid config.`,
  flags: {
    config: { type: "string", arg: "FILE", help: "YAML or JSON mapping of these options (any spelling)" },
    model: { ...MODEL_FLAG, aliases: ["model-name-or-path", "base-model"] },
    data: { type: "string", arg: "FILE", help: "training data: JSONL or a JSON array of messages / prompt+completion / text rows", aliases: ["dataset", "dataset-path", "dataset-name", "train-file", "train-data"] },
    "eval-data": { type: "string", arg: "FILE", help: "held-out data in the same format", aliases: ["eval-dataset", "eval-file", "validation-file"] },
    "eval-fraction": { type: "number", arg: "X", help: "hold out this fraction of --data for eval, in [0, 1)", aliases: ["val-set-size"] },
    out: { type: "string", arg: "DIR", help: "run directory: OUT/adapter (OUT/model with --full), checkpoints, metrics.jsonl", aliases: ["output-dir"] },
    full: { type: "boolean", help: "full fine-tuning: train every weight (f32 masters, AdamW), write OUT/model, a plain model directory; no LoRA flags (docs/full-finetuning.md)", aliases: ["full-finetuning"] },
    rank: { type: "number", help: "LoRA rank r", default: d.rank, aliases: ["lora-r", "r"] },
    alpha: { type: "number", help: "LoRA alpha (scale alpha/r)", default: d.alpha, aliases: ["lora-alpha"] },
    dropout: { type: "number", arg: "P", help: "LoRA dropout in [0, 1)", default: d.dropout, aliases: ["lora-dropout"] },
    "target-modules": { type: "string", arg: "LIST", help: "projections to adapt: q_proj,v_proj,... or all-linear", default: d.targetModules, aliases: ["lora-target-modules"] },
    rslora: { type: "boolean", help: "rank-stabilized LoRA (scale alpha/√r)", default: d.rslora, aliases: ["use-rslora"] },
    lr: { type: "number", arg: "X", help: "peak learning rate, > 0", default: d.lr, aliases: ["learning-rate"] },
    epochs: { type: "number", arg: "X", help: "passes over the data, > 0 (fractions allowed)", default: d.epochs, aliases: ["num-train-epochs", "num-epochs"] },
    "max-steps": { type: "number", help: "optimizer steps, ≥ 1; overrides --epochs" },
    "batch-size": { type: "number", help: "rows per micro-batch", default: d.batchSize, aliases: ["per-device-train-batch-size", "micro-batch-size"] },
    "grad-accum": { type: "number", help: "micro-batches per optimizer step", default: d.gradAccum, aliases: ["gradient-accumulation-steps"] },
    "max-length": { type: "number", help: "longest example in tokens (longer ones are cut from the right)", default: d.maxLength, aliases: ["max-seq-length", "max-seq-len", "sequence-len"] },
    packing: { type: "boolean", help: "pack several examples per row (sequence ids keep them apart)", default: d.packing, aliases: ["sample-packing"] },
    scheduler: { type: "string", arg: "NAME", help: `lr schedule: ${SCHEDULE_KINDS.join(", ")}`, default: d.scheduler, aliases: ["lr-scheduler-type", "lr-scheduler"] },
    "warmup-ratio": { type: "number", arg: "X", help: "warmup as a fraction of the steps, in [0, 1)", default: d.warmupRatio },
    "warmup-steps": { type: "number", help: "warmup steps (wins over --warmup-ratio when > 0)" },
    "min-lr-rate": { type: "number", arg: "X", help: "cosine_with_min_lr: floor as a fraction of --lr, in [0, 1]", aliases: ["min-lr-ratio"] },
    "weight-decay": { type: "number", arg: "X", help: "AdamW weight decay, ≥ 0", default: d.weightDecay },
    "max-grad-norm": { type: "number", arg: "X", help: "clip the gradient's global L2 norm to this, > 0", default: d.maxGradNorm },
    seed: { type: "number", help: "seed of shuffling, dropout, init and eval split", default: d.seed },
    "gradient-checkpointing": { type: "boolean", help: "recompute activations in backward (--no-gradient-checkpointing: faster, more memory)", default: d.gradientCheckpointing },
    "keep-attention-layers": { type: "string", arg: "N|all", help: "selective checkpointing: N layers keep their attention output (2·tokens·heads·head-dim bytes each) instead of recomputing it (default 0; docs/cli.md)" },
    "keep-mlp-layers": { type: "string", arg: "N|all", help: "selective checkpointing: N layers keep their MLP's gate/up (4·tokens·intermediate bytes each) instead of recomputing them (default 0; docs/cli.md)" },
    "keep-activations-gib": { type: "number", arg: "GIB", help: "selective checkpointing within GIB GiB: attention outputs first, then MLPs, in as many layers as fit (instead of the two counts)" },
    "train-on-all-tokens": { type: "boolean", help: "loss on prompts too, not only assistant tokens", default: d.trainOnAllTokens, aliases: ["train-on-inputs"] },
    "save-steps": { type: "number", help: "save a resumable checkpoint every N steps, ≥ 1 (default: none)" },
    "keep-checkpoints": { type: "number", help: "keep only the newest N checkpoints (default: all)", aliases: ["save-total-limit"] },
    "eval-steps": { type: "number", help: "evaluate every N steps, ≥ 1 (default: at the end only)" },
    "log-every": { type: "number", help: "print progress (mean loss over the window) every N steps", default: d.logEvery, aliases: ["logging-steps"] },
    resume: { type: "string", arg: "DIR", help: "continue the run in DIR from its newest checkpoint", aliases: ["resume-from-checkpoint"] },
    "weight-dtype": { type: "string", arg: "f32|f16|bf16", help: "GPU dtype of the frozen weights (default: the checkpoint's)" },
    "general-eval": { type: "string", arg: "FILE", help: "forgetting monitor: general text (plain, or JSONL of {\"text\"} rows) scored at every eval against the base model (default: a bundled text)" },
    "forgetting-monitor": { type: "boolean", help: "score general text at every eval (--no-forgetting-monitor: skip it)", default: d.forgettingMonitor },
    "max-forgetting": { type: "number", arg: "PCT", help: "stop when general-text perplexity is more than PCT % above the base model's; keeps the last adapter under it" },
    quiet: { type: "boolean", help: "no progress lines" },
    overwrite: { type: "boolean", help: "start a new run in a non-empty --out, moving its contents into OUT/.previous-<run id>/ (docs/runs.md)", aliases: ["overwrite-output-dir"] },
    "allow-replacement": { type: "boolean", help: "read invalid UTF-8 in the data as U+FFFD instead of failing" },
  },
} as const satisfies CommandSpec;

/** Keys a training_args.json records but that are not options: accepted in a config and ignored. */
const RECORDED_ONLY = new Set(["total-steps", "schedule", "trainable-params", "tool", "chat-template-sha256", "run-id", "run-history"]);

const int = () => z.number().int();
/** A count of layers (a flag's "12" too) or "all": selective checkpointing. */
const keepLayers = () => z.preprocess(
  (v) => parseKeepLayers(v) ?? v,
  z.custom<KeepLayers>((v) => parseKeepLayers(v) !== null, { error: (issue) => `expected ${KEEP_LAYERS_EXPECTED}, got ${JSON.stringify(issue.input)}` }),
).optional();
const trainSchema = z.strictObject({
  model: z.string().min(1),
  data: z.string().min(1),
  evalData: z.string().min(1).optional(),
  evalFraction: z.number().min(0).lt(1).optional(),
  out: z.string().min(1),
  full: z.boolean().optional(),
  rank: int().min(1),
  alpha: z.number().positive(),
  dropout: z.number().min(0).lt(1),
  targetModules: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
  rslora: z.boolean(),
  lr: z.number().positive(),
  epochs: z.number().positive(),
  maxSteps: int().min(1).optional(),
  batchSize: int().min(1),
  gradAccum: int().min(1),
  maxLength: int().min(2),
  packing: z.boolean(),
  scheduler: z.enum(SCHEDULE_KINDS),
  warmupRatio: z.number().min(0).lt(1).optional(),
  warmupSteps: int().min(0).optional(),
  minLrRate: z.number().min(0).max(1).optional(),
  weightDecay: z.number().min(0),
  maxGradNorm: z.number().positive(),
  seed: int().min(0).max(0xffffffff),
  gradientCheckpointing: z.boolean(),
  keepAttentionLayers: keepLayers(),
  keepMlpLayers: keepLayers(),
  keepActivationsGib: z.number().min(0).optional(),
  trainOnAllTokens: z.boolean(),
  saveSteps: int().min(1).optional(),
  keepCheckpoints: int().min(1).optional(),
  evalSteps: int().min(1).optional(),
  logEvery: int().min(1),
  resume: z.string().min(1).optional(),
  weightDtype: z.enum(["f32", "f16", "bf16"]).optional(),
  generalEval: z.string().min(1).optional(),
  forgettingMonitor: z.boolean(),
  maxForgetting: z.number().positive().optional(),
  quiet: z.boolean().optional(),
  overwrite: z.boolean().optional(),
  allowReplacement: z.boolean().optional(),
});

const camel = (k: string) => k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** A config file's mapping: `.json` as JSON, anything else as YAML (a superset of JSON). */
export function readConfigFile(file: string): Record<string, unknown> {
  if (!existsSync(file)) throw new UsageError(`--config ${file}: not found`);
  const text = readFileSync(file, "utf8");
  const json = file.endsWith(".json");
  let value: unknown;
  try {
    value = json ? JSON.parse(text) : Bun.YAML.parse(text);
  } catch (e) {
    throw new UsageError(`--config ${file}: invalid ${json ? "JSON" : "YAML"} (${(e as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new UsageError(`--config ${file}: expected a mapping of option names to values`);
  return value as Record<string, unknown>;
}

/** Axolotl's `datasets: [{path: FILE}]` (one local dataset) as `data`. */
function axolotlDatasets(value: unknown, where: string): unknown {
  const list = Array.isArray(value) ? value : [value];
  const paths = list.map((e) => (typeof e === "string" ? e : (e as { path?: unknown } | null)?.path));
  if (paths.length !== 1 || typeof paths[0] !== "string") throw new UsageError(`${where}: expected one local dataset ([{path: FILE}])`);
  return paths[0];
}

/**
 * Flags (argv) and the config they name → validated TrainOptions. Throws UsageError naming every
 * bad flag or key; PrintAndExit for --help/--version.
 */
export function resolveTrainOptions(argv: string[]): TrainOptions {
  const { flags, written } = parseCommandLine(argv, TRAIN_SPEC);
  const table = nameTable(TRAIN_SPEC.flags);
  const values: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  if (flags.config !== undefined) {
    const file = flags.config;
    for (const [key, value] of Object.entries(readConfigFile(file))) {
      const k = kebab(key);
      const where = `${file}: ${key}`;
      if (RECORDED_ONLY.has(k)) continue;
      const name = k === "datasets" ? "data" : table.get(k);
      if (!name || name === "config") {
        const guess = closest(k, [...table.keys()].filter((n) => n !== "config"));
        throw new UsageError(`${where}: unknown option${guess ? ` (did you mean ${guess.replace(/-/g, "_")}?)` : ""}; \`train --help\` lists them`);
      }
      if (name in origin) throw new UsageError(`${where}: given twice (also as ${origin[name]!.slice(file.length + 2)})`);
      if (value === null) continue; // YAML `key:` with no value, or JSON null: the default
      values[name] = k === "datasets" ? axolotlDatasets(value, where) : value;
      origin[name] = where;
    }
  }
  for (const [name, value] of Object.entries(flags)) {
    if (name === "config") continue;
    values[name] = value;
    origin[name] = written[name as keyof typeof written]!;
  }
  const input: Record<string, unknown> = { ...TRAIN_DEFAULTS };
  const originByKey: Record<string, string> = {};
  for (const [name, value] of Object.entries(values)) {
    input[camel(name)] = value;
    originByKey[camel(name)] = origin[name]!;
  }
  const missing = (["model", "data", "out"] as const).filter((k) => input[k] === undefined);
  if (missing.length) throw new UsageError(`${missing.map((k) => `--${k}`).join(", ")} required (or run train with no flags for the demo; see --help)`);

  const parsed = trainSchema.safeParse(input, { reportInput: true });
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => {
      const key = String(issue.path[0] ?? "");
      const { problem } = describeZodIssue({ ...issue, path: issue.path.slice(1) });
      return `${originByKey[key] ?? `--${kebab(key)}`}: ${problem}`;
    });
    throw new UsageError(lines.join("; "));
  }
  const o = parsed.data;
  const name = (k: string) => originByKey[k] ?? `--${kebab(k)}`;
  if (o.evalData !== undefined && o.evalFraction) throw new UsageError(`give ${name("evalData")} or ${name("evalFraction")}, not both`);
  if (o.scheduler === "cosine_with_min_lr" && o.minLrRate === undefined) throw new UsageError(`${name("scheduler")} cosine_with_min_lr needs --min-lr-rate (the floor as a fraction of --lr, e.g. 0.1)`);
  if (o.minLrRate !== undefined && o.scheduler !== "cosine_with_min_lr" && o.scheduler !== "cosine") throw new UsageError(`${name("minLrRate")} applies to cosine and cosine_with_min_lr, not ${o.scheduler}`);
  if (o.keepActivationsGib !== undefined) {
    const counts = (["keepAttentionLayers", "keepMlpLayers"] as const).filter((k) => k in originByKey);
    if (counts.length) throw new UsageError(`give ${name("keepActivationsGib")} or ${counts.map(name).join(" and ")}, not both (the budget picks the counts)`);
  }
  for (const k of ["keepAttentionLayers", "keepMlpLayers", "keepActivationsGib"] as const) {
    if (o[k] && !o.gradientCheckpointing) throw new UsageError(`${name(k)} keeps what gradient checkpointing recomputes: it needs gradient checkpointing on (drop --no-gradient-checkpointing or it)`);
  }
  if (o.maxForgetting !== undefined && !o.forgettingMonitor) throw new UsageError(`${name("maxForgetting")} needs the forgetting monitor (drop --no-forgetting-monitor)`);
  if (o.full) {
    const lora = ["rank", "alpha", "dropout", "targetModules", "rslora"].filter((k) => k in originByKey);
    if (lora.length) throw new UsageError(`${name("full")} trains every weight: ${lora.map(name).join(", ")} ${lora.length === 1 ? "is a LoRA option" : "are LoRA options"} (drop ${lora.length === 1 ? "it" : "them"} or --full)`);
  }
  if (o.generalEval !== undefined && !existsSync(o.generalEval)) throw new UsageError(`${name("generalEval")} ${o.generalEval}: not found`);
  return o as TrainOptions;
}
