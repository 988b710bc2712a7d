/**
 * The one argument layer of every command, on node:util `parseArgs` (tokens mode, so we see each
 * flag as written). A command declares its flags once (type, one help line, the default it
 * applies, aliases); from that declaration come parsing, `--help`/`-h`, and the messages:
 *
 *   --name value, --name=value; booleans as --flag, --no-flag, --flag=false or --flag false (as
 *   HfArgumentParser takes them); a "list" flag may be repeated, every other flag only once;
 *   `--snake_case` is the same flag as `--snake-case`; an unknown flag says "did you mean --x".
 *
 * Numbers are converted here (a non-number is refused with the flag's name); ranges and enums are
 * the command's to check (train checks flags and config together in one schema).
 */
import { parseArgs } from "node:util";
import pkg from "../package.json" with { type: "json" };

export type FlagType = "string" | "number" | "boolean" | "list";

export interface FlagDef {
  type: FlagType;
  /** One line for --help. */
  help: string;
  /** The value the command uses when the flag is absent, shown by --help. */
  default?: string | number | boolean;
  /** Placeholder in --help (`DIR`, `FILE`, `N`). */
  arg?: string;
  /** Other spellings (kebab-case): TRL/PEFT/Axolotl names. Snake case of each is accepted too. */
  aliases?: readonly string[];
}

export type FlagDefs = Record<string, FlagDef>;

export interface CommandSpec<F extends FlagDefs = FlagDefs> {
  name: string;
  /** After `tuneloom <name> `: e.g. `--model DIR [--adapter DIR] --prompt TEXT`. */
  usage: string;
  /** A few lines under the usage line. */
  description?: string;
  flags: F;
  /** Lines after the flag list. */
  footer?: string;
}

type FlagValue<D extends FlagDef> = D["type"] extends "number" ? number : D["type"] extends "boolean" ? boolean : D["type"] extends "list" ? string[] : string;
export type ParsedFlags<F extends FlagDefs> = { -readonly [K in keyof F]?: FlagValue<F[K]> };

/** A problem with how the command was called: main prints it as one line and exits 1. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** --help or --version: main prints `text` on stdout and exits 0. */
export class PrintAndExit {
  constructor(readonly text: string) {}
}

export const VERSION: string = pkg.version;

/** `learning_rate`, `learningRate`, `learning-rate` → `learning-rate`. */
export function kebab(name: string): string {
  return name.replace(/_/g, "-").replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase();
}

/** Levenshtein distance, for "did you mean". */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** The closest of `names` to `name` when it is close enough to be a typo, else null. */
export function closest(name: string, names: Iterable<string>): string | null {
  let best: string | null = null, bestD = Infinity;
  for (const n of names) {
    const d = editDistance(name, n);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return best !== null && bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : null;
}

/** Every accepted spelling (kebab-case) → the canonical flag name. */
export function nameTable(flags: FlagDefs): Map<string, string> {
  const table = new Map<string, string>();
  for (const [name, def] of Object.entries(flags)) {
    for (const n of [name, ...(def.aliases ?? [])]) table.set(kebab(n), name);
  }
  return table;
}

const BOOLEAN_WORDS: Record<string, boolean> = { true: true, false: false, "1": true, "0": false, yes: true, no: false };

function placeholder(def: FlagDef): string {
  if (def.type === "boolean") return "";
  return ` ${def.arg ?? (def.type === "number" ? "N" : "VALUE")}`;
}

/** The --help text: usage, description, every flag with its default and aliases. */
export function helpText(spec: CommandSpec): string {
  const rows: [string, string][] = Object.entries(spec.flags).map(([name, def]) => {
    const extras: string[] = [];
    if (def.default !== undefined) extras.push(`default: ${def.default}`);
    if (def.type === "list") extras.push("repeatable");
    if (def.aliases?.length) extras.push(`also ${def.aliases.map((a) => `--${a}`).join(", ")}`);
    return [`--${name}${placeholder(def)}`, `${def.help}${extras.length ? ` (${extras.join("; ")})` : ""}`];
  });
  rows.push(["-h, --help", "show this help and exit"], ["--version", "print the version and exit"]);
  const width = Math.min(30, Math.max(...rows.map(([l]) => l.length)) + 2);
  const lines = [`usage: tuneloom ${spec.name} ${spec.usage}`.trimEnd(), `       (from the repo: bun run ${spec.name} -- ...)`];
  if (spec.description) lines.push("", spec.description);
  lines.push("", "flags:");
  for (const [left, right] of rows) lines.push(left.length + 2 > width ? `  ${left}\n  ${" ".repeat(width)}${right}` : `  ${left.padEnd(width)}${right}`);
  if (spec.footer) lines.push("", spec.footer);
  lines.push("", "Flags take --name value or --name=value; --snake_case names work too. Defaults are what applies when the flag is absent.");
  return lines.join("\n");
}

export interface ParseResult<F extends FlagDefs> {
  flags: ParsedFlags<F>;
  /** How each given flag was written (`--learning-rate`), for messages. */
  written: { [K in keyof F]?: string };
}

/**
 * Parses argv against a command's flags. Throws UsageError for anything wrong, PrintAndExit for
 * --help/-h/--version.
 */
export function parseCommandLine<F extends FlagDefs>(argv: string[], spec: CommandSpec<F>): ParseResult<F> {
  const table = nameTable(spec.flags);
  const lookup = (raw: string): { name: string; negated: boolean } | null => {
    const k = kebab(raw);
    if (table.has(k)) return { name: table.get(k)!, negated: false };
    if (k.startsWith("no-") && table.has(k.slice(3)) && spec.flags[table.get(k.slice(3))!]!.type === "boolean") {
      return { name: table.get(k.slice(3))!, negated: true };
    }
    return null;
  };
  // Every known spelling that takes a value is declared a string so parseArgs consumes the value
  // (even one starting with "-", as "--lr -0.01": the range check then names the problem).
  const options: Record<string, { type: "string" | "boolean"; multiple: true; short?: string }> = {
    help: { type: "boolean", multiple: true, short: "h" },
    version: { type: "boolean", multiple: true },
  };
  for (const raw of argv) {
    const m = /^--([^=]+)/.exec(raw);
    const hit = m ? lookup(m[1]!) : null;
    if (m && hit && !hit.negated) options[m[1]!] = { type: spec.flags[hit.name]!.type === "boolean" ? "boolean" : "string", multiple: true };
  }
  const { tokens } = parseArgs({ args: argv, options, strict: false, allowPositionals: true, tokens: true });
  const flags: Record<string, unknown> = {};
  const written: Record<string, string> = {};
  const cmd = `'${spec.name}'`;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.kind === "option-terminator") throw new UsageError(`unexpected '--' for ${cmd} (flags start with --)`);
    if (t.kind === "positional") throw new UsageError(`unexpected argument '${t.value}' for ${cmd} (flags start with --; see --help)`);
    if (t.name === "help" || t.name === "h") throw new PrintAndExit(helpText(spec));
    if (t.name === "version") throw new PrintAndExit(`tuneloom ${VERSION}`);
    const hit = t.rawName.startsWith("--") ? lookup(t.name) : null;
    if (!hit) {
      const suggestion = closest(kebab(t.name), table.keys());
      throw new UsageError(`unknown flag ${t.rawName} for ${cmd}${suggestion ? ` (did you mean --${suggestion}?)` : ""}; see --help`);
    }
    const { name } = hit;
    const def = spec.flags[name]!;
    const shown = t.rawName;
    if (def.type !== "list" && name in flags) {
      throw new UsageError(written[name] === shown ? `${shown} given twice` : `${shown} given twice (also as ${written[name]})`);
    }
    written[name] ??= shown;
    if (def.type === "boolean") {
      let value = !hit.negated;
      const next = tokens[i + 1];
      const word = t.value ?? (next?.kind === "positional" && next.value.toLowerCase() in BOOLEAN_WORDS ? (i++, next.value) : undefined);
      if (word !== undefined) {
        if (hit.negated || !(word.toLowerCase() in BOOLEAN_WORDS)) throw new UsageError(`${shown} takes no value or true/false, got '${word}'`);
        value = BOOLEAN_WORDS[word.toLowerCase()]!;
      }
      flags[name] = value;
      continue;
    }
    const value = t.value;
    if (value === undefined || (!t.inlineValue && /^--[a-zA-Z]/.test(value) && lookup(value.slice(2).split("=")[0]!))) {
      throw new UsageError(`${shown} needs a value${placeholder(def)}`);
    }
    if (def.type === "number") {
      const n = value.trim() === "" ? Number.NaN : Number(value);
      if (!Number.isFinite(n)) throw new UsageError(`${shown} must be a number, got '${value}'`);
      flags[name] = n;
    } else if (def.type === "list") {
      (flags[name] ??= [] as string[]) as string[];
      (flags[name] as string[]).push(value);
    } else flags[name] = value;
  }
  return { flags: flags as ParsedFlags<F>, written: written as ParseResult<F>["written"] };
}

/** parseCommandLine for commands that need only the values. */
export function parseFlags<F extends FlagDefs>(argv: string[], spec: CommandSpec<F>): ParsedFlags<F> {
  return parseCommandLine(argv, spec).flags;
}
