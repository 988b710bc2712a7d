// --model and --adapter, shared by generate, perplexity, merge and serve: one definition, one resolution.
import { existsSync, statSync } from "node:fs";
import { resolveModelDir } from "@tuneloom/model";
import { type FlagDef, UsageError } from "./args.ts";

export const MODEL_FLAG = {
  type: "string", arg: "DIR|ORG/NAME", aliases: ["model-name-or-path"],
  help: "base model: a Hugging Face directory, or a repo id found in the local HF cache (never downloaded)",
} as const satisfies FlagDef;

export const ADAPTER_FLAG = { type: "string", arg: "DIR", help: "LoRA adapter directory (PEFT layout), e.g. OUT/adapter from train" } as const satisfies FlagDef;

/** A directory flag's value, checked to exist. */
export function requireDir(dir: string | undefined, flag: string): string {
  if (!dir) throw new UsageError(`${flag} is required (see --help)`);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${flag} ${dir}: directory not found`);
  return dir;
}

/** --model as a directory: a path, or a repo id resolved in the local Hugging Face cache. */
export function requireModelDir(model: string | undefined): string {
  if (!model) throw new UsageError("--model is required (see --help)");
  return resolveModelDir(model);
}
