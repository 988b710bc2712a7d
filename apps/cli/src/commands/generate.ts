/**
 * `bun run generate -- --model DIR [--adapter DIR] (--prompt T | --messages F | --ids-file F) [flags]`:
 * one completion on the GPU, printed to stdout exactly (nothing added), or with --json as
 * `{"ids": [...], "text": ...}`.
 */
import { readFileSync } from "node:fs";
import type { ChatMessage } from "@tuneloom/chat-template";
import {
  GpuModel, IncrementalDetokenizer, KvCacheGenerator, checkAdapterTemplate, encodeChatText, loadGenerationConfig,
  loadGpuAdapter, loadServingTokenizer, renderChatPrompt, resolveServingTemplate, servingStopTokenIds, uniformStream, type GenerationConfig, type LayerLora,
  type ModelTokenizer,
} from "@tuneloom/model";
import type { SamplingParams } from "@tuneloom/kernels";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";
import { ADAPTER_FLAG, MODEL_FLAG, requireDir, requireModelDir } from "../model-flags.ts";

const SPEC = {
  name: "generate",
  usage: "--model DIR [--adapter DIR] (--prompt TEXT | --messages FILE | --ids-file FILE) [flags]",
  description: `One completion on the GPU, printed to stdout followed by a newline (--json for the exact text and ids).
Generation stops at the EOS ids of config.json, generation_config.json and the tokenizer, at --max-tokens, or at a --stop string.`,
  flags: {
    model: MODEL_FLAG,
    adapter: ADAPTER_FLAG,
    prompt: { type: "string", arg: "TEXT", help: "raw text, tokenized as is (BOS if the tokenizer's config says so; no chat template)" },
    messages: {
      type: "string", arg: "FILE",
      help: "JSON list of {role, content} (or {\"messages\": [...]}) rendered with the chat template (the adapter's if it has one), add_generation_prompt=true",
    },
    "ids-file": { type: "string", arg: "FILE", help: "JSON array of prompt token ids" },
    "max-tokens": { type: "number", help: "new tokens at most, capped by the model's context (default: generation_config max_new_tokens, else 256)", aliases: ["max-new-tokens"] },
    temperature: { type: "number", arg: "T", help: "0 = greedy (default: sample only when generation_config.json says do_sample, as transformers does)" },
    "top-p": { type: "number", arg: "P", help: "nucleus filtering when sampling (default: generation_config.json, else 1)" },
    "top-k": { type: "number", arg: "K", help: "top-k filtering when sampling (default: generation_config.json, else 50 with do_sample, off otherwise)" },
    seed: { type: "number", help: "seed of the sampling draws: same seed, same output", default: 0 },
    stop: { type: "list", arg: "S", help: "stop string, or a JSON list of them ('[\"\\n\\n\", \"User:\"]'); the text is cut before the first match" },
    json: { type: "boolean", help: "print {\"ids\": [...], \"text\": \"...\"} (ids generated, stop token excluded) instead of the text" },
  },
} as const satisfies CommandSpec;

/** A JSON input file, with errors naming it. */
export function readJsonFile(file: string, flag: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    throw new Error(`${flag} ${file}: cannot read the file`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${flag} ${file}: invalid JSON (${(e as Error).message})`);
  }
}

/** `--ids-file`: a JSON array of non-negative integer token ids below the vocabulary size. */
export function readIdsFile(file: string, vocabSize: number): number[] {
  const ids = readJsonFile(file, "--ids-file");
  if (!Array.isArray(ids) || ids.length === 0) throw new Error(`--ids-file ${file}: expected a non-empty JSON array of token ids`);
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new Error(`--ids-file ${file}: entry ${i} (${JSON.stringify(id)}) is not a token id in 0..${vocabSize - 1}`);
    }
  });
  return ids as number[];
}

/**
 * The GPU model, the adapter (uploaded) and the tokenizer, chosen as the server chooses them
 * (@tuneloom/model's serving-files.ts). An adapter whose recorded training template differs
 * from the one found is refused, as the server refuses it, before the model is loaded.
 */
export async function loadModelAndAdapter(modelDir: string, adapterDir?: string): Promise<{ model: GpuModel; lora?: LayerLora[]; tokenizer: ModelTokenizer }> {
  checkAdapterTemplate(modelDir, adapterDir);
  const model = await GpuModel.load(modelDir);
  const lora = adapterDir ? loadGpuAdapter(model, adapterDir) : undefined;
  const tokenizer = loadServingTokenizer(modelDir, adapterDir);
  return { model, lora, tokenizer };
}

/** `--stop` values: each occurrence is a literal string, or a JSON list of strings. */
export function expandStops(values: readonly string[]): string[] {
  return values.flatMap((v) => {
    if (v.startsWith("[")) {
      let list: unknown;
      try {
        list = JSON.parse(v);
      } catch {
        list = null;
      }
      if (Array.isArray(list)) {
        if (!list.every((s) => typeof s === "string" && s.length > 0)) throw new UsageError(`--stop ${v}: a JSON list must hold non-empty strings`);
        return list as string[];
      }
    }
    if (v.length === 0) throw new UsageError("--stop: the stop string is empty");
    return [v];
  });
}

/** transformers' rule: sample only when do_sample is true; explicit flags override. */
export function resolveSampling(
  gen: GenerationConfig | null, flags: { temperature?: number; topP?: number; topK?: number },
): SamplingParams {
  const sampleByDefault = gen?.doSample === true;
  const temperature = flags.temperature ?? (sampleByDefault ? (gen?.temperature ?? 1.0) : 0);
  if (temperature < 0) throw new Error(`--temperature must be ≥ 0, got ${temperature}`);
  if (temperature === 0) return { temperature: 0 };
  const topP = flags.topP ?? (sampleByDefault ? (gen?.topP ?? 1) : 1);
  const topK = flags.topK ?? (sampleByDefault ? (gen?.topK ?? 50) : 0);
  if (!(topP > 0 && topP <= 1)) throw new Error(`--top-p must be in (0, 1], got ${topP}`);
  if (!Number.isInteger(topK) || topK < 0) throw new Error(`--top-k must be a non-negative integer, got ${topK}`);
  return { temperature, topP, topK };
}

function readMessages(file: string): ChatMessage[] {
  const json = readJsonFile(file, "--messages");
  const messages = Array.isArray(json) ? json : (json as { messages?: unknown } | null)?.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw new Error(`--messages ${file}: expected a JSON list of messages (or {"messages": [...]})`);
  messages.forEach((m, i) => {
    if (typeof m !== "object" || m === null || typeof (m as ChatMessage).role !== "string") {
      throw new Error(`--messages ${file}: message ${i} needs a string 'role'`);
    }
  });
  return messages as ChatMessage[];
}

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  const stops = expandStops(flags.stop ?? []);
  const modelDir = requireModelDir(flags.model);
  const adapterDir = flags.adapter === undefined ? undefined : requireDir(flags.adapter, "--adapter");
  const sources = (["prompt", "messages", "ids-file"] as const).filter((k) => flags[k] !== undefined);
  if (sources.length !== 1) throw new UsageError(`give exactly one of --prompt, --messages, --ids-file (got ${sources.length ? sources.map((s) => `--${s}`).join(", ") : "none"})`);
  const seed = flags.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`--seed must be an integer in 0..4294967295, got ${seed}`);
  const gen = loadGenerationConfig(modelDir);
  const sampling = resolveSampling(gen, { temperature: flags.temperature, topP: flags["top-p"], topK: flags["top-k"] });
  const messages = flags.messages !== undefined ? readMessages(flags.messages) : undefined;

  const { model, lora, tokenizer } = await loadModelAndAdapter(modelDir, adapterDir);
  let promptIds: number[];
  // Ids past the tokenizer's vocabulary are padding rows of the checkpoint, not tokens.
  if (flags["ids-file"] !== undefined) promptIds = readIdsFile(flags["ids-file"], Math.min(model.cfg.vocabSize, tokenizer.vocabSize));
  else if (messages) {
    const template = resolveServingTemplate(modelDir, adapterDir);
    promptIds = encodeChatText(tokenizer, renderChatPrompt(template, messages)).ids;
  } else promptIds = tokenizer.encode(flags.prompt!).ids;
  if (promptIds.length === 0) throw new Error("the prompt is empty (no tokens)");

  const maxPositions = model.cfg.maxPositionEmbeddings;
  if (promptIds.length >= maxPositions) throw new Error(`the prompt has ${promptIds.length} tokens; the model's context is ${maxPositions}`);
  const requested = flags["max-tokens"] ?? gen?.maxNewTokens ?? 256;
  if (!Number.isInteger(requested) || requested < 1) throw new Error(`--max-tokens must be a positive integer, got ${requested}`);
  const maxTokens = Math.min(requested, maxPositions - promptIds.length);

  const stopIds = new Set(servingStopTokenIds(modelDir, model.cfg, tokenizer));
  const detok = new IncrementalDetokenizer(tokenizer, { skipSpecialTokens: true, contextIds: promptIds });
  const maxStop = Math.max(0, ...stops.map((s) => s.length));
  const ids: number[] = [];
  let cut: number | null = null;
  // Each new piece of text is searched together with the last maxStop−1 characters before it, so
  // a stop string split across tokens is still found.
  const findStop = (from: number) => {
    let best: number | null = null;
    for (const s of stops) {
      const at = detok.text.indexOf(s, Math.max(0, from - maxStop + 1));
      if (at >= 0 && (best === null || at < best)) best = at;
    }
    return best;
  };

  // Same draws as generateIds (one uniform per sampled token), plus the stop-string check per token.
  const generator = new KvCacheGenerator(model, { maxSlots: 1, maxContext: promptIds.length + maxTokens + 1, lora, validVocab: tokenizer.vocabSize });
  const u = uniformStream(seed);
  try {
    let row = await generator.prefill(0, promptIds, sampling, u());
    while (!stopIds.has(row.token)) {
      ids.push(row.token);
      const before = detok.text.length;
      detok.push(row.token);
      if (stops.length && (cut = findStop(before)) !== null) break;
      if (ids.length >= maxTokens) break;
      [row] = (await generator.decode([{ slot: 0, token: row.token, position: promptIds.length + ids.length - 1, sampling, u: u() }])) as [typeof row];
    }
    if (cut === null) {
      const before = detok.text.length;
      detok.flush();
      if (stops.length) cut = findStop(before);
    }
  } finally {
    generator.dispose();
  }
  const text = cut === null ? detok.text : detok.text.slice(0, cut);
  // A newline ends the output, as a shell expects; --json carries the exact text.
  await Bun.write(Bun.stdout, (flags.json ? JSON.stringify({ ids, text }) : text) + "\n");
  return 0;
}
