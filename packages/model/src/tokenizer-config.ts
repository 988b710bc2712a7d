/**
 * tokenizer_config.json, read one way for the tokenizer and the chat template: optional (a
 * missing file is `{}`), a JSON object, special tokens as strings or AddedToken objects.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ModelFileError } from "./config.ts";

export type Json = Record<string, unknown>;

/** A JSON object file; errors name the file. */
export function readJsonObject(path: string): Json {
  try {
    const v = JSON.parse(readFileSync(path, "utf8"));
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Json;
  } catch (e) {
    throw new ModelFileError(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

/** `<dir>/tokenizer_config.json`, or `{}` when the directory has none. */
export function readTokenizerConfig(dir: string): { config: Json; file: string } {
  const file = join(dir, "tokenizer_config.json");
  return { config: existsSync(file) ? readJsonObject(file) : {}, file };
}

/** A special-token entry of tokenizer_config.json: a string, an AddedToken object `{content}`, or null. */
export function specialTokenContent(config: Json, field: string, source: string): string | null {
  const v = config[field];
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  throw new ModelFileError(`${source}: field '${field}': expected a string or an object with 'content'`);
}
