/** Shared test fixtures: a tiny model directory (ChatML, byte-level BPE) made once per process. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll } from "bun:test";
import { loadChatTemplate } from "@tuneloom/chat-template";
import { writeTinyModel } from "@tuneloom/model/tiny-model.ts";
import { loadTokenizer } from "@tuneloom/model/tokenizer.ts";
import { parseJsonl, type TrainingRow } from "../src/data.ts";

const created: string[] = [];
afterAll(() => {
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
