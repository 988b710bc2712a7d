import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModelConfig, parseModelConfig } from "../src/config.ts";
import { loadGenerationConfig } from "../src/generation-config.ts";
import { expectedTensors, openCheckpoint } from "../src/checkpoint.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { loadChatTemplate } from "../src/chat-template-file.ts";
import { float32ToBf16Array, bf16ToFloat32Array } from "../src/half-floats.ts";
import { cpuReferenceForward, cpuReferenceGreedy, ropeInverseFrequencies } from "../src/cpu-reference.ts";
import { CHATML_TEMPLATE, QWEN2_SPLIT_PATTERN, tinyModelWeights, writeTinyModel } from "../src/tiny-model.ts";

const tmp = () => mkdtempSync(join(tmpdir(), "tiny-"));
const filesOf = (dir: string) => Object.fromEntries(readdirSync(dir).sort().map((f) => [f, readFileSync(join(dir, f))]));

describe("tiny model", () => {
  for (const arch of ["llama", "qwen2"] as const) {
    test(`${arch}: same seed → byte-identical files; another seed changes only the weights`, () => {
      const [a, b, c] = [tmp(), tmp(), tmp()];
      writeTinyModel(a, { arch, seed: 7 });
      writeTinyModel(b, { arch, seed: 7 });
      writeTinyModel(c, { arch, seed: 8 });
      const fa = filesOf(a);
      expect(Object.keys(fa)).toEqual(["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
      expect(filesOf(b)).toEqual(fa);
      const fc = filesOf(c);
      for (const f of Object.keys(fa)) expect(fc[f]!.equals(fa[f]!)).toBe(f !== "model.safetensors");
    });

    test(`${arch}: loads back through config, checkpoint and tokenizer`, () => {
      const dir = tmp();
      const written = writeTinyModel(dir, { arch, seed: 1 });
      const cfg = loadModelConfig(dir);
      expect(cfg).toEqual(written.config);
      expect(cfg).toMatchObject({ arch, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, ropeTheta: 10000 });
      expect(cfg.tieWordEmbeddings).toBe(arch === "qwen2");
      expect(cfg.attentionBias).toBe(arch === "qwen2");
      const store = openCheckpoint(dir);
      store.expectTensors(expectedTensors(cfg), { allowUnexpected: false });
      expect(store.info("model.norm.weight").dtype).toBe("F32");
      const tok = loadTokenizer(dir);
      expect(tok.vocabSize).toBe(cfg.vocabSize);
      expect(tok.eosId).toBe(cfg.eosTokenIds[0]!);
      expect(loadChatTemplate(dir).source).toBe(CHATML_TEMPLATE);
      expect(loadGenerationConfig(dir)!.eosTokenIds).toEqual([written.specialIds["<|im_end|>"], written.specialIds["<|endoftext|>"]]);
      const meta = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
      expect(meta.architectures).toEqual([arch === "llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM"]);
    });
  }

  test("qwen2 tokenizer is laid out as Qwen2.5's (what transformers' Qwen2Tokenizer rebuilds); llama's is GPT-2 byte-level", () => {
    const [q, l] = [tmp(), tmp()];
    writeTinyModel(q, { arch: "qwen2" });
    writeTinyModel(l, { arch: "llama" });
    const json = (dir: string, f: string) => JSON.parse(readFileSync(join(dir, f), "utf8"));
    const qt = json(q, "tokenizer.json");
    expect(qt.normalizer).toEqual({ type: "NFC" });
    expect(qt.pre_tokenizer.pretokenizers[0]).toEqual({ type: "Split", pattern: { Regex: QWEN2_SPLIT_PATTERN }, behavior: "Isolated", invert: false });
    expect(qt.pre_tokenizer.pretokenizers[1]).toMatchObject({ type: "ByteLevel", use_regex: false });
    // transformers 5 loads every model_type qwen2 tokenizer as Qwen2Tokenizer with this exact regex.
    expect(QWEN2_SPLIT_PATTERN).toBe(String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`);
    expect(json(q, "tokenizer_config.json")).toMatchObject({ tokenizer_class: "Qwen2Tokenizer", bos_token: null, eos_token: "<|im_end|>", pad_token: "<|endoftext|>" });
    expect(json(l, "tokenizer.json").pre_tokenizer).toEqual({ type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true });
    expect(json(l, "tokenizer_config.json")).toMatchObject({ tokenizer_class: "PreTrainedTokenizerFast", bos_token: "<|endoftext|>" });
    // Digits: one token each under Qwen2's split; GPT-2's keeps a space on a digit run.
    const pieces = (dir: string, text: string) => {
      const tok = loadTokenizer(dir);
      return tok.encode(text, { addSpecialTokens: false }).ids.map((id) => tok.decode([id]));
    };
    expect(pieces(q, "in 2024")).toEqual(["in", " ", "2", "0", "2", "4"]);
    expect(pieces(l, "in 2024")[1]).toBe(" 2");
    // NFC: a decomposed é encodes as the composed one.
    expect(loadTokenizer(q).encode("cafe\u0301", { addSpecialTokens: false }).ids).toEqual(loadTokenizer(q).encode("café", { addSpecialTokens: false }).ids);
  });

  test("bf16 weights are the rounded f32 weights", () => {
    const dir = tmp();
    const { config } = writeTinyModel(dir, { arch: "llama", seed: 2, dtype: "bf16" });
    expect(loadModelConfig(dir).torchDtype).toBe("bfloat16");
    const store = openCheckpoint(dir);
    const name = "model.layers.1.mlp.down_proj.weight";
    expect(store.info(name).dtype).toBe("BF16");
    const f32 = tinyModelWeights(config, 2).find((t) => t.name === name)!.data;
    expect(store.toFloat32(name)).toEqual(bf16ToFloat32Array(float32ToBf16Array(f32)));
  });

  test("CPU reference: finite (T, V) logits, causal, decisive (top-1/top-2 gaps mostly > 1e-2)", () => {
    for (const arch of ["llama", "qwen2"] as const) {
      const dir = tmp();
      writeTinyModel(dir, { arch, seed: 0 });
      const cfg = loadModelConfig(dir);
      const store = openCheckpoint(dir);
      const tok = loadTokenizer(dir);
      const gaps: number[] = [];
      for (const prompt of ["<|im_start|>user\nHello, who are you?<|im_end|>\n<|im_start|>assistant\n", "The quick brown fox", "1 + 1 = 2, 2 + 2 ="]) {
        const ids = tok.encode(prompt).ids;
        const V = cfg.vocabSize;
        const logits = cpuReferenceForward(cfg, store, ids); // (T, V)
        expect(logits.length).toBe(ids.length * V);
        expect(logits.every(Number.isFinite)).toBe(true);
        // causal: the first positions do not see later tokens
        const prefix = cpuReferenceForward(cfg, store, ids.slice(0, 3));
        for (let i = 0; i < prefix.length; i++) expect(Math.abs(prefix[i]! - logits[i]!)).toBeLessThan(1e-9);
        for (let t = 0; t < ids.length; t++) {
          const row = Array.from(logits.subarray(t * V, (t + 1) * V)).sort((a, b) => b - a);
          gaps.push(row[0]! - row[1]!);
        }
      }
      expect(gaps.filter((g) => g > 1e-2).length / gaps.length).toBeGreaterThan(0.9);
      const greedy = cpuReferenceGreedy(cfg, store, tok.encode("Hello").ids, 4);
      expect(greedy).toEqual(cpuReferenceGreedy(cfg, store, tok.encode("Hello").ids, 4));
      expect(greedy.every((id) => id >= 0 && id < cfg.vocabSize)).toBe(true);
    }
  });

  test("sliding window limits what a query sees", () => {
    const dir = tmp();
    writeTinyModel(dir, { arch: "llama", seed: 0 });
    const base = loadModelConfig(dir);
    const store = openCheckpoint(dir);
    const ids = [5, 80, 120, 33, 200, 7, 9, 300];
    const windowed = { ...base, slidingWindow: 3, layerTypes: base.layerTypes.map(() => "sliding_attention" as const) };
    const full = cpuReferenceForward(base, store, ids);
    const slid = cpuReferenceForward(windowed, store, ids);
    const V = base.vocabSize;
    // positions < window see the same keys either way; later ones differ
    for (let i = 0; i < 3 * V; i++) expect(Math.abs(full[i]! - slid[i]!)).toBeLessThan(1e-9);
    expect(Math.abs(full[7 * V]! - slid[7 * V]!)).toBeGreaterThan(1e-6);
  });

  test("RoPE llama3 scaling keeps high frequencies, divides low ones by the factor", () => {
    const cfg = parseModelConfig({
      model_type: "llama", hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 1, num_attention_heads: 32,
      num_key_value_heads: 8, vocab_size: 10, rms_norm_eps: 1e-5, max_position_embeddings: 131072, rope_theta: 500000,
      rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    const plain = ropeInverseFrequencies({ ...cfg, ropeScaling: null });
    const scaled = ropeInverseFrequencies(cfg);
    expect(scaled[0]).toBe(plain[0]!);
    expect(scaled[63]).toBeCloseTo(plain[63]! / 8, 15);
    for (let i = 0; i < 64; i++) {
      expect(scaled[i]!).toBeLessThanOrEqual(plain[i]!);
      expect(scaled[i]!).toBeGreaterThanOrEqual(plain[i]! / 8 - 1e-18);
    }
    const linear = ropeInverseFrequencies({ ...cfg, ropeScaling: { type: "linear", factor: 2 } });
    expect(linear[5]).toBeCloseTo(plain[5]! / 2, 15);
  });
});
