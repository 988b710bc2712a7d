/**
 * Python's `str()`, `repr()` and `json.dumps` over Jinja runtime values.
 *
 * transformers renders with Python, so whatever a template prints is Python's spelling of the
 * value: `{'a': 1}` for a dict through `|string`, `None` for a null through `|trim`, `True`
 * for a boolean, `1.0`/`1e-05` for floats, and `json.dumps` spacing for `|tojson`. The
 * JavaScript library spells these the JavaScript way; a model trained on one spelling and
 * served the other sees a prompt it never saw in training, so we reproduce Python exactly.
 */
import {
  ArrayValue,
  BooleanValue,
  FloatValue,
  IntegerValue,
  NamespaceValue,
  NullValue,
  ObjectValue,
  StringValue,
  TupleValue,
  UndefinedValue,
  type AnyRuntimeValue,
} from "@huggingface/jinja";

/** Python `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from 1e16. */
export function pythonFloatRepr(value: number): string {
  if (Number.isNaN(value)) return "nan";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa, expText] = value.toExponential().split("e") as [string, string];
  const exponent = Number(expText);
  if (exponent < -4 || exponent >= 16) {
    const sign = exponent < 0 ? "-" : "+";
    return `${mantissa}e${sign}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  const plain = value.toFixed(Math.max(0, -exponent + (mantissa.replace(/^-?\d\.?/, "").length)));
  return plain.includes(".") ? plain : `${plain}.0`;
}

// Python's str.isprintable() is false for these categories (the ASCII space excepted).
const NON_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** Python `repr(str)`: single quotes unless the text has ' and no ", escapes non-printables. */
export function pythonStringRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    if (ch === quote || ch === "\\") out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch !== " " && NON_PRINTABLE.test(ch)) {
      const code = ch.codePointAt(0)!;
      if (code < 0x100) out += "\\x" + code.toString(16).padStart(2, "0");
      else if (code < 0x10000) out += "\\u" + code.toString(16).padStart(4, "0");
      else out += "\\U" + code.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}

/** Python `repr(value)`: how a value looks inside a printed list or dict. */
export function pythonRepr(value: AnyRuntimeValue): string {
  if (value instanceof StringValue) return pythonStringRepr(value.value);
  if (value instanceof TupleValue) {
    const items = value.value.map(pythonRepr);
    return items.length === 1 ? `(${items[0]},)` : `(${items.join(", ")})`;
  }
  if (value instanceof ArrayValue) return `[${value.value.map(pythonRepr).join(", ")}]`;
  if (value instanceof ObjectValue) {
    const entries = [...value.value].map(([k, v]) => `${pythonStringRepr(k)}: ${pythonRepr(v)}`);
    return `{${entries.join(", ")}}`;
  }
  if (value instanceof NamespaceValue) {
    const entries = [...value.value].map(([k, v]) => `${k}=${pythonRepr(v)}`);
    return `<Namespace {${entries.join(", ")}}>`;
  }
  return pythonStr(value);
}

/** Python `str(value)` as Jinja2's `|string` and `|trim` see it; Undefined prints as "". */
export function pythonStr(value: AnyRuntimeValue): string {
  if (value instanceof StringValue) return value.value;
  if (value instanceof BooleanValue) return value.value ? "True" : "False";
  if (value instanceof IntegerValue) return String(value.value);
  if (value instanceof FloatValue) return pythonFloatRepr(value.value);
  if (value instanceof NullValue) return "None";
  if (value instanceof UndefinedValue) return "";
  if (value instanceof ArrayValue || value instanceof ObjectValue || value instanceof NamespaceValue) {
    return pythonRepr(value);
  }
  throw new TypeError(`cannot convert ${value.type} to a string`);
}

export interface JsonDumpsOptions {
  /** `None`: one line. A number or string: newline plus that indent per level. */
  indent?: number | string | null;
  /** `[item, key]` separators; Python's default is `[", ", ": "]`, or `[",", ": "]` with indent. */
  separators?: [string, string] | null;
  sortKeys?: boolean;
  /** Python's default is true; transformers' tojson passes false. */
  ensureAscii?: boolean;
}

function jsonString(text: string, ensureAscii: boolean): string {
  // JSON.stringify escapes exactly the set Python escapes with ensure_ascii=False
  // (", \, and control characters below 0x20, with the same short forms).
  const escaped = JSON.stringify(text);
  if (!ensureAscii) return escaped;
  return escaped.replace(/[\u007f-\uffff]/g, (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"));
}

/** Python `json.dumps(value, ...)` over runtime values, key order kept. */
export function pythonJsonDumps(value: AnyRuntimeValue, options: JsonDumpsOptions = {}): string {
  const indentUnit =
    options.indent === undefined || options.indent === null
      ? null
      : typeof options.indent === "number"
        ? " ".repeat(options.indent)
        : options.indent;
  const [itemSep, keySep] = options.separators ?? (indentUnit === null ? [", ", ": "] : [",", ": "]);
  const ensureAscii = options.ensureAscii ?? false;

  const dump = (v: AnyRuntimeValue, depth: number): string => {
    if (v instanceof NullValue) return "null";
    if (v instanceof BooleanValue) return v.value ? "true" : "false";
    if (v instanceof IntegerValue) return String(v.value);
    if (v instanceof FloatValue) {
      if (Number.isNaN(v.value)) return "NaN";
      if (!Number.isFinite(v.value)) return v.value > 0 ? "Infinity" : "-Infinity";
      return pythonFloatRepr(v.value);
    }
    if (v instanceof StringValue) return jsonString(v.value, ensureAscii);
    let open: string, close: string, parts: string[];
    if (v instanceof ArrayValue) {
      [open, close] = ["[", "]"];
      parts = v.value.map((item) => dump(item, depth + 1));
    } else if (v instanceof ObjectValue) {
      [open, close] = ["{", "}"];
      let entries = [...v.value];
      if (options.sortKeys) entries = entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      parts = entries.map(([k, item]) => jsonString(k, ensureAscii) + keySep + dump(item, depth + 1));
    } else {
      throw new TypeError(`Object of type ${v.type.replace(/Value$/, "")} is not JSON serializable`);
    }
    if (parts.length === 0) return open + close;
    if (indentUnit === null) return open + parts.join(itemSep) + close;
    const inner = "\n" + indentUnit.repeat(depth + 1);
    return open + inner + parts.join(itemSep + inner) + "\n" + indentUnit.repeat(depth) + close;
  };
  return dump(value, 0);
}
