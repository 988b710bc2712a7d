/**
 * `--model DIR [--adapter DIR]` → the files a model is prompted with, decided once for the
 * server and for the cli's generate, perplexity, merge and the training demo:
 *
 *   template   the adapter's chat_template.jinja (the one training used), else the model's; when
 *              the adapter's training_args.json pins chat_template_sha256 and the template found
 *              differs, TemplateMismatchError: a tuned model prompted with another template than
 *              it trained with silently degrades.
 *   tokenizer  the adapter's copy when it ships tokenizer.json, else the model's; special tokens
 *              likewise from the adapter's tokenizer_config.json when it has one.
 *   stop ids   config.json's eos ids ∪ generation_config.json's ∪ the tokenizer's eos token.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { CHAT_TEMPLATE_FILE, TRAINING_ARGS_FILE } from "./adapter-dir.ts";
import { type LoadedChatTemplate, loadChatTemplate, loadSpecialTokens } from "./chat-template-file.ts";
import type { ModelConfig } from "./config.ts";
import { loadGenerationConfig, stopTokenIds } from "./generation-config.ts";
import { loadTokenizer, type ModelTokenizer } from "./tokenizer.ts";
import { readJsonObject } from "./tokenizer-config.ts";

export class TemplateMismatchError extends Error {
  override readonly name = "TemplateMismatchError";
}

/** The chat_template.jinja to prompt with: the adapter's, else the model's; null when neither has one (the model's tokenizer_config.json may still hold the template). */
export function servingTemplateFile(modelDir: string, adapterDir?: string): string | null {
  return [adapterDir, modelDir].flatMap((d) => (d === undefined ? [] : [join(d, CHAT_TEMPLATE_FILE)])).find((f) => existsSync(f)) ?? null;
}

/** training_args.json's chat_template_sha256: the template the adapter was trained with, or null. */
function recordedTemplateSha256(adapterDir: string): string | null {
  const argsPath = join(adapterDir, TRAINING_ARGS_FILE);
  if (!existsSync(argsPath)) return null;
  const recorded = readJsonObject(argsPath).chat_template_sha256;
  return typeof recorded === "string" ? recorded : null;
}

/**
 * The template to prompt with. Throws TemplateMismatchError when the adapter's
 * training_args.json records a different sha256.
 */
export function resolveServingTemplate(modelDir: string, adapterDir?: string): LoadedChatTemplate {
  const fromAdapter = adapterDir !== undefined && servingTemplateFile(modelDir, adapterDir) === join(adapterDir, CHAT_TEMPLATE_FILE);
  const loaded = loadChatTemplate(fromAdapter ? adapterDir! : modelDir);
  // Special tokens are the model's unless the adapter ships its own tokenizer_config.json.
  const ownTokens = adapterDir !== undefined && existsSync(join(adapterDir, "tokenizer_config.json"));
  const template: LoadedChatTemplate = { ...loaded, specialTokens: loadSpecialTokens(ownTokens ? adapterDir! : modelDir) };
  const recorded = adapterDir === undefined ? null : recordedTemplateSha256(adapterDir);
  if (recorded !== null && recorded !== template.sha256)
    throw new TemplateMismatchError(
      `refusing to serve: ${join(adapterDir!, TRAINING_ARGS_FILE)} records chat_template_sha256 ${recorded}, but the template found (${template.origin}) has sha256 ${template.sha256}. ` +
        `The adapter was trained with a different chat template, and prompts rendered with another one are off the distribution it learned. ` +
        `Put the training template in ${join(adapterDir!, CHAT_TEMPLATE_FILE)}.`,
    );
  return template;
}

/**
 * For commands that do not render a conversation (raw text, token ids) but must not run an
 * adapter whose training template was edited or lost: TemplateMismatchError as resolveServingTemplate.
 */
export function checkAdapterTemplate(modelDir: string, adapterDir?: string): void {
  if (adapterDir !== undefined && recordedTemplateSha256(adapterDir) !== null) resolveServingTemplate(modelDir, adapterDir);
}

/** The directory whose tokenizer files to use: the adapter's when it ships tokenizer.json, else the model's. */
export function servingTokenizerDir(modelDir: string, adapterDir?: string): string {
  return adapterDir !== undefined && existsSync(join(adapterDir, "tokenizer.json")) ? adapterDir : modelDir;
}

/** The tokenizer to prompt with (servingTokenizerDir's). */
export function loadServingTokenizer(modelDir: string, adapterDir?: string): ModelTokenizer {
  return loadTokenizer(servingTokenizerDir(modelDir, adapterDir));
}

/** Ids that end generation: config.json's eos ids, generation_config.json's, the tokenizer's eos token. */
export function servingStopTokenIds(modelDir: string, config: Pick<ModelConfig, "eosTokenIds">, tokenizer: Pick<ModelTokenizer, "eosId">): number[] {
  return stopTokenIds(config.eosTokenIds, loadGenerationConfig(modelDir), tokenizer.eosId);
}

