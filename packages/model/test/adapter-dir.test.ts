import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { templateSha256 } from "@tuneloom/chat-template";
import { loadChatTemplate } from "../src/chat-template-file.ts";
import { openSafetensors, writeSafetensors } from "../src/safetensors.ts";
import { AdapterFileError, readAdapterDir, writeAdapterDir, type AdapterContents } from "../src/adapter-dir.ts";
import { recoverDirWrites, writeDirAtomically } from "../src/atomic-dir.ts";
import { loraLayerSpecs, parseLoraConfig, type LoraWeights } from "../src/lora-config.ts";
import { gaussianSampler, writeTinyModel } from "../src/tiny-model.ts";

const created: string[] = [];
process.on("exit", () => {
  for (const dir of created) rmSync(dir, { recursive: true, force: true });
});
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), "adapter-dir-test-"));
  created.push(dir);
  return dir;
}

let tiny: { dir: string; config: ReturnType<typeof writeTinyModel>["config"] } | null = null;
function tinyModel() {
  if (!tiny) {
    const dir = path.join(tempDir(), "model");
    tiny = { dir, config: writeTinyModel(dir, { seed: 1 }).config };
  }
  return tiny;
}

/** Adapter contents for the tiny model with random non-zero A and B, so a round trip checks real values. */
function sampleAdapter(targetModules = "q,v,down", rank = 4): AdapterContents {
  const { dir, config } = tinyModel();
  const lora = parseLoraConfig({ rank, alpha: 8, dropout: 0.05, targetModules });
  const gauss = gaussianSampler(9);
  const weights = loraLayerSpecs(config, lora).map((spec) => ({
    spec,
    A: Float32Array.from({ length: rank * spec.inFeatures }, gauss),
    B: Float32Array.from({ length: spec.outFeatures * rank }, gauss),
  }));
  return {
    baseModel: dir, lora, weights, chatTemplate: loadChatTemplate(dir).source,
    trainingArgs: { learning_rate: 2e-4, epochs: 3, seed: 7 }, tokenizerDir: dir,
    metricsJsonl: '{"step":1,"loss":2}\n', lossCurveSvg: "<svg/>\n",
  };
}

describe("adapter directory (PEFT layout)", () => {
  test("adapter_config.json has PEFT 0.13's keys and values, sorted", () => {
    const dir = path.join(tempDir(), "adapter");
    const adapter = sampleAdapter();
    writeAdapterDir(dir, adapter);
    const text = readFileSync(path.join(dir, "adapter_config.json"), "utf8");
    const config = JSON.parse(text);
    expect(Object.keys(config)).toEqual([...Object.keys(config)].sort());
    expect(config).toEqual({
      alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: adapter.baseModel, bias: "none",
      fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, layer_replication: null,
      layers_pattern: null, layers_to_transform: null, loftq_config: {}, lora_alpha: 8, lora_dropout: 0.05,
      megatron_config: null, megatron_core: "megatron.core", modules_to_save: null, peft_type: "LORA", r: 4,
      rank_pattern: {}, revision: null, target_modules: ["q_proj", "v_proj", "down_proj"], task_type: "CAUSAL_LM",
      use_dora: false, use_rslora: false,
    });
    expect(text).toContain('\n  "alpha_pattern": {},\n'); // indent 2 like json.dumps(indent=2)
  });

  test("weights: PEFT key names, A is r×in and B is out×r, F32", () => {
    const dir = path.join(tempDir(), "adapter");
    writeAdapterDir(dir, sampleAdapter());
    const st = openSafetensors(path.join(dir, "adapter_model.safetensors"));
    const { config } = tinyModel();
    expect(st.tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")).toMatchObject({ dtype: "F32", shape: [4, config.hiddenSize] });
    expect(st.tensors.get("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")).toMatchObject({ dtype: "F32", shape: [config.hiddenSize, 4] });
    expect(st.tensors.get("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")!.shape).toEqual([config.numKvHeads * config.headDim, 4]);
    expect(st.tensors.size).toBe(2 * 3 * config.numLayers);
    expect(st.metadata).toEqual({ format: "pt" });
    st.close();
  });

  test("round trip: same tensors, config, template, args; tokenizer files copied", () => {
    const dir = path.join(tempDir(), "adapter");
    const adapter = sampleAdapter("all", 2);
    writeAdapterDir(dir, adapter);
    const loaded = readAdapterDir(dir, tinyModel().config);
    expect(loaded.lora).toEqual(adapter.lora);
    expect(loaded.scaling).toBe(4);
    expect(loaded.baseModel).toBe(adapter.baseModel);
    expect(loaded.weights.map((w) => w.spec)).toEqual(adapter.weights.map((w) => w.spec));
    loaded.weights.forEach((w, i) => {
      expect(w.A).toEqual(adapter.weights[i]!.A);
      expect(w.B).toEqual(adapter.weights[i]!.B);
    });
    expect(loaded.chatTemplate).toBe(adapter.chatTemplate);
    expect(loaded.trainingArgs).toEqual({ ...adapter.trainingArgs, chat_template_sha256: templateSha256(adapter.chatTemplate) });
    for (const f of ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "training_args.json", "metrics.jsonl", "loss_curve.svg"]) {
      expect(existsSync(path.join(dir, f))).toBe(true);
    }
    // The server finds the trained template in the adapter directory.
    expect(loadChatTemplate(dir).source).toBe(adapter.chatTemplate);
  });

  test("F16/BF16 adapters written elsewhere are read (widened to F32)", () => {
    const dir = path.join(tempDir(), "adapter");
    const adapter = sampleAdapter("q", 2);
    writeAdapterDir(dir, adapter);
    const st = openSafetensors(path.join(dir, "adapter_model.safetensors"));
    const tensors = [...st.tensors].map(([n, info]) => ({ name: n, dtype: "BF16" as const, shape: info.shape, data: bf16(new Float32Array(st.bytes(n).slice().buffer)) }));
    st.close();
    writeSafetensors(path.join(dir, "adapter_model.safetensors"), tensors);
    const loaded = readAdapterDir(dir);
    expect(loaded.weights[0]!.A[0]).toBeCloseTo(adapter.weights[0]!.A[0]!, 2);
  });
});

function bf16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer.slice(0));
  return Uint16Array.from(bits, (b) => b >>> 16);
}

describe("reader errors name the file and key", () => {
  function written(mutate: (dir: string) => void): string {
    const dir = path.join(tempDir(), "adapter");
    writeAdapterDir(dir, sampleAdapter());
    mutate(dir);
    return dir;
  }
  const patchConfig = (patch: Record<string, unknown>) => (dir: string) => {
    const file = path.join(dir, "adapter_config.json");
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, "utf8")), ...patch }));
  };

  test("config problems", () => {
    expect(() => readAdapterDir(written(patchConfig({ peft_type: "IA3" })))).toThrow(/adapter_config\.json: peft_type: .*"IA3"/);
    expect(() => readAdapterDir(written(patchConfig({ use_dora: true })))).toThrow("adapter_config.json: use_dora: unsupported value true");
    expect(() => readAdapterDir(written(patchConfig({ target_modules: ".*proj" })))).toThrow("target_modules: a regex");
    expect(() => readAdapterDir(written(patchConfig({ target_modules: ["q_proj", "lm_head"] })))).toThrow('unknown LoRA target module "lm_head"');
    expect(() => readAdapterDir(written(patchConfig({ r: 0 })))).toThrow("adapter_config.json: r:");
    expect(() => readAdapterDir(path.join(tempDir(), "missing"))).toThrow("adapter_config.json: not found");
  });

  test("tensor names and shapes against the config and the model", () => {
    const { config } = tinyModel();
    // Rank in the config disagrees with the tensors.
    expect(() => readAdapterDir(written(patchConfig({ r: 8 })), config)).toThrow("expected [8, 64] ([r, in] with r=8");
    // A module the config does not list.
    expect(() => readAdapterDir(written(patchConfig({ target_modules: ["q_proj", "v_proj"] })), config)).toThrow("down_proj is not in target_modules");
    // A module the config lists but the file lacks.
    expect(() => readAdapterDir(written(patchConfig({ target_modules: ["q_proj", "v_proj", "down_proj", "k_proj"] })), config)).toThrow(
      "missing 'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight'",
    );
    // A model with a different hidden size.
    let e: unknown;
    try {
      readAdapterDir(written(() => {}), { ...config, hiddenSize: config.hiddenSize * 2, numLayers: 1 });
    } catch (err) {
      e = err;
    }
    expect(e).toBeInstanceOf(AdapterFileError);
    expect((e as Error).message).toContain("adapter_model.safetensors");
    expect((e as Error).message).toContain(`layer 1 does not exist (the model has 1 layers)`);
    expect((e as Error).message).toMatch(/q_proj\.lora_A\.weight': shape \[4, 64\], the model needs \[4, 128\]/);
  });

  test("an unexpected tensor and a half pair", () => {
    const extra = written((dir) => {
      const file = path.join(dir, "adapter_model.safetensors");
      const st = openSafetensors(file);
      const tensors = [...st.tensors].filter(([n]) => !n.endsWith("layers.1.mlp.down_proj.lora_B.weight")).map(([n, info]) => ({ name: n, dtype: info.dtype, shape: info.shape, data: st.bytes(n).slice() }));
      tensors.push({ name: "base_model.model.lm_head.weight", dtype: "F32", shape: [1], data: new Uint8Array(4) });
      st.close();
      writeSafetensors(file, tensors);
    });
    expect(() => readAdapterDir(extra)).toThrow(/unexpected tensor 'base_model\.model\.lm_head\.weight'[\s\S]*'model\.layers\.1\.mlp\.down_proj' has lora_A but no lora_B/);
  });
});

describe("atomic writes", () => {
  test("a failure mid-write leaves no directory and no temp directory", () => {
    const parent = tempDir();
    const dir = path.join(parent, "adapter");
    const adapter = sampleAdapter();
    const broken: LoraWeights[] = adapter.weights.map((w, i) => (i === 3 ? { ...w, B: new Float32Array(1) } : w));
    expect(() => writeAdapterDir(dir, { ...adapter, weights: broken })).toThrow("lora_B has 1 values");
    expect(readdirSync(parent)).toEqual([]);
  });

  test("a failed rewrite keeps the previous adapter intact; a good one replaces it whole", () => {
    const parent = tempDir();
    const dir = path.join(parent, "adapter");
    writeAdapterDir(dir, sampleAdapter());
    writeFileSync(path.join(dir, "stale.txt"), "x");
    const before = readFileSync(path.join(dir, "adapter_model.safetensors"));
    expect(() =>
      writeDirAtomically(dir, (tmp) => {
        writeFileSync(path.join(tmp, "adapter_config.json"), "{}");
        throw new Error("disk full");
      }),
    ).toThrow("disk full");
    expect(readFileSync(path.join(dir, "adapter_model.safetensors"))).toEqual(before);
    expect(readdirSync(parent)).toEqual(["adapter"]);
    writeAdapterDir(dir, sampleAdapter("q", 2));
    expect(existsSync(path.join(dir, "stale.txt"))).toBe(false);
    expect(readAdapterDir(dir).lora.rank).toBe(2);
    expect(readdirSync(parent)).toEqual(["adapter"]);
  });
});

describe("replacing an adapter under a crash (kill -9 at each point of writeDirAtomically)", () => {
  const atomicDirModule = path.join(import.meta.dir, "../src/atomic-dir.ts");
  /** In a child process killed with SIGKILL at `point`, replaces `target` with a copy of `source`. */
  function replaceAndCrash(target: string, source: string, point: string): unknown {
    const code = `import { cpSync } from "node:fs"; import { writeDirAtomically } from ${JSON.stringify(atomicDirModule)};
      writeDirAtomically(process.env.TARGET, (tmp) => cpSync(process.env.SOURCE, tmp, { recursive: true }));`;
    const child = Bun.spawnSync(["bun", "-e", code], { env: { ...process.env, TARGET: target, SOURCE: source, TUNELOOM_TEST_CRASH_AT: point }, stderr: "pipe" });
    return child.signalCode;
  }

  for (const [point, expectAfterCrash, expectRank] of [
    ["after-fill", ["adapter", "adapter.tmp-"], 4], // the new copy was never complete: the old one stays
    ["before-replace", ["adapter", "adapter.new-"], 4], // complete but not yet swapped in: the old one stays
    ["between-renames", ["adapter.new-", "adapter.old-"], 2], // no adapter at its path: recovery installs the new one
  ] as const) {
    test(`killed at ${point}: the next start leaves a loadable adapter (rank ${expectRank}) and no temporaries`, () => {
      const parent = tempDir();
      const target = path.join(parent, "adapter"), source = path.join(tempDir(), "v2");
      writeAdapterDir(target, sampleAdapter("q,v,down", 4));
      writeAdapterDir(source, sampleAdapter("q", 2));
      expect(replaceAndCrash(target, source, point)).toBe("SIGKILL");
      const names = readdirSync(parent).sort();
      expect(names.map((n) => n.replace(/-\d+$/, "-"))).toEqual([...expectAfterCrash]);
      const actions = recoverDirWrites(parent);
      expect(actions.length).toBeGreaterThan(0);
      if (point === "between-renames") expect(actions[0]).toStartWith(`restored ${target} from adapter.new-`);
      expect(readdirSync(parent)).toEqual(["adapter"]);
      expect(readAdapterDir(target).lora.rank).toBe(expectRank);
      expect(recoverDirWrites(parent)).toEqual([]);
    });
  }

  test("only the old copy left (the new one lost): recovery restores it", () => {
    const parent = tempDir();
    writeAdapterDir(path.join(parent, "adapter"), sampleAdapter());
    renameSync(path.join(parent, "adapter"), path.join(parent, "adapter.old-999999"));
    mkdirSync(path.join(parent, "adapter.tmp-999999"));
    expect(recoverDirWrites(parent)).toHaveLength(2);
    expect(readdirSync(parent)).toEqual(["adapter"]);
    expect(readAdapterDir(path.join(parent, "adapter")).lora.rank).toBe(4);
  });

  test("a replacement without a crash swaps atomically and leaves nothing beside it", () => {
    const parent = tempDir();
    const target = path.join(parent, "adapter");
    writeAdapterDir(target, sampleAdapter("q,v,down", 4));
    writeAdapterDir(target, sampleAdapter("q", 2));
    expect(readdirSync(parent)).toEqual(["adapter"]);
    expect(readAdapterDir(target).lora.rank).toBe(2);
  });
});
