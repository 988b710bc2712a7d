/**
 * The bundled demo dataset (see data/make-demo-data.ts): made-up countries → made-up capitals,
 * answers checkable by exact match. `bun run train` with no flags trains on it and reports how
 * many held-out questions the tuned model answers exactly.
 */
import path from "node:path";
import type { TrainingRow } from "./data.ts";

export const DEMO_DATA_DIR = path.resolve(import.meta.dir, "../data");
export const DEMO_TRAIN_FILE = path.join(DEMO_DATA_DIR, "train.jsonl");
export const DEMO_EVAL_FILE = path.join(DEMO_DATA_DIR, "eval.jsonl");

/** The expected answer of a demo row (its last assistant message) and the prompt messages before it. */
export function demoQuestion(row: TrainingRow): { prompt: { role: string; content: string }[]; answer: string } {
  if (row.kind !== "messages") throw new Error(`${row.source.file}:${row.source.line}: demo rows are conversations`);
  const last = row.messages.at(-1)!;
  if (last.role !== "assistant" || typeof last.content !== "string") {
    throw new Error(`${row.source.file}:${row.source.line}: demo rows end with a plain-text assistant message`);
  }
  const prompt = row.messages.slice(0, -1).map((m) => ({ role: m.role, content: String(m.content ?? "") }));
  return { prompt, answer: last.content };
}

/** Exact match up to surrounding whitespace: "Quarn" and " Quarn\n" pass, "Quarn." does not. */
export function demoAnswerMatches(generated: string, expected: string): boolean {
  return generated.trim() === expected.trim();
}
