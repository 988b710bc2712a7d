/**
 * `bun run perplexity -- --model DIR [--adapter DIR] (--text-file F | --ids-file F) [--max-length N]`
 * prints `{"tokens":N,"nll":x,"ppl":y}`: the mean next-token negative log-likelihood (nats) of the
 * text under the model (with the adapter, if given) and its exponential.
 */
import { readFileSync } from "node:fs";
import { parseFlags } from "../args.ts";
import { loadModelAndAdapter, readIdsFile, requireDir } from "./generate.ts";

const HELP = `usage: perplexity --model DIR [--adapter DIR] (--text-file FILE | --ids-file FILE) [--max-length N]

  --text-file FILE   UTF-8 text, tokenized as is (the tokenizer adds BOS if its config says so; no chat template)
  --ids-file FILE    JSON array of token ids
  --max-length N     window length (default min(max_position_embeddings, 2048)). A longer text is split into
                     consecutive windows of N tokens WITHOUT overlap: each window starts from an empty context,
                     and its last token predicts the first token of the next window. Every token but the first
                     is predicted exactly once, so tokens = (number of tokens) − 1.

Prints {"tokens":N,"nll":mean next-token NLL in nats,"ppl":exp(nll)}.`;

/** Windows per GPU call: packed into one batch (sequence ids keep them apart) of at most this many tokens. */
const BATCH_TOKENS = 4096;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, { model: "string", adapter: "string", "text-file": "string", "ids-file": "string", "max-length": "number", help: "boolean" }, "perplexity");
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const modelDir = requireDir(flags.model, "--model", HELP);
  const adapterDir = flags.adapter === undefined ? undefined : requireDir(flags.adapter, "--adapter", HELP);
  if ((flags["text-file"] === undefined) === (flags["ids-file"] === undefined)) throw new Error("give exactly one of --text-file, --ids-file");
  let text: string | undefined;
  if (flags["text-file"] !== undefined) {
    try {
      text = readFileSync(flags["text-file"], "utf8");
    } catch {
      throw new Error(`--text-file ${flags["text-file"]}: cannot read the file`);
    }
  }

  const { model, lora, tokenizer } = await loadModelAndAdapter(modelDir, adapterDir);
  const ids = text !== undefined ? tokenizer.encode(text).ids : readIdsFile(flags["ids-file"]!, model.cfg.vocabSize);
  if (ids.length < 2) throw new Error(`the text has ${ids.length} token(s); perplexity needs at least 2`);
  const maxLength = flags["max-length"] ?? Math.min(model.cfg.maxPositionEmbeddings, 2048);
  if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > model.cfg.maxPositionEmbeddings) {
    throw new Error(`--max-length must be an integer in 1..${model.cfg.maxPositionEmbeddings} (max_position_embeddings), got ${maxLength}`);
  }

  let sum = 0, count = 0;
  const perBatch = Math.max(1, Math.floor(Math.max(BATCH_TOKENS, maxLength) / maxLength)) * maxLength;
  for (let start = 0; start < ids.length; start += perBatch) {
    const end = Math.min(ids.length, start + perBatch);
    const T = end - start;
    const positions = new Int32Array(T), seqIds = new Int32Array(T), labels = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      const i = start + t;
      positions[t] = (i % maxLength);
      seqIds[t] = Math.floor(i / maxLength);
      labels[t] = i + 1 < ids.length ? ids[i + 1]! : -100; // shifted target; the last token predicts nothing
    }
    const out = await model.nll(Int32Array.from(ids.slice(start, end)), positions, seqIds, labels, lora);
    for (let t = 0; t < T; t++) if (labels[t]! >= 0) sum += out.perToken[t]!;
    count += out.count;
  }
  const nll = sum / count;
  await Bun.write(Bun.stdout, JSON.stringify({ tokens: count, nll, ppl: Math.exp(nll) }) + "\n");
  return 0;
}
