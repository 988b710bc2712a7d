/**
 * `bun run template -- --template FILE --input FILE`: render a chat template the way the
 * trainer and server do, for checking a template by hand or against Python. The input is a
 * JSON object of template variables plus an optional `now` (ISO date-time for strftime_now).
 * stdout gets exactly the rendering, nothing added, so it can be diffed byte for byte.
 * A template error (including raise_exception) exits 2 with its message on stderr.
 */
import { readFileSync } from "node:fs";
import { TemplateError, renderChatTemplate, type ChatTemplateVariables } from "@tuneloom/chat-template";
import { type CommandSpec, UsageError, parseFlags } from "../args.ts";

const SPEC = {
  name: "template",
  usage: "--template FILE --input FILE",
  description: "Renders a chat template exactly as transformers' apply_chat_template would. stdout gets the rendering, nothing added;\na template error exits 2 with its message on stderr.",
  flags: {
    template: { type: "string", arg: "FILE", help: "the Jinja chat template (e.g. a chat_template.jinja)" },
    input: { type: "string", arg: "FILE", help: "JSON object of template variables (messages, tools, add_generation_prompt, ...) plus optional now (ISO date-time)" },
  },
} as const satisfies CommandSpec;

export async function run(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  if (!flags.template || !flags.input) throw new UsageError(`usage: template ${SPEC.usage}`);

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
