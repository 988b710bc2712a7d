/**
 * Finds the chat template of a model or adapter directory the way transformers does: a
 * `chat_template.jinja` beside tokenizer_config.json wins (transformers ≥ 4.43), else the
 * config's `chat_template`, a string or a list of {name, template}. The one reader of template
 * files: the tokenizer does not carry a template, and serving-files.ts picks which directory's.
 */
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { templateSha256 } from "@tuneloom/chat-template";
import { readTokenizerConfig, specialTokenContent } from "./tokenizer-config.ts";

export interface SpecialTokens {
  bos_token?: string;
  eos_token?: string;
  pad_token?: string;
  unk_token?: string;
}

export interface LoadedChatTemplate {
  /** Template source exactly as stored. */
  source: string;
  /** Hex sha256 of the template's UTF-8 bytes; recorded with checkpoints to prove parity. */
  sha256: string;
  /** Where it came from: a file path, or `tokenizer_config.json#<name>`. */
  origin: string;
  /** Special tokens from tokenizer_config.json, ready to pass as template variables. */
  specialTokens: SpecialTokens;
}

/** bos/eos/pad/unk token strings of `<dir>/tokenizer_config.json` (absent ones left out). */
export function loadSpecialTokens(dir: string): SpecialTokens {
  const { config, file } = readTokenizerConfig(dir);
  const specialTokens: SpecialTokens = {};
  for (const name of ["bos_token", "eos_token", "pad_token", "unk_token"] as const) {
    const content = specialTokenContent(config, name, file);
    if (content !== null) specialTokens[name] = content;
  }
  return specialTokens;
}

/**
 * `chat_template.jinja` beside tokenizer_config.json wins; otherwise `chat_template` from
 * tokenizer_config.json, a string or the named list form, where "tool_use" is picked when
 * `tools` are given and exists, else "default" (transformers' rule).
 */
export function loadChatTemplate(dir: string, options: { tools?: unknown[] | null } = {}): LoadedChatTemplate {
  const { config, file: configPath } = readTokenizerConfig(dir);
  const specialTokens = loadSpecialTokens(dir);

  const jinjaPath = path.join(dir, "chat_template.jinja");
  if (existsSync(jinjaPath)) {
    const bytes = readFileSync(jinjaPath);
    return { source: new TextDecoder().decode(bytes), sha256: templateSha256(bytes), origin: jinjaPath, specialTokens };
  }

  const stored = config.chat_template;
  let source: string;
  let origin = `${configPath}#chat_template`;
  if (typeof stored === "string") source = stored;
  else if (Array.isArray(stored)) {
    const named = new Map<string, string>();
    for (const entry of stored as { name?: unknown; template?: unknown }[]) {
      if (typeof entry?.name === "string" && typeof entry.template === "string") named.set(entry.name, entry.template);
    }
    const wantsTools = options.tools !== undefined && options.tools !== null;
    const name = wantsTools && named.has("tool_use") ? "tool_use" : "default";
    const picked = named.get(name);
    if (picked === undefined) {
      throw new Error(`${configPath}: chat_template has no "${name}" entry (has: ${[...named.keys()].join(", ") || "none"})`);
    }
    source = picked;
    origin = `${configPath}#${name}`;
  } else {
    throw new Error(`no chat template in ${dir}: add chat_template.jinja or a chat_template field to tokenizer_config.json`);
  }
  return { source, sha256: templateSha256(source), origin, specialTokens };
}
