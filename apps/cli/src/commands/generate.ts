/**
 * `bun run generate -- --model DIR [--adapter DIR] (--prompt T | --messages F | --ids-file F) [flags]`:
 * one completion on the GPU, printed to stdout exactly (nothing added), or with --json as
 * `{"ids": [...], "text": ...}`.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import type { ChatMessage } from "@tuneloom/chat-template";
import {
  GpuModel, IncrementalDetokenizer, KvCacheGenerator, checkAdapterTemplate, encodeChatText, loadGenerationConfig,
  loadGpuAdapter, loadServingTokenizer, renderChatPrompt, resolveServingTemplate, servingStopTokenIds, uniformStream, type GenerationConfig, type LayerLora,
  type ModelTokenizer,
} from "@tuneloom/model";
import type { SamplingParams } from "@tuneloom/kernels";
import { parseFlags } from "../args.ts";

const HELP = `usage: generate --model DIR [--adapter DIR] (--prompt TEXT | --messages FILE | --ids-file FILE)
                [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop S]... [--json]

  --prompt TEXT      raw text, tokenized as is (the tokenizer adds BOS if its config says so; no chat template)
  --messages FILE    JSON list of {role, content} (or {"messages": [...]}) rendered with the chat template,
                     add_generation_prompt=true: the adapter's chat_template.jinja if it has one, else the model's;
                     as the server does, an adapter whose training_args.json records another template's sha256 is refused
  --ids-file FILE    JSON array of prompt token ids
  --max-tokens N     new tokens at most (default: generation_config.json max_new_tokens, else 256; capped by
                     the model's max_position_embeddings)
  --temperature T    0 = greedy. Default as transformers' generate(): sampling only when generation_config.json
                     says do_sample: true (then its temperature/top_p/top_k, transformers' defaults 1.0/1.0/50
                     for the ones it lacks); otherwise greedy. Giving --temperature > 0 turns sampling on.
  --top-p P, --top-k K  nucleus / top-k filtering when sampling (default: generation_config.json, else off)
  --seed S           seed of the sampling draws (default 0): same seed, same output
  --stop S           stop string, repeatable, or a JSON list ('["\\n\\n", "User:"]'); the text is cut before it.
                     Generation also stops at the EOS ids of config.json, generation_config.json and the tokenizer.
  --json             print {"ids": [...], "text": "..."} (ids generated, stop token excluded) instead of the text`;

const FLAGS = {
  model: "string", adapter: "string", prompt: "string", messages: "string", "ids-file": "string",
  "max-tokens": "number", temperature: "number", "top-p": "number", "top-k": "number", seed: "number",
  json: "boolean", help: "boolean",
} as const;

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

export function requireDir(dir: string | undefined, flag: string, usage: string): string {
  if (!dir) throw new Error(`${flag} is required (${usage.split("\n")[0]})`);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${flag} ${dir}: directory not found`);
  return dir;
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
function extractStops(argv: string[]): { rest: string[]; stops: string[] } {
  const rest: string[] = [], stops: string[] = [];
  const add = (v: string) => {
    if (v.startsWith("[")) {
      let list: unknown;
      try {
        list = JSON.parse(v);
      } catch {
        list = null;
      }
      if (Array.isArray(list)) {
        if (!list.every((s) => typeof s === "string" && s.length > 0)) throw new Error(`--stop ${v}: a JSON list must hold non-empty strings`);
        stops.push(...list);
        return;
      }
    }
    if (v.length === 0) throw new Error("--stop: the stop string is empty");
    stops.push(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--stop") {
      if (i + 1 >= argv.length) throw new Error("--stop needs a value");
      add(argv[++i]!);
    } else if (a.startsWith("--stop=")) add(a.slice("--stop=".length));
    else rest.push(a);
  }
  return { rest, stops };
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
  const { rest, stops } = extractStops(argv);
  const flags = parseFlags(rest, FLAGS, "generate");
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const modelDir = requireDir(flags.model, "--model", HELP);
  const adapterDir = flags.adapter === undefined ? undefined : requireDir(flags.adapter, "--adapter", HELP);
  const sources = (["prompt", "messages", "ids-file"] as const).filter((k) => flags[k] !== undefined);
  if (sources.length !== 1) throw new Error(`give exactly one of --prompt, --messages, --ids-file (got ${sources.length ? sources.map((s) => `--${s}`).join(", ") : "none"})`);
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
  await Bun.write(Bun.stdout, flags.json ? JSON.stringify({ ids, text }) + "\n" : text);
  return 0;
}
