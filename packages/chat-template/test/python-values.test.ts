import { expect, test } from "bun:test";
import { convertToRuntimeValues, FloatValue } from "@huggingface/jinja";
import { pythonFloatRepr, pythonJsonDumps, pythonRepr, pythonStr, pythonStringRepr } from "../src/python-values.ts";

test("floats print as Python's repr", () => {
  expect([1.5, 0.1 + 0.2, 1e-5, 1e16, 123456789012345.6, -0.0001, 2.5e-7].map(pythonFloatRepr)).toEqual([
    "1.5", "0.30000000000000004", "1e-05", "1e+16", "123456789012345.6", "-0.0001", "2.5e-07",
  ]);
  expect(pythonStr(new FloatValue(3))).toBe("3.0");
});

test("str() of containers is Python's repr, quotes chosen as Python does", () => {
  const v = convertToRuntimeValues({ a: "it's", b: [1, true, null], c: 'say "hi"', d: "both ' \"" });
  expect(pythonStr(v)).toBe(`{'a': "it's", 'b': [1, True, None], 'c': 'say "hi"', 'd': 'both \\' "'}`);
  expect(pythonStringRepr("a\nb\t\u0001é\u2028")).toBe("'a\\nb\\t\\x01é\\u2028'");
  expect(pythonRepr(convertToRuntimeValues([]))).toBe("[]");
  expect(pythonStr(convertToRuntimeValues(undefined))).toBe("");
  expect(pythonStr(convertToRuntimeValues(null))).toBe("None");
});

test("json.dumps spacing, indent, separators, sort_keys, ensure_ascii", () => {
  const v = convertToRuntimeValues({ b: [1, 2.5, "é\n\"x\""], a: {}, c: [] });
  expect(pythonJsonDumps(v)).toBe('{"b": [1, 2.5, "é\\n\\"x\\""], "a": {}, "c": []}');
  expect(pythonJsonDumps(v, { indent: 2, sortKeys: true })).toBe('{\n  "a": {},\n  "b": [\n    1,\n    2.5,\n    "é\\n\\"x\\""\n  ],\n  "c": []\n}');
  expect(pythonJsonDumps(v, { separators: [",", ":"], ensureAscii: true })).toBe('{"b":[1,2.5,"\\u00e9\\n\\"x\\""],"a":{},"c":[]}');
  expect(() => pythonJsonDumps(convertToRuntimeValues({ x: undefined }))).toThrow("not JSON serializable");
});
