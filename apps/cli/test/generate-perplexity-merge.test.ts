// CLI contracts of generate, perplexity and merge, run as subprocesses on a tiny random model
// (no downloads), checked against the float64 CPU reference.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CHATML_TEMPLATE, cpuReferenceForward, cpuReferenceGreedy, loadTokenizer, openCheckpoint, writeTinyModel,
  readAdapterDir, loraLayerSpecs, parseLoraConfig, writeAdapterDir, type LoraWeights, type ModelConfig, type ReferenceWeights, type WeightStore,
} from "@tuneloom/model";

// Each test runs the CLI as child processes, each loading the model onto the GPU: a few seconds
// apiece on a shared 2-core CPU with lavapipe, past bun's 5 s default when the machine is busy.
setDefaultTimeout(120_000);
const MAIN = join(import.meta.dir, "..", "src", "main.ts");
let root: string, modelDir: string, adapterDir: string, cfg: ModelConfig, stopIds: Set<number>;

function cli(...args: string[]): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(["bun", MAIN, ...args], { stdout: "pipe", stderr: "pipe" });
  // Dawn's own warnings on stderr are not ours.
  const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:")).join("\n");
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr };
}

function cliJson(...args: string[]): { ids: number[]; text: string } {
  const r = cli(...args, "--json");
  if (r.code !== 0) throw new Error(`CLI failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Greedy ids as the CLI returns them: up to (not including) the first stop id. */
function refGreedy(weights: ReferenceWeights, prompt: number[], n: number): number[] {
  const ids = cpuReferenceGreedy(cfg, weights, prompt, n);
  const stop = ids.findIndex((id) => stopIds.has(id));
  return stop < 0 ? ids : ids.slice(0, stop);
}

/** Mean next-token NLL of `ids` in windows of `maxLength` (the CLI's rule: each window's last token predicts the next window's first). */
function refNll(weights: ReferenceWeights, ids: number[], maxLength: number): { tokens: number; nll: number } {
  let sum = 0, count = 0;
  const V = cfg.vocabSize;
  for (let s = 0; s < ids.length; s += maxLength) {
    const win = ids.slice(s, s + maxLength);
    const logits = cpuReferenceForward(cfg, weights, win);
    for (let t = 0; t < win.length && s + t + 1 < ids.length; t++) {
      const row = logits.subarray(t * V, (t + 1) * V);
      let max = -Infinity;
      for (const x of row) max = Math.max(max, x);
      let z = 0;
      for (const x of row) z += Math.exp(x - max);
      sum += max + Math.log(z) - row[ids[s + t + 1]!]!;
      count++;
    }
  }
  return { tokens: count, nll: sum / count };
}

function withStore<T>(dir: string, f: (s: WeightStore) => T): T {
  const s = openCheckpoint(dir);
  try {
    return f(s);
  } finally {
    s.close();
  }
}

/** Random non-zero A and B on q, v and down_proj (rank 4, α 8). */
function randomAdapterWeights(seed: number, rank = 4): LoraWeights[] {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  const lora = parseLoraConfig({ rank, alpha: 2 * rank, targetModules: ["q_proj", "v_proj", "down_proj"] });
  return loraLayerSpecs(cfg, lora).map((spec) => ({
    spec,
    A: Float32Array.from({ length: rank * spec.inFeatures }, () => rnd() * 0.6),
    B: Float32Array.from({ length: spec.outFeatures * rank }, () => rnd() * 0.6),
  }));
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "tuneloom-cli-test-"));
  modelDir = join(root, "model");
  cfg = writeTinyModel(modelDir, { seed: 3 }).config;
  const tok = loadTokenizer(modelDir);
  stopIds = new Set([...cfg.eosTokenIds, tok.eosId!, tok.tokenToId("<|endoftext|>")!]);
  adapterDir = join(root, "adapter");
  writeAdapterDir(adapterDir, {
    baseModel: modelDir, lora: parseLoraConfig({ rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"] }),
    weights: randomAdapterWeights(11), chatTemplate: CHATML_TEMPLATE, trainingArgs: {}, tokenizerDir: modelDir,
  });
  writeFileSync(join(root, "prompt-ids.json"), JSON.stringify(tok.encode("The quick brown fox").ids));
  writeFileSync(join(root, "text.txt"), "Hello world. The quick brown fox jumps over the lazy dog, twice: the quick brown fox.");
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("generate", () => {
  test("greedy --prompt and --ids-file equal the CPU reference's 16 tokens", () => {
    const prompt = loadTokenizer(modelDir).encode("The quick brown fox").ids;
    const expected = withStore(modelDir, (s) => refGreedy(s, prompt, 16));
    expect(expected.length).toBeGreaterThan(4);
    const a = cliJson("generate", "--model", modelDir, "--prompt", "The quick brown fox", "--max-tokens", "16");
    expect(a.ids).toEqual(expected);
    expect(a.text).toBe(loadTokenizer(modelDir).decode(expected, { skipSpecialTokens: true }));
    const b = cliJson("generate", "--model", modelDir, "--ids-file", join(root, "prompt-ids.json"), "--max-tokens", "16", "--temperature", "0");
    expect(b.ids).toEqual(expected);
    // Without --json: the text and a newline.
    const plain = cli("generate", "--model", modelDir, "--prompt", "The quick brown fox", "--max-tokens", "16");
    expect(plain.code).toBe(0);
    expect(plain.stdout).toBe(a.text + "\n");
  });

  test("--messages renders the chat template with the generation prompt", () => {
    const file = join(root, "messages.json");
    writeFileSync(file, JSON.stringify([{ role: "user", content: "Hi there" }]));
    const tok = loadTokenizer(modelDir);
    const prompt = tok.encode("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", { addSpecialTokens: false }).ids;
    const expected = withStore(modelDir, (s) => refGreedy(s, prompt, 8));
    expect(cliJson("generate", "--model", modelDir, "--messages", file, "--max-tokens", "8").ids).toEqual(expected);
  });

  test("sampling at temperature 1 is reproducible by seed", () => {
    const run = (seed: number) => cliJson("generate", "--model", modelDir, "--prompt", "Hello", "--max-tokens", "16", "--temperature", "1", "--seed", String(seed)).ids;
    const first = run(7);
    expect(run(7)).toEqual(first);
    const others = [run(8), run(9)];
    expect(others.some((ids) => JSON.stringify(ids) !== JSON.stringify(first))).toBe(true);
  });

  test("stop strings cut the text before the first match (repeatable, or a JSON list)", () => {
    const full = cliJson("generate", "--model", modelDir, "--prompt", "The quick brown fox", "--max-tokens", "16");
    // A stop string from the middle of the greedy text: two printable ASCII characters.
    let at = -1;
    for (let i = 2; i + 2 <= full.text.length; i++) if (/^[\x21-\x7e]{2}$/.test(full.text.slice(i, i + 2))) { at = i; break; }
    expect(at).toBeGreaterThan(0);
    const stop = full.text.slice(at, at + 2);
    const want = full.text.slice(0, full.text.indexOf(stop));
    const a = cli("generate", "--model", modelDir, "--prompt", "The quick brown fox", "--max-tokens", "16", "--stop", "never-there", "--stop", stop);
    expect(a.code).toBe(0);
    expect(a.stdout).toBe(want + "\n");
    const b = cliJson("generate", "--model", modelDir, "--prompt", "The quick brown fox", "--max-tokens", "16", "--stop", JSON.stringify(["zzzq", stop]));
    expect(b.text).toBe(want);
    expect(b.ids.length).toBeLessThan(full.ids.length); // generation stopped early
    expect(full.ids.slice(0, b.ids.length)).toEqual(b.ids);
  });
});

describe("perplexity", () => {
  test("equals the CPU reference NLL, whole and in windows", () => {
    const ids = loadTokenizer(modelDir).encode(readFileSync(join(root, "text.txt"), "utf8")).ids;
    for (const maxLength of [undefined, 7]) {
      const ref = withStore(modelDir, (s) => refNll(s, ids, maxLength ?? 2048));
      const r = cli("perplexity", "--model", modelDir, "--text-file", join(root, "text.txt"), ...(maxLength ? ["--max-length", String(maxLength)] : []));
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(r.stdout.endsWith("\n")).toBe(true);
      const out = JSON.parse(r.stdout);
      expect(Object.keys(out)).toEqual(["tokens", "nll", "ppl"]);
      expect(out.tokens).toBe(ids.length - 1);
      expect(Math.abs(out.nll - ref.nll) / ref.nll).toBeLessThan(1e-4);
      expect(out.ppl).toBeCloseTo(Math.exp(out.nll), 6);
    }
  });
});

describe("adapter and merge", () => {
  test("an adapter changes the output; merging it gives the same greedy ids as base + adapter", () => {
    const args = ["--prompt", "The quick brown fox", "--max-tokens", "16"];
    const base = cliJson("generate", "--model", modelDir, ...args).ids;
    const tuned = cliJson("generate", "--model", modelDir, "--adapter", adapterDir, ...args).ids;
    expect(tuned).not.toEqual(base);

    const merged = join(root, "merged");
    mkdirSync(join(root, "merged.tmp-999999")); // what a merge killed mid-write leaves: cleared first
    const m = cli("merge", "--model", modelDir, "--adapter", adapterDir, "--out", merged);
    expect(m.code).toBe(0);
    expect(m.stdout).toBe("");
    expect(readdirSync(merged).sort()).toEqual(
      ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
    );
    expect(readdirSync(root).filter((n) => n.includes(".tmp-"))).toEqual([]);
    expect(readFileSync(join(merged, "chat_template.jinja"), "utf8")).toBe(CHATML_TEMPLATE);
    withStore(merged, (s) => expect(s.info("model.layers.0.self_attn.q_proj.weight").dtype).toBe("F32"));
    expect(cliJson("generate", "--model", merged, ...args).ids).toEqual(tuned);
    // And the CPU reference on the merged weights agrees.
    const prompt = loadTokenizer(modelDir).encode("The quick brown fox").ids;
    expect(withStore(merged, (s) => refGreedy(s, prompt, 16))).toEqual(tuned);

    // Perplexity with the adapter on the GPU equals the merged model's.
    const text = join(root, "text.txt");
    const pa = JSON.parse(cli("perplexity", "--model", modelDir, "--adapter", adapterDir, "--text-file", text).stdout);
    const pm = JSON.parse(cli("perplexity", "--model", merged, "--text-file", text).stdout);
    expect(Math.abs(pa.nll - pm.nll) / pm.nll).toBeLessThan(1e-4);
  });

  test("scale is lora_alpha/r, or lora_alpha/sqrt(r) with use_rslora", () => {
    expect(readAdapterDir(adapterDir, cfg).scaling).toBe(8 / 4);
    const rs = join(root, "adapter-rslora");
    writeAdapterDir(rs, {
      baseModel: modelDir, lora: parseLoraConfig({ rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"], rslora: true }),
      weights: randomAdapterWeights(11), chatTemplate: CHATML_TEMPLATE, trainingArgs: {},
    });
    const a = readAdapterDir(rs, cfg);
    expect(a.scaling).toBe(8 / Math.sqrt(4));
    expect(a.targets).toEqual(["q_proj", "v_proj", "down_proj"]);
    expect(a.weights).toHaveLength(cfg.numLayers * 3);
  });

  test("merge keeps a bf16 base in bf16", () => {
    const bf = join(root, "model-bf16");
    writeTinyModel(bf, { seed: 3, dtype: "bf16" });
    const out = join(root, "merged-bf16");
    expect(cli("merge", "--model", bf, "--adapter", adapterDir, "--out", out).code).toBe(0);
    withStore(out, (s) => {
      expect(s.info("model.layers.1.mlp.down_proj.weight").dtype).toBe("BF16");
      expect(s.info("model.layers.1.mlp.up_proj.weight").dtype).toBe("BF16");
      // Untouched weights are copied bit for bit; adapted ones changed.
      withStore(bf, (b) => {
        expect(s.raw("model.layers.1.mlp.up_proj.weight")).toEqual(b.raw("model.layers.1.mlp.up_proj.weight"));
        expect(s.raw("model.layers.1.mlp.down_proj.weight")).not.toEqual(b.raw("model.layers.1.mlp.down_proj.weight"));
      });
    });
  });
});

describe("bad inputs exit 1 with one line naming the file or flag", () => {
  const expectError = (r: ReturnType<typeof cli>, command: string, ...parts: string[]) => {
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.split("\n")).toHaveLength(1);
    expect(r.stderr.startsWith(`${command}: `)).toBe(true);
    for (const p of parts) expect(r.stderr).toContain(p);
  };

  test("missing or nonexistent --model", () => {
    expectError(cli("generate", "--prompt", "hi"), "generate", "--model is required");
    expectError(cli("perplexity", "--text-file", "x"), "perplexity", "--model is required");
    expectError(cli("merge", "--adapter", adapterDir, "--out", join(root, "x")), "merge", "--model is required");
    const missing = join(root, "no-such-model");
    expectError(cli("generate", "--model", missing, "--prompt", "hi"), "generate", missing, "not found");
    expectError(cli("generate", "--model", root, "--prompt", "hi"), "generate", join(root, "config.json"), "not found");
  });

  test("malformed ids file", () => {
    const bad = join(root, "bad-ids.json");
    writeFileSync(bad, "[1, 2,");
    expectError(cli("generate", "--model", modelDir, "--ids-file", bad), "generate", bad, "invalid JSON");
    writeFileSync(bad, JSON.stringify([1, 2, 99999]));
    expectError(cli("perplexity", "--model", modelDir, "--ids-file", bad), "perplexity", bad, "entry 2", "99999");
    writeFileSync(bad, JSON.stringify({ ids: [1] }));
    expectError(cli("generate", "--model", modelDir, "--ids-file", bad), "generate", bad, "JSON array");
  });

  test("adapter with wrong shapes, or a bad adapter_config.json", () => {
    const wrong = join(root, "adapter-wrong");
    const weights = randomAdapterWeights(5).map((w) =>
      w.spec.layer === 1 && w.spec.module === "v_proj" ? { spec: { ...w.spec, inFeatures: 63 }, A: new Float32Array(4 * 63).fill(0.1), B: w.B } : w,
    );
    writeAdapterDir(wrong, {
      baseModel: modelDir, lora: parseLoraConfig({ rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"] }),
      weights, chatTemplate: CHATML_TEMPLATE, trainingArgs: {},
    });
    const where = join(wrong, "adapter_model.safetensors");
    const name = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight";
    expectError(cli("generate", "--model", modelDir, "--adapter", wrong, "--prompt", "hi"), "generate", where, name, "[4, 63]", "[4, 64]");
    expectError(cli("merge", "--model", modelDir, "--adapter", wrong, "--out", join(root, "never")), "merge", where, name);
    expect(readdirSync(root).some((n) => n.startsWith("never"))).toBe(false);

    const cfgFile = join(wrong, "adapter_config.json");
    writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(readFileSync(cfgFile, "utf8")), use_dora: true }));
    expectError(cli("perplexity", "--model", modelDir, "--adapter", wrong, "--text-file", join(root, "text.txt")), "perplexity", cfgFile, "use_dora", "DoRA");
  });

  test("an adapter whose chat template was edited after training is refused, as the server refuses it", () => {
    const edited = join(root, "adapter-edited-template");
    cpSync(adapterDir, edited, { recursive: true });
    writeFileSync(join(edited, "chat_template.jinja"), readFileSync(join(edited, "chat_template.jinja"), "utf8") + "{# edited #}");
    const args = join(edited, "training_args.json");
    const messages = join(root, "edited-messages.json");
    writeFileSync(messages, JSON.stringify([{ role: "user", content: "hi" }]));
    for (const [command, ...rest] of [
      ["generate", "--messages", messages], ["generate", "--prompt", "hi"], ["perplexity", "--text-file", join(root, "text.txt")],
      ["merge", "--out", join(root, "never-edited")],
    ]) {
      expectError(cli(command!, "--model", modelDir, "--adapter", edited, ...rest), command!, args, "chat_template_sha256", "different chat template");
    }
    expect(readdirSync(root).some((n) => n.startsWith("never-edited"))).toBe(false);
  }, 60_000); // four CLI processes
});
