import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { loadJsonl } from "../src/data.ts";
import { DEMO_EVAL_FILE, DEMO_TRAIN_FILE, demoAnswerMatches, demoQuestion } from "../src/demo-data.ts";
import { tokenizeDataset } from "../src/tokenize-conversation.ts";
import { DEMO_CAPITALS, demoRows } from "../data/make-demo-data.ts";
import { tinyModel } from "./helpers.ts";

describe("bundled demo dataset", () => {
  const train = loadJsonl(DEMO_TRAIN_FILE).rows;
  const evalRows = loadJsonl(DEMO_EVAL_FILE).rows;

  test("the checked-in files are what the generator writes", () => {
    const { train: t, eval: e } = demoRows();
    const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join("\n") + "\n";
    expect(readFileSync(DEMO_TRAIN_FILE, "utf8")).toBe(jsonl(t));
    expect(readFileSync(DEMO_EVAL_FILE, "utf8")).toBe(jsonl(e));
  });

  test("held-out questions are new phrasings of known countries", () => {
    expect([train.length, evalRows.length]).toEqual([140, 20]);
    const key = (r: (typeof train)[number]) => JSON.stringify(demoQuestion(r).prompt);
    const trainPrompts = new Set(train.map(key));
    const trainAnswers = new Set(train.map((r) => demoQuestion(r).answer));
    for (const row of evalRows) {
      expect(trainPrompts.has(key(row))).toBe(false);
      expect(trainAnswers.has(demoQuestion(row).answer)).toBe(true);
    }
    expect(new Set(evalRows.map((r) => demoQuestion(r).answer)).size).toBe(DEMO_CAPITALS.length);
  });

  test("short enough for the tiny model, with the answer and <|im_end|> as targets", () => {
    const tiny = tinyModel();
    const out = tokenizeDataset([...train, ...evalRows], { template: tiny.template.source, specialTokens: tiny.template.specialTokens, tokenizer: tiny.tokenizer, maxLength: 64 });
    expect(out.stats.truncated).toBe(0);
    expect(out.stats.longest).toBeLessThanOrEqual(48);
    expect(out.warnings).toEqual([]);
    out.examples.forEach((ex, i) => {
      const targets = [...ex.labels].filter((l) => l >= 0);
      expect(tiny.tokenizer.decode(targets)).toBe(`${demoQuestion([...train, ...evalRows][i]!).answer}<|im_end|>`);
    });
  });

  test("exact-match scoring", () => {
    expect(demoAnswerMatches(" Quarn\n", "Quarn")).toBe(true);
    expect(demoAnswerMatches("Quarn.", "Quarn")).toBe(false);
  });
});
