/** Shared test fixtures: a tiny model directory (ChatML, byte-level BPE) made once per process. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { loadChatTemplate, loadTokenizer, writeTinyModel } from "@tuneloom/model";
import { type AdapterContents, loraLayerSpecs, parseLoraConfig } from "@tuneloom/model";
import { parseJsonl, type TrainingRow } from "../src/data.ts";
import { initLoraWeights } from "../src/lora-init.ts";
import { Rng } from "../src/rng.ts";

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

