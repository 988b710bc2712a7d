// Minimal flag parser shared by every command: `--name value`, `--flag`, `--name=value`.
// Unknown flags are an error that lists the known ones, so typos never pass silently.
export interface FlagSpec {
  [name: string]: "string" | "number" | "boolean";
}

export type ParsedFlags<S extends FlagSpec> = {
  [K in keyof S]?: S[K] extends "string" ? string : S[K] extends "number" ? number : boolean;
};

export function parseFlags<S extends FlagSpec>(argv: string[], spec: S, command: string): ParsedFlags<S> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) throw new Error(`unexpected argument '${arg}' (flags start with --)`);
    let name = arg.slice(2);
    let value: string | undefined;
    const eq = name.indexOf("=");
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    const kind = spec[name];
    if (!kind) {
      const known = Object.keys(spec).map((k) => `--${k}`).join(", ");
      throw new Error(`unknown flag --${name} for '${command}' (known: ${known})`);
    }
    if (kind === "boolean") {
      if (value !== undefined) throw new Error(`--${name} takes no value`);
      out[name] = true;
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new Error(`--${name} needs a value`);
    }
    if (kind === "number") {
      const n = Number(value);
      if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got '${value}'`);
      out[name] = n;
    } else out[name] = value;
  }
  return out as ParsedFlags<S>;
}
