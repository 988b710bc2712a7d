/**
 * `bun run perplexity -- --model DIR [--adapter DIR] (--text-file F | --ids-file F | --data F) [--max-length N]`
 * prints `{"tokens":N,"nll":x,"ppl":y}`: the mean next-token negative log-likelihood (nats) under
 * the model (with the adapter, if given) and its exponential. With --data, the tokens scored are
 * the target tokens of an SFT/chat dataset, tokenized exactly as training tokenizes it (the
 * adapter's template, assistant-only labels): the number training's eval loss reports.
 */
import { readFileSync } from "node:fs";
import { resolveServingTemplate } from "@tuneloom/model";
import { DataLoader, loadJsonl, sumNll, tokenizeDataset } from "@tuneloom/trainer";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";
import { ADAPTER_FLAG, MODEL_FLAG, requireDir, requireModelDir } from "../model-flags.ts";
import { loadModelAndAdapter, readIdsFile } from "./generate.ts";

const SPEC = {
  name: "perplexity",
  usage: "--model DIR [--adapter DIR] (--text-file FILE | --ids-file FILE | --data FILE) [--max-length N]",
  description: `Prints {"tokens":N,"nll":mean next-token NLL in nats,"ppl":exp(nll)}.
A text longer than --max-length is split into consecutive windows WITHOUT overlap: each window starts from an empty
context and its last token predicts the next window's first, so every token but the first is predicted once.`,
  flags: {
    model: MODEL_FLAG,
    adapter: ADAPTER_FLAG,
    "text-file": { type: "string", arg: "FILE", help: "UTF-8 text, tokenized as is (BOS if the tokenizer's config says so; no chat template)" },
    "ids-file": { type: "string", arg: "FILE", help: "JSON array of token ids" },
    data: {
      type: "string", arg: "FILE", aliases: ["eval-data"],
      help: "training-format data (JSONL or JSON array: messages, prompt/completion, text): scores the target tokens, tokenized as train does",
    },
    "max-length": { type: "number", help: "window length; with --data, examples are cut to it as in training (default min(max_position_embeddings, 2048))" },
    "batch-size": { type: "number", help: "--data: examples per GPU call", default: 8 },
  },
} as const satisfies CommandSpec;

/** Windows per GPU call: packed into one batch (sequence ids keep them apart) of at most this many tokens. */
const BATCH_TOKENS = 4096;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  const modelDir = requireModelDir(flags.model);
  const adapterDir = flags.adapter === undefined ? undefined : requireDir(flags.adapter, "--adapter");
  const sources = (["text-file", "ids-file", "data"] as const).filter((k) => flags[k] !== undefined);
  if (sources.length !== 1) throw new UsageError("give exactly one of --text-file, --ids-file, --data");
  const batchSize = flags["batch-size"] ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError(`--batch-size must be a positive integer, got ${batchSize}`);
  let text: string | undefined;
  if (flags["text-file"] !== undefined) {
    try {
      text = readFileSync(flags["text-file"], "utf8");
    } catch {
      throw new Error(`--text-file ${flags["text-file"]}: cannot read the file`);
    }
  }
  // Data rows are read and validated before the model is loaded.
  const rows = flags.data !== undefined ? loadJsonl(flags.data).rows : undefined;

  const { model, lora, tokenizer } = await loadModelAndAdapter(modelDir, adapterDir);
  const maxLength = flags["max-length"] ?? Math.min(model.cfg.maxPositionEmbeddings, 2048);
  if (!Number.isInteger(maxLength) || maxLength < 2 || maxLength > model.cfg.maxPositionEmbeddings) {
    throw new Error(`--max-length must be an integer in 2..${model.cfg.maxPositionEmbeddings} (max_position_embeddings), got ${maxLength}`);
  }
  let sum = 0, count = 0;
  if (rows) {
    const template = resolveServingTemplate(modelDir, adapterDir);
    const set = tokenizeDataset(rows, { template: template.source, specialTokens: template.specialTokens, tokenizer, maxLength });
    for (const w of set.warnings) console.error(`warning: ${w}`);
    ({ sum, count } = await sumNll(model, DataLoader.evalBatches(set.examples, { mode: "pad", batchSize, maxLength, padId: tokenizer.padId ?? tokenizer.eosId ?? 0 }), lora));
  } else {
    const ids = text !== undefined ? tokenizer.encode(text).ids : readIdsFile(flags["ids-file"]!, model.cfg.vocabSize);
    if (ids.length < 2) throw new Error(`the text has ${ids.length} token(s); perplexity needs at least 2`);
    const perBatch = Math.max(1, Math.floor(Math.max(BATCH_TOKENS, maxLength) / maxLength)) * maxLength;
    for (let start = 0; start < ids.length; start += perBatch) {
      const end = Math.min(ids.length, start + perBatch);
      const T = end - start;
      const positions = new Int32Array(T), seqIds = new Int32Array(T), labels = new Int32Array(T);
      for (let t = 0; t < T; t++) {
        const i = start + t;
        positions[t] = i % maxLength;
        seqIds[t] = Math.floor(i / maxLength);
        labels[t] = i + 1 < ids.length ? ids[i + 1]! : -100; // shifted target; the last token predicts nothing
      }
      const out = await model.nll(Int32Array.from(ids.slice(start, end)), positions, seqIds, labels, lora);
      for (let t = 0; t < T; t++) if (labels[t]! >= 0) sum += out.perToken[t]!;
      count += out.count;
    }
  }
  const nll = sum / count;
  await Bun.write(Bun.stdout, JSON.stringify({ tokens: count, nll, ppl: Math.exp(nll) }) + "\n");
  return 0;
}
