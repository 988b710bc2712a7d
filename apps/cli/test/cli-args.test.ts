// The argument layer as users meet it: every command's --help, --version, unknown and repeated
// flags (subprocesses: the contract is the CLI), and train's options checked before anything loads.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TRAIN_DEFAULTS } from "@tuneloom/trainer";
import { PrintAndExit, UsageError, helpText, parseCommandLine, type CommandSpec } from "../src/args.ts";
import { TRAIN_SPEC, resolveTrainOptions } from "../src/train-options.ts";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");
const COMMANDS = ["train", "serve", "generate", "perplexity", "template", "make-tiny-model", "merge", "bench", "gpu-info"];

function cli(...args: string[]): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(["bun", MAIN, ...args], { stdout: "pipe", stderr: "pipe" });
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

const tmp = () => mkdtempSync(join(tmpdir(), "cli-args-"));

describe("every command: --help, -h, --version", () => {
  for (const command of COMMANDS) {
    test(command, async () => {
      const mod = (await import(`../src/commands/${command}.ts`)) as object;
      expect(mod).toBeDefined();
      const r = cli(command, "--help");
      expect(r.code).toBe(0);
      expect(r.stderr).toBe("");
      expect(r.stdout).toStartWith(`usage: tuneloom ${command} `);
      expect(r.stdout).toContain("-h, --help");
      expect(cli(command, "-h").stdout).toBe(r.stdout);
      expect(cli(command, "--version")).toMatchObject({ code: 0, stdout: expect.stringMatching(/^tuneloom \d+\.\d+\.\d+\n$/) });
    }, 30_000);
  }

  test("train --help lists every flag with its default", () => {
    const out = cli("train", "--help").stdout;
    for (const [name, def] of Object.entries(TRAIN_SPEC.flags)) {
      expect(out).toContain(`--${name}`);
      if ("default" in def) expect(out).toContain(`default: ${def.default}`);
    }
    expect(out).toContain("--learning-rate");
    expect(out).toContain("--per-device-train-batch-size");
  }, 30_000);

  test("top level: --help lists the commands, an unknown command is named", () => {
    const r = cli("--help");
    expect(r.code).toBe(0);
    for (const c of COMMANDS) expect(r.stdout).toContain(`  ${c}`);
    expect(cli("trian").stderr).toContain("unknown command 'trian' (did you mean train?)");
  }, 30_000);
});

describe("flag errors", () => {
  test("unknown flag: did you mean; positional; repeated; bad number; missing value", () => {
    const cases: [string[], string][] = [
      [["generate", "--modle", "x"], "generate: unknown flag --modle for 'generate' (did you mean --model?)"],
      [["train", "--lerning-rate", "1"], "did you mean --learning-rate?"],
      [["train", "extra"], "unexpected argument 'extra'"],
      [["generate", "--seed", "1", "--seed", "2"], "--seed given twice"],
      [["train", "--lr", "1e-4", "--learning_rate", "2e-4"], "--learning_rate given twice (also as --lr)"],
      [["train", "--lr", "fast"], "--lr must be a number, got 'fast'"],
      [["merge", "--model"], "--model needs a value"],
    ];
    for (const [args, message] of cases) {
      const r = cli(...args);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain(message);
      expect(r.stderr.split("\n")).toHaveLength(1);
    }
  }, 60_000);

  test("list flags repeat; booleans take --no-x and true/false", () => {
    const spec = {
      name: "t", usage: "",
      flags: { stop: { type: "list", help: "s" }, packing: { type: "boolean", help: "p" }, n: { type: "number", help: "n" } },
    } as const satisfies CommandSpec;
    expect(parseCommandLine(["--stop", "a", "--stop=b", "--packing", "false", "--n=-3"], spec).flags).toEqual({ stop: ["a", "b"], packing: false, n: -3 });
    expect(parseCommandLine(["--no-packing"], spec).flags).toEqual({ packing: false });
    expect(parseCommandLine(["--packing=yes"], spec).flags).toEqual({ packing: true });
    expect(() => parseCommandLine(["--packing=maybe"], spec)).toThrow(UsageError);
    expect(() => parseCommandLine(["-h"], spec)).toThrow(PrintAndExit);
    expect(helpText(spec)).toContain("(repeatable)");
  });
});

describe("train options: one schema for flags and config, before anything loads", () => {
  const base = ["--model", "m", "--data", "d.jsonl", "--out", "o"];

  test("TRL / PEFT / Axolotl names, kebab and snake", () => {
    const o = resolveTrainOptions([
      "--model_name_or_path", "m", "--dataset", "d.jsonl", "--output-dir", "o", "--learning_rate", "1e-4", "--num-train-epochs", "3",
      "--lora_r", "8", "--lora-alpha", "16", "--lora_dropout", "0.05", "--per_device_train_batch_size", "4", "--gradient-accumulation-steps", "2",
      "--max_seq_length", "256", "--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "5", "--save_steps", "10", "--eval_steps", "5",
      "--logging_steps", "1", "--max_steps", "20", "--seed", "1", "--weight_decay", "0.01", "--max_grad_norm", "0.5",
      "--gradient_checkpointing", "false", "--target_modules", "q_proj,v_proj", "--use_rslora", "--packing",
    ]);
    expect(o).toMatchObject({
      model: "m", data: "d.jsonl", out: "o", lr: 1e-4, epochs: 3, rank: 8, alpha: 16, dropout: 0.05, batchSize: 4, gradAccum: 2, maxLength: 256,
      scheduler: "constant_with_warmup", warmupSteps: 5, saveSteps: 10, evalSteps: 5, logEvery: 1, maxSteps: 20, seed: 1, weightDecay: 0.01,
      maxGradNorm: 0.5, gradientCheckpointing: false, targetModules: "q_proj,v_proj", rslora: true, packing: true,
    });
    expect(resolveTrainOptions([...base, "--no-gradient-checkpointing"]).gradientCheckpointing).toBe(false);
    // The forgetting monitor: on by default (the bundled text), a limit in percent.
    const plain = resolveTrainOptions(base);
    expect([plain.forgettingMonitor, plain.generalEval, plain.maxForgetting]).toEqual([true, undefined, undefined]);
    expect(resolveTrainOptions([...base, "--max-forgetting", "12.5"]).maxForgetting).toBe(12.5);
    expect(resolveTrainOptions([...base, "--no-forgetting-monitor"]).forgettingMonitor).toBe(false);
    // Selective checkpointing: a layer count or all; absent by default.
    expect(plain.keepMlpLayers).toBeUndefined();
    expect(resolveTrainOptions([...base, "--keep-mlp-layers", "12"]).keepMlpLayers).toBe(12);
    expect(resolveTrainOptions([...base, "--keep_mlp_layers", "all"]).keepMlpLayers).toBe("all");
    expect(resolveTrainOptions([...base, "--keep-attention-layers", "all", "--keep-mlp-layers", "3"])).toMatchObject({ keepAttentionLayers: "all", keepMlpLayers: 3 });
    expect(resolveTrainOptions([...base, "--keep-activations-gib", "1.5"]).keepActivationsGib).toBe(1.5);
  });

  test("bad values are refused with the flag's name", () => {
    const cases: [string[], string][] = [
      [["--scheduler", "bogus"], '--scheduler: expected one of linear|cosine|'],
      [["--lr", "-0.01"], "--lr: must be > 0, got -0.01"],
      [["--lr", "0"], "--lr: must be > 0, got 0"],
      [["--epochs", "0"], "--epochs: must be > 0, got 0"],
      [["--num-train-epochs", "-1"], "--num-train-epochs: must be > 0, got -1"],
      [["--warmup-ratio", "5"], "--warmup-ratio: must be < 1, got 5"],
      [["--save-steps", "-1"], "--save-steps: must be ≥ 1, got -1"],
      [["--weight-decay", "-1"], "--weight-decay: must be ≥ 0, got -1"],
      [["--max-steps", "0"], "--max-steps: must be ≥ 1, got 0"],
      [["--batch-size", "2.5"], "--batch-size: expected an integer, got number 2.5"],
      [["--weight-dtype", "int4"], '--weight-dtype: expected one of f32|f16|bf16, got "int4"'],
      [["--scheduler", "cosine_with_min_lr"], "cosine_with_min_lr needs --min-lr-rate"],
      [["--eval-data", "e.jsonl", "--eval-fraction", "0.1"], "give --eval-data or --eval-fraction, not both"],
      [["--max-forgetting", "0"], "--max-forgetting: must be > 0, got 0"],
      [["--max-forgetting", "10", "--no-forgetting-monitor"], "--max-forgetting needs the forgetting monitor"],
      [["--general-eval", "no/such/general.txt"], "--general-eval no/such/general.txt: not found"],
      [["--keep-mlp-layers", "some"], '--keep-mlp-layers: expected a number of layers (0 or more) or "all"'],
      [["--keep-mlp-layers", "-2"], '--keep-mlp-layers: expected a number of layers (0 or more) or "all"'],
      [["--keep-mlp-layers", "4", "--no-gradient-checkpointing"], "--keep-mlp-layers keeps what gradient checkpointing recomputes"],
      [["--keep-activations-gib", "2", "--keep-mlp-layers", "3"], "give --keep-activations-gib or --keep-mlp-layers, not both"],
      [["--keep-activations-gib", "-1"], "--keep-activations-gib: must be ≥ 0, got -1"],
      [["--keep-activations-gib", "2", "--no-gradient-checkpointing"], "--keep-activations-gib keeps what gradient checkpointing recomputes"],
      [["--keep-attention-layers", "1.5"], '--keep-attention-layers: expected a number of layers (0 or more) or "all", got "1.5"'],
    ];
    for (const [flags, message] of cases) expect(() => resolveTrainOptions([...base, ...flags])).toThrow(message);
    expect(() => resolveTrainOptions(["--data", "d"])).toThrow("--model, --out required");
  });

  test("a bad value exits 1 before the model or data is read", () => {
    const r = cli("train", "--model", "no/such-model", "--data", "nowhere.jsonl", "--out", join(tmp(), "o"), "--scheduler", "bogus");
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith('train: --scheduler: expected one of');
  }, 30_000);

  test("YAML and JSON configs, any spelling, types checked with the key's name; flags override", () => {
    const dir = tmp();
    const yaml = join(dir, "run.yaml");
    writeFileSync(yaml, "base_model: m\ndatasets:\n  - path: d.jsonl\n    type: chat_template\noutput_dir: o\nlearning_rate: 2.0e-5\nnum_epochs: 2\nmicro_batch_size: 2\nsample_packing: true\nmaxSteps: 7\nwarmup_steps:\n");
    expect(resolveTrainOptions(["--config", yaml, "--lr", "3e-5"])).toMatchObject({
      model: "m", data: "d.jsonl", out: "o", lr: 3e-5, epochs: 2, batchSize: 2, packing: true, maxSteps: 7,
    });
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, 'model: m\ndata: d\nout: o\npacking: "no"\nscheduler: bogus\nlr: fast\nbatch-size: "4"\n');
    let message = "";
    try {
      resolveTrainOptions(["--config", bad]);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toContain(`${bad}: lr: expected number, got "fast"`);
    expect(message).toContain(`${bad}: batch-size: expected number, got "4"`);
    expect(message).toContain(`${bad}: packing: expected boolean, got "no"`);
    expect(message).toContain(`${bad}: scheduler: expected one of`);
    const json = join(dir, "c.json");
    writeFileSync(json, JSON.stringify({ model: "m", data: "d", out: "o", maxSteps: 3, learningRate: 1e-3 }));
    expect(resolveTrainOptions(["--config", json])).toMatchObject({ maxSteps: 3, lr: 1e-3 });
    writeFileSync(json, "{ not json");
    expect(() => resolveTrainOptions(["--config", json])).toThrow("invalid JSON");
    writeFileSync(yaml, "model: m\nlearning_rat: 1\n");
    expect(() => resolveTrainOptions(["--config", yaml])).toThrow("learning_rat: unknown option (did you mean learning_rate?)");
    writeFileSync(yaml, "model: m\nlr: 1\nlearning_rate: 2\n");
    expect(() => resolveTrainOptions(["--config", yaml])).toThrow("learning_rate: given twice (also as lr)");
  });

  test("defaults apply when nothing is given", () => {
    const o = resolveTrainOptions(base);
    for (const [k, v] of Object.entries(TRAIN_DEFAULTS)) expect(o[k as keyof typeof o]).toEqual(v as never);
  });
});
