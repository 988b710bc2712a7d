/** Shared test fixtures: a tiny model directory (ChatML, byte-level BPE) made once per process. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { loadChatTemplate, loadTokenizer, writeTinyModel } from "@tuneloom/model";
import { type AdapterContents, loraLayerSpecs, openCheckpoint, openSafetensors, parseLoraConfig } from "@tuneloom/model";
import { OPTIMIZER_FILE, TRAINER_STATE_FILE } from "../src/checkpoint.ts";
import { parseJsonl, type TrainingRow } from "../src/data.ts";
import { initLoraWeights } from "../src/lora-init.ts";
import { Rng } from "../src/rng.ts";
import { TRAIN_DEFAULTS, type TrainOptions } from "../src/train-loop.ts";

const created: string[] = [];
// Cleaned at exit, not in afterAll: `bun test` shares this module across test files.
process.on("exit", () => {
  for (const dir of created) rmSync(dir, { recursive: true, force: true });
});

export function tempDir(prefix = "trainer-test-"): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  created.push(dir);
  return dir;
}

let tiny: ReturnType<typeof makeTiny> | null = null;
function makeTiny() {
  const dir = path.join(tempDir("tiny-model-"), "model");
  const result = writeTinyModel(dir, { seed: 1 });
  return { dir, config: result.config, tokenizer: loadTokenizer(dir), template: loadChatTemplate(dir) };
}

/** The tiny model: dir, config, tokenizer, chat template (ChatML). */
export function tinyModel() {
  tiny ??= makeTiny();
  return tiny;
}

/** Rows from JSON values, as if read from `file`. */
export function rowsOf(values: unknown[], file = "train.jsonl"): TrainingRow[] {
  return parseJsonl(values.map((v) => JSON.stringify(v)).join("\n"), file).rows;
}

/** Adapter contents for the tiny model with non-zero B, so a round trip checks real values. */
export function sampleAdapter(targetModules = "q,v,down", rank = 4): AdapterContents {
  const tiny = tinyModel();
  const lora = parseLoraConfig({ rank, alpha: 8, dropout: 0.05, targetModules });
  const weights = initLoraWeights(loraLayerSpecs(tiny.config, lora), rank, 7);
  const rng = new Rng(9);
  for (const w of weights) rng.fillUniform(w.B, -1, 1);
  return {
    baseModel: tiny.dir,
    lora,
    weights,
    chatTemplate: tiny.template.source,
    trainingArgs: { learning_rate: 2e-4, epochs: 3, seed: 7 },
    tokenizerDir: tiny.dir,
    metricsJsonl: '{"step":1,"loss":2}\n',
    lossCurveSvg: "<svg/>\n",
  };
}


const COUNTRIES = ["Arvel", "Brisk", "Cantor", "Dunmore", "Elbe", "Frostia", "Galen", "Hollow", "Istra", "Jorvik"];

/** `dir/train.jsonl`: 10 short conversations of uneven length (so padding and batch shapes vary). */
export function writeCapitalsData(dir: string): string {
  const file = path.join(dir, "train.jsonl");
  const rows = COUNTRIES.map((c, i) => ({
    messages: [
      { role: "user", content: `What is the capital of ${c}?${" Please answer.".repeat(i % 3)}` },
      { role: "assistant", content: `The capital of ${c} is ${c.slice(0, 3)}ville${"!".repeat(i % 4)}.` },
    ],
  }));
  writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return file;
}

/**
 * A run of the tiny model that exercises every piece resume restores: gradient accumulation,
 * shuffling across epochs, LoRA dropout, warmup + cosine, AdamW with weight decay. Quiet.
 */
export function smallRunOptions(data: string, out: string, overrides: Partial<TrainOptions> = {}): TrainOptions {
  return {
    ...TRAIN_DEFAULTS, model: tinyModel().dir, data, out,
    rank: 4, alpha: 8, dropout: 0.1, targetModules: "q,v,o,down", lr: 2e-2, warmupSteps: 1, scheduler: "cosine",
    batchSize: 2, gradAccum: 2, maxLength: 64, seed: 3, weightDecay: 0.01,
    quiet: true, log: () => {}, ...overrides,
  };
}

/** 16 conversations of uneven length (batch shapes vary from step to step), as train.jsonl in dir. */
export function writeUnevenConversations(dir: string): string {
  const file = path.join(dir, "train.jsonl");
  const rows = Array.from({ length: 16 }, (_, i) => ({
    messages: [
      { role: "user", content: `What is the capital of C${i}?${" Please answer.".repeat(i % 3)}` },
      { role: "assistant", content: `The capital of C${i} is V${i}ville${"!".repeat(i % 4)}.` },
    ],
  }));
  writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return file;
}

/** A checkpoint's trainer_state.json without what differs between two runs by design (wall clock, run id). */
export const stateWithoutClock = (dir: string) => {
  const { elapsedS: _e, runId: _r, ...rest } = JSON.parse(readFileSync(path.join(dir, TRAINER_STATE_FILE), "utf8"));
  return rest;
};

/** A checkpoint's optimizer moments as raw bytes per tensor. */
export const optimizerBytes = (dir: string) => {
  const st = openSafetensors(path.join(dir, OPTIMIZER_FILE));
  try {
    return new Map([...st.tensors.keys()].map((k) => [k, st.bytes(k).slice()]));
  } finally {
    st.close();
  }
};

/** A model directory's tensors as float32, by name. */
export function weightsOf(dir: string): Map<string, Float32Array> {
  const s = openCheckpoint(dir);
  try {
    return new Map(s.names().map((n) => [n, s.toFloat32(n)]));
  } finally {
    s.close();
  }
}
