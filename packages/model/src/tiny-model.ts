// A small, deterministic, random Llama-family model in the Hugging Face layout, for tests and demos
// without downloads. Everything derives from the seed (weights) or from fixed data (tokenizer), so the
// same seed gives byte-identical files. The files follow what transformers' save_pretrained writes, so
// transformers / tokenizers / vLLM can load them too.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { toTransformersConfig, type Architecture, type ModelConfig } from "./config.ts";
import { expectedTensors } from "./checkpoint.ts";
import { toGenerationConfigJson } from "./generation-config.ts";
import { writeSafetensors, type TensorToWrite } from "./safetensors.ts";
import { float32ToBf16Array } from "./half-floats.ts";
import { byteToUnicodeTable } from "./tokenizer.ts";
import { mulberry32 } from "@tuneloom/kernels/host-data.ts";

/** transformers' ChatML (Qwen2 / SmolLM2 style) template, the default for the tiny model. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

export const TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] as const;
export const TINY_MERGES = 200;

/** Text the tokenizer's merges are learned from: enough English (and chat words) to give real subwords. */
const TINY_CORPUS = `
The quick brown fox jumps over the lazy dog. The dog was not amused, and the fox ran into the forest.
Once upon a time there was a little girl who lived in a village near the forest. Whenever she went out,
the little girl wore a red riding cloak, so everyone in the village called her Little Red Riding Hood.
The user asked the assistant a question, and the assistant answered the question with a helpful answer.
You are a helpful assistant. Please answer the following question in one sentence. Thank you very much!
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
In the beginning there were numbers: 1, 2, 3, 10, 42, 100, 2024. Then there were words, and then there were stories.
Hello! How are you today? I am fine, thank you. It is a beautiful day, and the sun is shining over the hills.
Training a language model means showing it many examples, and then the model learns to predict the next word.
The weather today is sunny with a light breeze. Tomorrow there will be rain in the morning and clouds in the evening.
She opened the door, looked at the garden, and smiled: the flowers were blooming and the birds were singing.
To make a cup of tea, boil the water, put the tea in the cup, pour the water, and wait for three minutes.
The system message tells the assistant how to behave. The user message asks something. The assistant replies.
Numbers and letters, questions and answers, stories and songs: a small model can learn a little of everything.
My favourite colours are blue and green. His favourite animals are cats and dogs. Their favourite food is bread.
`;

/** GPT-2 pre-tokenization regex (what ByteLevel with use_regex does before BPE). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/**
 * Qwen2's pre-tokenization regex, verbatim from Qwen2.5's tokenizer.json (and transformers'
 * Qwen2Tokenizer, which rebuilds its pipeline from it): unlike GPT-2's, digits are split one by one
 * and a letter run takes one leading non-letter (" the", "(the").
 */
export const QWEN2_SPLIT_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** The same regex in JavaScript, which has no inline (?i:...) group: the contractions spelled in both cases. */
const QWEN2_SPLIT = /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

/**
 * How text is split before BPE. "gpt2": the ByteLevel pre-tokenizer's own regex (GPT-2, SmolLM2,
 * what the tiny llama uses). "qwen2": Qwen2/Qwen2.5's layout, NFC normalizer then a Split on
 * QWEN2_SPLIT_PATTERN then ByteLevel without its regex; transformers ≥ 5 loads every qwen2 model's
 * tokenizer as Qwen2Tokenizer, which hard-codes exactly that pipeline, so a qwen2 tokenizer.json
 * that splits differently tokenizes differently in transformers than in `tokenizers`.
 */
export type TinyTokenizerStyle = "gpt2" | "qwen2";

/**
 * Learn `numMerges` byte-level BPE merges from the corpus: repeatedly merge the most frequent adjacent
 * pair (ties broken by the pair's text, so the result is deterministic).
 */
export function learnByteLevelMerges(corpus: string, numMerges: number, style: TinyTokenizerStyle = "gpt2"): [string, string][] {
  const b2u = byteToUnicodeTable();
  const encoder = new TextEncoder();
  const wordCounts = new Map<string, number>();
  const text = style === "qwen2" ? corpus.normalize("NFC") : corpus;
  for (const piece of text.match(style === "qwen2" ? QWEN2_SPLIT : GPT2_SPLIT) ?? []) {
    const word = Array.from(encoder.encode(piece), (b) => b2u[b]!).join("");
    wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
  }
  const words = [...wordCounts].map(([w, count]) => ({ symbols: Array.from(w), count }));
  const merges: [string, string][] = [];
  while (merges.length < numMerges) {
    const pairCounts = new Map<string, number>();
    for (const { symbols, count } of words)
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + count);
      }
    let best: string | null = null;
    let bestCount = 1; // a pair seen once teaches nothing
    for (const [key, count] of pairCounts)
      if (count > bestCount || (count === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = count;
      }
    if (best === null) break;
    const [a, b] = best.split(" ") as [string, string];
    merges.push([a, b]);
    for (const w of words) {
      const next: string[] = [];
      for (let i = 0; i < w.symbols.length; i++) {
        if (i + 1 < w.symbols.length && w.symbols[i] === a && w.symbols[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(w.symbols[i]!);
      }
      w.symbols = next;
    }
  }
  return merges;
}

export interface TinyTokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  /** Ids of the special tokens, by content. */
  specialIds: Record<(typeof TINY_SPECIAL_TOKENS)[number], number>;
  vocabSize: number;
}

/**
 * A byte-level BPE tokenizer.json in the exact shape the Python `tokenizers` library serializes
 * (version 1.0, merges as "a b" strings, which every version reads): ids 0..255 are the bytes, then
 * the learned merges, then the added special tokens. `style` picks the pre-tokenization (see
 * TinyTokenizerStyle); "qwen2" also writes Qwen2.5's normalizer, post-processor and decoder.
 */
export function buildTinyTokenizer(style: TinyTokenizerStyle = "gpt2"): TinyTokenizerFiles {
  const b2u = byteToUnicodeTable();
  const vocab: Record<string, number> = {};
  const order: string[] = [];
  const add = (token: string) => {
    if (Object.hasOwn(vocab, token)) return;
    vocab[token] = order.length;
    order.push(token);
  };
  for (let b = 0; b < 256; b++) add(b2u[b]!);
  const merges = learnByteLevelMerges(TINY_CORPUS, TINY_MERGES, style);
  for (const [a, b] of merges) add(a + b);
  const addedTokens = TINY_SPECIAL_TOKENS.map((content, i) => ({
    id: order.length + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  // Qwen2.5's tokenizer.json, component for component.
  const qwen2ByteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
  const pipeline =
    style === "qwen2"
      ? {
          normalizer: { type: "NFC" },
          pre_tokenizer: {
            type: "Sequence",
            pretokenizers: [{ type: "Split", pattern: { Regex: QWEN2_SPLIT_PATTERN }, behavior: "Isolated", invert: false }, qwen2ByteLevel],
          },
          post_processor: qwen2ByteLevel,
          decoder: qwen2ByteLevel,
        }
      : { normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel };
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    ...pipeline,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const specialIds = Object.fromEntries(addedTokens.map((t) => [t.content, t.id])) as TinyTokenizerFiles["specialIds"];
  return { tokenizerJson, specialIds, vocabSize: order.length + addedTokens.length };
}

export interface TinyModelOptions {
  arch?: "llama" | "qwen2";
  seed?: number;
  /** Stored weight dtype; F32 by default so tests compare exactly, BF16 to mimic real checkpoints. */
  dtype?: "f32" | "bf16";
  /** Jinja chat template for tokenizer_config.json; ChatML by default. */
  chatTemplate?: string;
}

/** The tiny model's config: hidden 64, 2 layers, 4 heads over 2 kv heads (GQA), head 16. qwen2 is tied with q/k/v bias. */
export function tinyModelConfig(arch: Architecture, vocabSize: number, ids: TinyTokenizerFiles["specialIds"], dtype: "f32" | "bf16"): ModelConfig {
  const numLayers = 2;
  return {
    arch,
    hiddenSize: 64,
    intermediateSize: 128,
    numLayers,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    vocabSize,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    ropeScaling: null,
    maxPositionEmbeddings: 2048,
    tieWordEmbeddings: arch === "qwen2",
    attentionBias: arch === "qwen2",
    oProjBias: false,
    mlpBias: false,
    torchDtype: dtype === "bf16" ? "bfloat16" : "float32",
    bosTokenId: ids["<|endoftext|>"],
    eosTokenIds: [ids["<|im_end|>"]],
    padTokenId: ids["<|endoftext|>"],
    slidingWindow: null,
    layerTypes: Array.from({ length: numLayers }, () => "full_attention" as const),
  };
}

/** Standard normal samples by Box-Muller over mulberry32. */
export function gaussianSampler(seed: number): () => number {
  const uniform = mulberry32(seed);
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    const u1 = 1 - uniform(); // (0, 1]: log stays finite
    const u2 = uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  };
}

/** FNV-1a of a string: each tensor gets its own stream, so adding a tensor never changes another. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Random weights, scaled so the model is decisive: projections keep activations at unit scale
 * (std 1/√fan_in), norm weights sit near 1 (but not at 1, so a forward that ignores them is caught),
 * and the output head spreads logits by a few units, so greedy decoding is not a coin toss between
 * near-equal logits and GPU/CPU comparisons pick the same token.
 */
export function tinyModelWeights(cfg: ModelConfig, seed: number): { name: string; shape: number[]; data: Float32Array }[] {
  return expectedTensors(cfg).map(({ name, shape }) => {
    const gauss = gaussianSampler((seed ^ fnv1a(name)) >>> 0);
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const fanIn = shape.length === 2 ? shape[1]! : 1;
    let fill: () => number;
    if (name.endsWith("norm.weight")) fill = () => 1 + 0.1 * gauss();
    else if (name.endsWith(".bias")) fill = () => 0.1 * gauss();
    else if (name === "model.embed_tokens.weight") fill = () => (cfg.tieWordEmbeddings ? 0.5 : 1) * gauss();
    else if (name === "lm_head.weight") fill = () => (4 / Math.sqrt(fanIn)) * gauss();
    else fill = () => gauss() / Math.sqrt(fanIn);
    for (let i = 0; i < data.length; i++) data[i] = fill();
    return { name, shape, data };
  });
}

export interface TinyModelResult {
  dir: string;
  config: ModelConfig;
  specialIds: TinyTokenizerFiles["specialIds"];
  files: string[];
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n");
}

/** Write the tiny model to `dir` (created if needed): config, weights, tokenizer files, generation config. */
export function writeTinyModel(dir: string, options: TinyModelOptions = {}): TinyModelResult {
  const arch = options.arch ?? "llama";
  const seed = options.seed ?? 0;
  const dtype = options.dtype ?? "f32";
  if (!Number.isInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
  mkdirSync(dir, { recursive: true });
  const tok = buildTinyTokenizer(arch === "qwen2" ? "qwen2" : "gpt2");
  const config = tinyModelConfig(arch, tok.vocabSize, tok.specialIds, dtype);
  const eot = tok.specialIds["<|endoftext|>"];
  const imEnd = tok.specialIds["<|im_end|>"];

  const tensors: TensorToWrite[] = tinyModelWeights(config, seed).map(({ name, shape, data }) =>
    dtype === "bf16" ? { name, shape, dtype: "BF16", data: float32ToBf16Array(data) } : { name, shape, dtype: "F32", data },
  );
  writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
  writeJson(join(dir, "config.json"), toTransformersConfig(config));
  writeJson(join(dir, "tokenizer.json"), tok.tokenizerJson);
  const addedTokensDecoder = Object.fromEntries(
    TINY_SPECIAL_TOKENS.map((content) => [
      String(tok.specialIds[content]),
      { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
    ]),
  );
  // qwen2 as Qwen2.5-Instruct ships it: no BOS token and no add_bos/eos_token keys, its own
  // tokenizer class (the one transformers uses for model_type qwen2 whatever the file says).
  const qwen2 = arch === "qwen2";
  writeJson(join(dir, "tokenizer_config.json"), {
    ...(qwen2 ? {} : { add_bos_token: false, add_eos_token: false }),
    add_prefix_space: false,
    added_tokens_decoder: addedTokensDecoder,
    additional_special_tokens: ["<|im_start|>", "<|im_end|>"],
    bos_token: qwen2 ? null : "<|endoftext|>",
    chat_template: options.chatTemplate ?? CHATML_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: "<|im_end|>",
    errors: "replace",
    model_max_length: config.maxPositionEmbeddings,
    pad_token: "<|endoftext|>",
    split_special_tokens: false,
    tokenizer_class: qwen2 ? "Qwen2Tokenizer" : "PreTrainedTokenizerFast",
    unk_token: null,
  });
  writeJson(
    join(dir, "generation_config.json"),
    toGenerationConfigJson({
      bosTokenId: eot, eosTokenIds: [imEnd, eot], padTokenId: eot, doSample: null, temperature: null, topP: null,
      topK: null, minP: null, repetitionPenalty: null, maxNewTokens: null, maxLength: null,
    }),
  );
  const files = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
  return { dir, config, specialIds: tok.specialIds, files };
}
