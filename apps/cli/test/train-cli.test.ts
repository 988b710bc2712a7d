// `train` end to end as a subprocess on a tiny random model: what a TRL user reads while it runs
// (window-mean loss, epoch, eval and checkpoint lines, the summary's epochs), text rows in a JSON
// array, training_args.json given back as --config, `perplexity --data` on the result, and
// `--model org/name` found in a Hugging Face cache. No downloads.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadServingTokenizer, resolveServingTemplate, writeTinyModel } from "@tuneloom/model";
import { loadJsonl, tokenizeDataset } from "@tuneloom/trainer";
import { resolveTrainOptions } from "../src/train-options.ts";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");
let root: string, modelDir: string, data: string, evalData: string;

function cli(args: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(["bun", MAIN, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "train-cli-"));
  modelDir = join(root, "model");
  writeTinyModel(modelDir, { arch: "llama", seed: 1 });
  const chat = (q: string, a: string) => ({ messages: [{ role: "user", content: q }, { role: "assistant", content: a }] });
  data = join(root, "train.json"); // a JSON array mixing text and chat rows
  writeFileSync(data, JSON.stringify([
    { text: "The capital of Velmora is Quarn." }, chat("Capital of Ostravia?", "Pellin"), { text: "Dunmark's capital is Sorvik." },
    chat("Capital of Kesh?", "Abrindel"), chat("Capital of Talvane?", "Murro"), { text: "Ostravia lies north of Kesh." },
  ], null, 1));
  evalData = join(root, "eval.jsonl");
  writeFileSync(evalData, [chat("Capital of Velmora?", "Quarn"), chat("Capital of Dunmark?", "Sorvik")].map((r) => JSON.stringify(r)).join("\n"));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("train", () => {
  test("progress, eval and checkpoint lines, summary epochs; training_args.json round-trips; perplexity --data", () => {
    const out = join(root, "run");
    const r = cli(["train", "--model", modelDir, "--data", data, "--eval-data", evalData, "--output_dir", out, "--max-length", "64",
      "--per-device-train-batch-size", "2", "--num-train-epochs", "2", "--learning-rate", "1e-3", "--logging-steps", "2",
      "--eval-steps", "3", "--save-steps", "3", "--lr-scheduler-type", "constant_with_warmup", "--warmup-steps", "1"]);
    if (r.code !== 0) throw new Error(r.stderr);
    // 6 rows, batch 2: 3 steps an epoch, 6 in all.
    expect(r.stderr).toMatch(/step 2\/6 epoch 0\.67 loss \d+\.\d{4} lr/);
    expect(r.stderr).toMatch(/step 6\/6 epoch 2\.00 loss/);
    expect(r.stderr).toMatch(/eval: step 3 epoch 1\.00 eval_loss \d+\.\d{4}/);
    expect(r.stderr).toMatch(/eval: step 6 epoch 2\.00 eval_loss/);
    expect(r.stderr).toContain(`checkpoint: step 3 saved to ${join(out, "checkpoint-3")}`);
    expect(r.stdout).toContain("steps        6 (2.00 epochs)");

    // The mean of each printed window equals the mean of metrics.jsonl's per-step losses.
    const metrics = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const printed = Number(/step 4\/6 epoch [\d.]+ loss (\d+\.\d+)/.exec(r.stderr)![1]);
    expect(printed).toBeCloseTo((metrics[2].loss + metrics[3].loss) / 2, 4);

    // training_args.json is a config: the same options come back.
    const argsFile = join(out, "adapter", "training_args.json");
    const again = resolveTrainOptions(["--config", argsFile]);
    const original = resolveTrainOptions(["--model", modelDir, "--data", data, "--eval-data", evalData, "--out", out, "--max-length", "64",
      "--batch-size", "2", "--epochs", "2", "--lr", "1e-3", "--log-every", "2", "--eval-steps", "3", "--save-steps", "3",
      "--scheduler", "constant_with_warmup", "--warmup-steps", "1"]);
    expect(again).toEqual(original);
    const rerun = cli(["train", "--config", argsFile, "--out", join(root, "rerun"), "--max-steps", "1", "--quiet"]);
    expect(rerun.code).toBe(0);

    // perplexity --data scores the eval set's target tokens as training's eval does.
    const p = cli(["perplexity", "--model", modelDir, "--adapter", join(out, "adapter"), "--data", evalData, "--max-length", "64"]);
    if (p.code !== 0) throw new Error(p.stderr);
    const ppl = JSON.parse(p.stdout);
    const template = resolveServingTemplate(modelDir);
    const set = tokenizeDataset(loadJsonl(evalData).rows, { template: template.source, specialTokens: template.specialTokens, tokenizer: loadServingTokenizer(modelDir), maxLength: 64 });
    expect(ppl.tokens).toBe(set.stats.targetTokens);
    expect(ppl.nll).toBeCloseTo(metrics.at(-1).eval_loss, 3);
    expect(ppl.ppl).toBeCloseTo(Math.exp(ppl.nll), 6);
  }, 240_000);

  test("refusals before training: preference rows, tools on a template without tools", () => {
    const pref = join(root, "pref.jsonl");
    writeFileSync(pref, `{"text": "ok"}\n{"prompt": "q", "chosen": "a", "rejected": "b"}\n`);
    const r = cli(["train", "--model", modelDir, "--data", pref, "--out", join(root, "pref-out")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${pref}:2: preference data (prompt/chosen/rejected) is not supported`);
    const tools = join(root, "tools.jsonl");
    writeFileSync(tools, JSON.stringify({
      messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "yo" }],
      tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: {} } } }],
    }) + "\n");
    const t = cli(["train", "--model", modelDir, "--data", tools, "--out", join(root, "tools-out")]);
    expect(t.code).toBe(1);
    expect(t.stderr).toContain(`${tools}:1: the row has tools, but this template does not render tools`);
    expect(t.stderr).not.toContain("load:"); // refused before the model was loaded
  }, 60_000);

  test("--model org/name is found in the Hugging Face cache; a miss says where it looked", () => {
    const cache = join(root, "hf-cache");
    const repo = join(cache, "models--tiny-org--tiny-llama");
    mkdirSync(join(repo, "refs"), { recursive: true });
    writeFileSync(join(repo, "refs", "main"), "0123456789abcdef0123456789abcdef01234567\n");
    cpSync(modelDir, join(repo, "snapshots", "0123456789abcdef0123456789abcdef01234567"), { recursive: true });
    const g = cli(["generate", "--model", "tiny-org/tiny-llama", "--prompt", "Hello", "--max-tokens", "3", "--json"], { HF_HUB_CACHE: cache });
    if (g.code !== 0) throw new Error(g.stderr);
    expect(JSON.parse(g.stdout).ids.length).toBeGreaterThan(0);
    const miss = cli(["generate", "--model", "tiny-org/absent", "--prompt", "Hello"], { HF_HUB_CACHE: cache });
    expect(miss.code).toBe(1);
    expect(miss.stderr).toContain(`--model tiny-org/absent: not found; looked for the directory tiny-org/absent and for ${join(cache, "models--tiny-org--absent", "refs", "main")}`);
    expect(miss.stderr).toContain("never downloads");
  }, 60_000);
});
