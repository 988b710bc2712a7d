// generation_config.json: the sampling defaults and stop ids a checkpoint ships with. The file is
// optional (many fine-tunes lack it); when present it is validated like config.json.
import { z } from "zod";
import { join } from "node:path";
import { existsSync, readFileSync } from "node:fs";
import { ModelFileError, formatZodIssues } from "./config.ts";

export interface GenerationConfig {
  bosTokenId: number | null;
  /** Generation stops at any of these; `eos_token_id` may be one id or a list. */
  eosTokenIds: number[];
  padTokenId: number | null;
  doSample: boolean | null;
  temperature: number | null;
  topP: number | null;
  topK: number | null;
  minP: number | null;
  repetitionPenalty: number | null;
  maxNewTokens: number | null;
  maxLength: number | null;
}

const tokenId = z.number().int().nonnegative();
const generationConfigSchema = z.looseObject({
  bos_token_id: tokenId.nullish(),
  eos_token_id: z.union([tokenId, z.array(tokenId)]).nullish(),
  pad_token_id: tokenId.nullish(),
  do_sample: z.boolean().nullish(),
  temperature: z.number().nonnegative().nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  top_k: z.number().int().nonnegative().nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().positive().nullish(),
  max_new_tokens: z.number().int().positive().nullish(),
  max_length: z.number().int().positive().nullish(),
});

export function parseGenerationConfig(json: unknown, source = "generation_config.json"): GenerationConfig {
  const parsed = generationConfigSchema.safeParse(json);
  if (!parsed.success) throw new ModelFileError(formatZodIssues(source, parsed.error));
  const g = parsed.data;
  const eos = g.eos_token_id;
  return {
    bosTokenId: g.bos_token_id ?? null,
    eosTokenIds: eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos],
    padTokenId: g.pad_token_id ?? null,
    doSample: g.do_sample ?? null,
    temperature: g.temperature ?? null,
    topP: g.top_p ?? null,
    topK: g.top_k ?? null,
    minP: g.min_p ?? null,
    repetitionPenalty: g.repetition_penalty ?? null,
    maxNewTokens: g.max_new_tokens ?? null,
    maxLength: g.max_length ?? null,
  };
}

/** `<dir>/generation_config.json`, or null when the model has none. */
export function loadGenerationConfig(dir: string): GenerationConfig | null {
  const path = join(dir, "generation_config.json");
  if (!existsSync(path)) return null;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new ModelFileError(`${path}: invalid JSON (${(e as Error).message})`);
  }
  return parseGenerationConfig(json, path);
}

/** GenerationConfig → generation_config.json object (null fields left out, as transformers does). */
export function toGenerationConfigJson(g: GenerationConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const put = (key: string, v: unknown) => {
    if (v !== null) out[key] = v;
  };
  put("bos_token_id", g.bosTokenId);
  put("eos_token_id", g.eosTokenIds.length === 0 ? null : g.eosTokenIds.length === 1 ? g.eosTokenIds[0] : g.eosTokenIds);
  put("pad_token_id", g.padTokenId);
  put("do_sample", g.doSample);
  put("temperature", g.temperature);
  put("top_p", g.topP);
  put("top_k", g.topK);
  put("min_p", g.minP);
  put("repetition_penalty", g.repetitionPenalty);
  put("max_new_tokens", g.maxNewTokens);
  put("max_length", g.maxLength);
  return out;
}

/**
 * Every id that ends generation: config.json's eos ids, generation_config.json's, and the tokenizer's
 * eos token (chat models often stop on <|im_end|> / <|eot_id|> listed in only one of them). Sorted, unique.
 */
export function stopTokenIds(modelEos: readonly number[], generation: GenerationConfig | null, tokenizerEosId: number | null): number[] {
  const ids = new Set<number>([...modelEos, ...(generation?.eosTokenIds ?? [])]);
  if (tokenizerEosId !== null) ids.add(tokenizerEosId);
  return [...ids].sort((a, b) => a - b);
}
