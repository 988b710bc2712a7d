/**
 * Filters that behave as in Python Jinja2 3.1 where @huggingface/jinja differs, registered
 * through the `environment.filters` hook (see patches/@huggingface%2Fjinja@0.5.11.patch).
 *
 * Each one exists because a real chat template depends on it: `reject` (Llama 3.1 builtin
 * tools), `string` over dicts (SmolLM3 tool calls) and over Undefined (Granite documents),
 * `trim` over None (Command R+ tool calls with null content), `tojson` with Python spacing.
 */
import {
  ArrayValue,
  Environment,
  FunctionValue,
  IntegerValue,
  NullValue,
  ObjectValue,
  StringValue,
  TupleValue,
  UndefinedValue,
  type AnyRuntimeValue,
  type CustomFilter,
} from "@huggingface/jinja";
import { pythonJsonDumps, pythonStr, type JsonDumpsOptions } from "./python-values.ts";

/**
 * Python `str.strip(chars)`, delegating to the patched `str.strip` builtin so there is one
 * definition of Python whitespace; `chars` undefined strips whitespace.
 */
export function pythonStrip(text: string, chars?: string): string {
  const strip = new StringValue(text).builtins.get("strip") as FunctionValue;
  const result = strip.value(chars === undefined ? [] : [new StringValue(chars)], new Environment());
  return (result as StringValue).value;
}

function optionalString(value: AnyRuntimeValue | undefined, what: string): string | undefined {
  if (value === undefined || value instanceof NullValue || value instanceof UndefinedValue) return undefined;
  if (!(value instanceof StringValue)) throw new TypeError(`${what} must be a string, got ${value.type}`);
  return value.value;
}

/** `x|string`: Python `str(x)` (Jinja2's soft_str); Undefined becomes "". */
const stringFilter: CustomFilter = (operand) => new StringValue(pythonStr(operand));

/** `x|trim(chars=None)`: `str(x).strip(chars)`, so None trims to "None" as in Python. */
const trimFilter: CustomFilter = (operand, args, kwargs) =>
  new StringValue(pythonStrip(pythonStr(operand), optionalString(args[0] ?? kwargs.get("chars"), "trim chars")));

/** `x|tojson(indent=None, separators=None, sort_keys=False, ensure_ascii=False)`, json.dumps spacing. */
const tojsonFilter: CustomFilter = (operand, args, kwargs) => {
  const indent = args[0] ?? kwargs.get("indent");
  const options: JsonDumpsOptions = {};
  if (indent instanceof IntegerValue || indent instanceof StringValue) options.indent = indent.value;
  else if (indent !== undefined && !(indent instanceof NullValue)) throw new TypeError("tojson indent must be an integer, a string or None");
  const separators = kwargs.get("separators");
  if (separators instanceof ArrayValue) {
    const [item, key] = separators.value;
    if (separators.value.length !== 2 || !(item instanceof StringValue) || !(key instanceof StringValue)) {
      throw new TypeError("tojson separators must be a pair of strings");
    }
    options.separators = [item.value, key.value];
  } else if (separators !== undefined && !(separators instanceof NullValue)) {
    throw new TypeError("tojson separators must be a pair of strings");
  }
  const sortKeys = kwargs.get("sort_keys");
  if (sortKeys !== undefined) options.sortKeys = sortKeys.__bool__().value;
  const ensureAscii = kwargs.get("ensure_ascii");
  if (ensureAscii !== undefined) options.ensureAscii = ensureAscii.__bool__().value;
  return new StringValue(pythonJsonDumps(operand, options));
};

/** The items of anything Jinja2 can iterate: lists, tuples, dict keys, string characters. */
function iterate(operand: AnyRuntimeValue, filter: string): AnyRuntimeValue[] {
  if (operand instanceof ArrayValue) return operand.value;
  if (operand instanceof ObjectValue) return [...operand.value.keys()].map((k) => new StringValue(k));
  if (operand instanceof StringValue) return Array.from(operand.value, (ch) => new StringValue(ch));
  if (operand instanceof UndefinedValue) return [];
  throw new TypeError(`'${operand.type}' object is not iterable (in |${filter})`);
}

/** `select`/`reject(test, *args)`: keep (or drop) the items the named test accepts; no test = truthiness. */
function selectOrReject(keep: boolean): CustomFilter {
  const name = keep ? "select" : "reject";
  return (operand, args, _kwargs, environment: Environment) => {
    const items = iterate(operand, name);
    const [testName, ...testArgs] = args;
    let accepts: (item: AnyRuntimeValue) => boolean;
    if (testName === undefined) accepts = (item) => item.__bool__().value;
    else {
      if (!(testName instanceof StringValue)) throw new TypeError(`${name}: the test name must be a string`);
      const test = environment.tests.get(testName.value);
      if (!test) throw new Error(`No test named '${testName.value}'`);
      accepts = (item) => test(item, ...testArgs);
    }
    return new ArrayValue(items.filter((item) => accepts(item) === keep));
  };
}

/** `d|items`: (key, value) tuples; Undefined gives nothing, as Jinja2's do_items does. */
const itemsFilter: CustomFilter = (operand) => {
  if (operand instanceof UndefinedValue) return new ArrayValue([]);
  if (!(operand instanceof ObjectValue)) throw new TypeError(`Can only get item pairs from a mapping, not ${operand.type}`);
  return new ArrayValue([...operand.value].map(([k, v]) => new TupleValue([new StringValue(k), v])));
};

/** A fresh registry per render environment, so no render can change another's filters. */
export function chatTemplateFilters(): Map<string, CustomFilter> {
  return new Map<string, CustomFilter>([
    ["string", stringFilter],
    ["trim", trimFilter],
    ["tojson", tojsonFilter],
    ["select", selectOrReject(true)],
    ["reject", selectOrReject(false)],
    ["items", itemsFilter],
  ]);
}

