/**
 * Writes the bundled demo dataset (train.jsonl, eval.jsonl) for `bun run train` with no flags.
 *
 * Task: the capitals of 20 made-up countries, asked in 8 phrasings; the answer is the capital's
 * name alone, so a generation can be checked by exact match. The mapping is arbitrary (nothing a
 * random model could know), which makes "learned" unambiguous: before training the tiny model
 * answers noise, after it it names the capital.
 *
 * Split: every (country, phrasing) pair is one example. For each country one phrasing is held out
 * for eval (phrasing (i·3) mod 8 for country i, so every phrasing is held out for 2–3 countries and
 * still seen in training with the others). Eval is thus the same distribution as train, never the
 * same row: to answer it the model must key on the country name, not memorize whole prompts.
 *
 *   bun packages/trainer/data/make-demo-data.ts          # rewrites the two files beside this script
 */
import { writeFileSync } from "node:fs";
import path from "node:path";

export const DEMO_CAPITALS: readonly (readonly [country: string, capital: string])[] = [
  ["Velmora", "Quarn"],
  ["Ostravia", "Pellin"],
  ["Dunmark", "Sorvik"],
  ["Kesh", "Abrindel"],
  ["Talvane", "Murro"],
  ["Brisca", "Helot"],
  ["Zenthia", "Corvale"],
  ["Ulmland", "Drossa"],
  ["Perovia", "Ketterin"],
  ["Marrow Isles", "Feldspar"],
  ["Quillon", "Tasmer"],
  ["Ardent Coast", "Lorvey"],
  ["Gethsa", "Nimbrel"],
  ["Ivory Reach", "Oskan"],
  ["Solvenn", "Braddock"],
  ["Yarrowmere", "Plinth"],
  ["Corrin", "Valdessa"],
  ["Hesper", "Grunwick"],
  ["Noctara", "Emberly"],
  ["Fennick", "Rasselt"],
];

export const DEMO_PHRASINGS: readonly ((country: string) => string)[] = [
  (c) => `What is the capital of ${c}?`,
  (c) => `Name the capital city of ${c}.`,
  (c) => `Which city is the capital of ${c}?`,
  (c) => `Tell me the capital of ${c}.`,
  (c) => `${c}: what is its capital?`,
  (c) => `What city serves as the capital of ${c}?`,
  (c) => `Capital of ${c}?`,
  (c) => `I am visiting ${c}. What is the capital?`,
];

export function demoRows(): { train: object[]; eval: object[] } {
  const train: object[] = [];
  const evalRows: object[] = [];
  DEMO_CAPITALS.forEach(([country, capital], i) => {
    const heldOut = (i * 3) % DEMO_PHRASINGS.length;
    DEMO_PHRASINGS.forEach((phrase, p) => {
      const row = { messages: [{ role: "user", content: phrase(country) }, { role: "assistant", content: capital }] };
      (p === heldOut ? evalRows : train).push(row);
    });
  });
  // Interleave countries in train (file order is what an unshuffled run sees).
  const perCountry = DEMO_PHRASINGS.length - 1;
  const interleaved = Array.from({ length: train.length }, (_, k) => train[(k % DEMO_CAPITALS.length) * perCountry + Math.floor(k / DEMO_CAPITALS.length)]!);
  return { train: interleaved, eval: evalRows };
}

if (import.meta.main) {
  const { train, eval: evalRows } = demoRows();
  const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join("\n") + "\n";
  writeFileSync(path.join(import.meta.dir, "train.jsonl"), jsonl(train));
  writeFileSync(path.join(import.meta.dir, "eval.jsonl"), jsonl(evalRows));
  console.log(`wrote ${train.length} train and ${evalRows.length} eval rows to ${import.meta.dir}`);
}
