/**
 * The forgetting monitor: reading the general text, windowing, the printed lines, metrics and
 * plot, and on the GPU with the tiny model: the windowed score equals one whole-text nll, a zero
 * adapter scores as the base model, and --max-forgetting stops a run keeping the last adapter
 * under the limit.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { GpuModel, loadServingTokenizer, readAdapterDir } from "@tuneloom/model";
import {
  DEFAULT_GENERAL_TEXT_FILE, forgettingPct, formatGeneralEvalLine, formatGeneralSummary, generalEvalSet, generalTextPerplexity, readGeneralText, textWindows,
} from "../src/general-eval.ts";
import { renderLossCurveSvg } from "../src/loss-curve-svg.ts";
import { MetricsLog, parseMetricsJsonl } from "../src/metrics.ts";
import { checkpointDirName } from "../src/checkpoint.ts";
import { LoraTrainer } from "../src/gpu/lora-trainer.ts";
import { train } from "../src/train-loop.ts";
import { parseLoraConfig } from "@tuneloom/model";
import { smallRunOptions, tempDir, tinyModel } from "./helpers.ts";

describe("general text", () => {
  test("the bundled text: a few KB of plain prose, one document", () => {
    const t = readGeneralText();
    expect(t.file).toBe(DEFAULT_GENERAL_TEXT_FILE);
    expect(t.documents).toHaveLength(1);
    expect(t.documents[0]!.length).toBeGreaterThan(3000);
  });

  test("plain text is one document; JSONL is one per {text} row; other rows and missing files are refused by name", () => {
    const dir = tempDir();
    const plain = path.join(dir, "general.txt"), jsonl = path.join(dir, "general.jsonl"), chat = path.join(dir, "chat.jsonl");
    writeFileSync(plain, "One paragraph.\n\nAnother one.\n");
    writeFileSync(jsonl, '{"text": "first document"}\n{"text": "second"}\n');
    writeFileSync(chat, '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n');
    expect(readGeneralText(plain).documents).toEqual(["One paragraph.\n\nAnother one.\n"]);
    expect(readGeneralText(jsonl).documents).toEqual(["first document", "second"]);
    expect(() => readGeneralText(chat)).toThrow(/chat\.jsonl:1: expected \{"text": \.\.\.\} rows/);
    expect(() => readGeneralText(path.join(dir, "missing.txt"))).toThrow(/--general-eval .*missing\.txt: cannot read the file/);
  });

  test("windows overlap by one: every token but the first is a target exactly once", () => {
    const ids = Array.from({ length: 23 }, (_, i) => 100 + i);
    const windows = textWindows(ids, 8);
    expect(windows.every((w) => w.inputIds.length <= 8)).toBe(true);
    // Targets are the tokens at positions ≥ 1 of each window (batching shifts the labels).
    const targets = windows.flatMap((w) => [...w.labels.slice(1)]);
    expect(targets).toEqual(ids.slice(1));
    expect(windows.reduce((n, w) => n + w.numTargets, 0)).toBe(ids.length - 1);
  });

  test("printed lines", () => {
    expect(formatGeneralEvalLine(12.1, 11.9)).toBe("general-text ppl 12.1 (base 11.9, +1.7%)");
    expect(formatGeneralSummary(12.1, 13.4)).toBe("general-text perplexity 12.1 → 13.4, +11%");
    expect(formatGeneralEvalLine(9.5, 10)).toBe("general-text ppl 9.50 (base 10.0, −5.0%)");
    expect(forgettingPct(11, 10)).toBeCloseTo(10, 10);
  });

  test("metrics.jsonl carries general_ppl and general_ppl_base; the plot draws them in a labelled panel", () => {
    const file = path.join(tempDir(), "metrics.jsonl");
    const log = new MetricsLog(file);
    for (let s = 1; s <= 4; s++) log.log({ step: s, loss: 3 - s * 0.2, lr: 1e-4, grad_norm: 1, tokens: s * 10, tok_s: 100, elapsed_s: s });
    log.attach(2, { eval_loss: 2.5, general_ppl: 12.5, general_ppl_base: 12 });
    log.attach(4, { eval_loss: 2.2, general_ppl: 13.4, general_ppl_base: 12 });
    const records = parseMetricsJsonl(readFileSync(file, "utf8"));
    expect(records[1]).toMatchObject({ step: 2, eval_loss: 2.5, general_ppl: 12.5, general_ppl_base: 12 });
    expect(records[0]!.general_ppl).toBeUndefined();
    const svg = renderLossCurveSvg(records);
    expect(svg).toContain("forgetting monitor: perplexity on general text");
    expect(svg).toContain("general-text ppl");
    expect(svg).toContain("base model (before tuning)");
    expect(svg).toContain('height="640"'); // 420 + the 220 px panel
    expect(renderLossCurveSvg(records.map(({ general_ppl: _g, general_ppl_base: _b, ...r }) => r))).not.toContain("forgetting monitor");
  });
});

describe("general-text perplexity on the GPU (tiny model)", () => {
  test("windows score as the whole text does when it fits one; a zero adapter scores as the base model", async () => {
    const tiny = tinyModel();
    const model = await GpuModel.load(tiny.dir);
    const tokenizer = loadServingTokenizer(tiny.dir);
    const text = { file: "x", label: "x", documents: ["The Moon is the only natural satellite of the Earth. Water boils at one hundred degrees."] };
    const ids = tokenizer.encode(text.documents[0]!).ids;
    const whole = generalEvalSet(text, tokenizer, ids.length, 0);
    expect(whole.batches).toHaveLength(1);
    expect(whole.tokens).toBe(ids.length - 1);
    const T = ids.length;
    const labels = Int32Array.from({ length: T }, (_, t) => (t + 1 < T ? ids[t + 1]! : -100));
    const ref = await model.nll(Int32Array.from(ids), Int32Array.from({ length: T }, (_, t) => t), new Int32Array(T), labels);
    expect(await generalTextPerplexity(model, whole)).toBeCloseTo(Math.exp(ref.sum / ref.count), 4);
    // Short windows: the same tokens scored with less context, packed several per row.
    const windowed = generalEvalSet(text, tokenizer, 8, 0);
    expect(windowed.tokens).toBe(ids.length - 1);
    expect(Number.isFinite(await generalTextPerplexity(model, windowed))).toBe(true);
    // A freshly initialised LoRA (B = 0) is the base model.
    const trainer = new LoraTrainer(model, parseLoraConfig({ rank: 4, alpha: 8, dropout: 0, targetModules: "q,v" }), { gradientCheckpointing: true, seed: 1, weightDecay: 0, maxGradNorm: 1 });
    expect(await generalTextPerplexity(model, whole, trainer.lora)).toBeCloseTo(await generalTextPerplexity(model, whole), 5);
  }, 60_000);

  test("--max-forgetting stops the run at the first evaluation over the limit and writes the last adapter under it", async () => {
    const root = tempDir("forgetting-");
    // Symbol strings, nothing like English: a few steps on them make the tiny model worse at the general text.
    const data = path.join(root, "symbols.jsonl");
    writeFileSync(data, Array.from({ length: 10 }, (_, i) => JSON.stringify({ text: Array.from({ length: 12 }, (_, k) => `#${(i * 7 + k * 3) % 10}%`).join("") })).join("\n") + "\n");
    const base = (out: string) => smallRunOptions(data, out, { maxSteps: 6, evalSteps: 1, saveSteps: 1, dropout: 0, lr: 5e-2 });
    // An uninterrupted run: its per-step general-text perplexity picks a limit that step 1 passes and a later step exceeds.
    const free = await train(base(path.join(root, "free")));
    const recs = parseMetricsJsonl(readFileSync(path.join(root, "free", "metrics.jsonl"), "utf8")).filter((r) => r.general_ppl !== undefined);
    expect(recs.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
    const pct = recs.map((r) => forgettingPct(r.general_ppl!, r.general_ppl_base!));
    expect(free.generalPpl!.final).toBe(recs.at(-1)!.general_ppl!);
    let limit = Number.NaN, exceedAt = -1;
    for (let i = 0; i + 1 < pct.length && exceedAt < 0; i++) {
      const maxSoFar = Math.max(...pct.slice(0, i + 1));
      if (maxSoFar > 0 && pct[i + 1]! > maxSoFar) [limit, exceedAt] = [(maxSoFar + pct[i + 1]!) / 2, i + 2];
    }
    expect(exceedAt).toBeGreaterThan(1); // the tiny run forgets more as it goes
    const lastUnder = Math.max(...recs.filter((_, i) => i + 1 < exceedAt && pct[i]! <= limit).map((r) => r.step));

    const out = path.join(root, "limited");
    const stopped = await train({ ...base(out), maxForgetting: limit });
    expect(stopped.steps).toBe(exceedAt);
    expect(stopped.notes.join("\n")).toMatch(new RegExp(`stopped: step ${exceedAt}: general-text ppl .* exceeds --max-forgetting .*; the adapter is step ${lastUnder}'s, the last under the limit`));
    expect(stopped.generalPpl!.final).toBe(recs[lastUnder - 1]!.general_ppl!);
    // The adapter written is the uninterrupted run's at that step (its checkpoint holds the same adapter).
    const a = readAdapterDir(stopped.adapterDir).weights, b = readAdapterDir(path.join(root, "free", checkpointDirName(lastUnder))).weights;
    for (let i = 0; i < a.length; i++) expect([...a[i]!.B]).toEqual([...b[i]!.B]);

    // A limit the first evaluation already exceeds: nothing under it, no adapter, a clear error.
    const first = exceedAt - 1; // evaluating first at a step already over the limit (pct > 0)
    await expect(train({ ...base(path.join(root, "none")), evalSteps: first, maxForgetting: pct[first - 1]! / 2 })).rejects.toThrow(/exceeds --max-forgetting .* no evaluation since the run started was under the limit: no adapter written/);
  }, 180_000);
});
