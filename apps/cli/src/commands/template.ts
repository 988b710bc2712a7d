/**
 * `bun run template -- --template FILE --input FILE`: render a chat template the way the
 * trainer and server do, for checking a template by hand or against Python. The input is a
 * JSON object of template variables plus an optional `now` (ISO date-time for strftime_now).
 * stdout gets exactly the rendering, nothing added, so it can be diffed byte for byte.
 * A template error (including raise_exception) exits 2 with its message on stderr.
 */
import { readFileSync } from "node:fs";
import { TemplateError, renderChatTemplate, type ChatTemplateVariables } from "@tuneloom/chat-template";
import { parseFlags } from "../args.ts";

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, { template: "string", input: "string" }, "template");
  if (!flags.template || !flags.input) throw new Error("usage: template --template FILE --input FILE");

  const source = readFileSync(flags.template, "utf8");
  const input: unknown = JSON.parse(readFileSync(flags.input, "utf8"));
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    throw new Error(`${flags.input} must hold a JSON object of template variables`);
  }
  const { now, ...variables } = input as Record<string, unknown>;
  if (now !== undefined && typeof now !== "string") throw new Error("'now' must be an ISO date-time string");

  let rendered: string;
  try {
    rendered = renderChatTemplate(source, variables as ChatTemplateVariables, { now });
  } catch (err) {
    if (!(err instanceof TemplateError)) throw err;
    process.stderr.write(`${err.message}\n`);
    return 2;
  }
  // Bun.write resolves once every byte is out, so main's process.exit cannot truncate it.
  await Bun.write(Bun.stdout, rendered);
  return 0;
}
