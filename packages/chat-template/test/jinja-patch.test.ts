// The bun patch of @huggingface/jinja (patches/@huggingface%2Fjinja@0.5.11.patch): each fix
// checked on the library directly, so a version bump that drops the patch fails here first.
import { expect, test } from "bun:test";
import { Environment, Interpreter, StringValue, parse, tokenize, type CustomFilter } from "@huggingface/jinja";

function renderRaw(source: string, vars: Record<string, unknown> = {}, filters?: Map<string, CustomFilter>): string {
  const env = new Environment();
  if (filters) env.filters = filters;
  for (const [k, v] of Object.entries(vars)) env.set(k, v);
  return (new Interpreter(env).run(parse(tokenize(source, { lstrip_blocks: true, trim_blocks: true }))) as StringValue).value;
}

test("for loops unpack tuples, as in `for a, b in [('x', 'y')]`", () => {
  expect(renderRaw(`{% for a, b in [("x", "y"), ("z", "w")] %}{{ a }}={{ b }};{% endfor %}`)).toBe("x=y;z=w;");
});

test("str.strip/lstrip/rstrip take Python's chars argument", () => {
  expect(renderRaw(`{{ s.lstrip("\\n") }}|{{ s.rstrip("\\n") }}|{{ s.strip("\\nx") }}`, { s: "\n\nx a \n" })).toBe(
    "x a \n|\n\nx a | a ",
  );
  // Without chars: Python whitespace, which includes \x1c-\x1f but not the BOM JavaScript trims.
  expect(renderRaw(`[{{ s.strip() }}]`, { s: "\x1c\ufeffa\u3000" })).toBe("[\ufeffa]");
});

test("str + non-str is Python's TypeError, not JavaScript coercion", () => {
  expect(() => renderRaw(`{{ "a" + d }}`, { d: { k: 1 } })).toThrow('can only concatenate str (not "dict") to str');
  expect(() => renderRaw(`{{ 1 + "a" }}`)).toThrow("unsupported operand type(s) for +: 'int' and 'str'");
  expect(renderRaw(`{{ "a" + "b" }}`)).toBe("ab");
});

test("filters registered on the environment run before built-ins, with evaluated args and kwargs", () => {
  const seen: unknown[] = [];
  const filters = new Map<string, CustomFilter>([
    ["upper", (operand) => new StringValue(`custom:${(operand as StringValue).value}`)],
    ["shout", (operand, args, kwargs) => {
      seen.push(args.map((a) => a.value), [...kwargs].map(([k, v]) => [k, v.value]));
      return new StringValue(`${(operand as StringValue).value}!`);
    }],
  ]);
  expect(renderRaw(`{{ "x"|upper }} {{ "y"|shout(1, n=2) }}`, {}, filters)).toBe("custom:x y!");
  expect(seen).toEqual([[1], [["n", 2]]]);
  expect(renderRaw(`{{ "x"|upper }}`)).toBe("X"); // no registry: stock behaviour
});
