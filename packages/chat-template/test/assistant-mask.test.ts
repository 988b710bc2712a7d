import { expect, test } from "bun:test";
import { PrefixPropertyError, assistantSpans, findPrefixViolations, tokenMaskFromSpans } from "../src/index.ts";

// ChatML without the trailing-newline subtlety hidden: the newline after <|im_end|> is left out.
const chatml =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const conversation = [
  { role: "user", content: "a" },
  { role: "assistant", content: "b" },
  { role: "user", content: "c" },
  { role: "assistant", content: "d " },
];

test("spans run from the end of the generation prompt through the end-of-turn marker", () => {
  const { text, spans, skipped } = assistantSpans(chatml, { messages: conversation });
  expect(skipped).toEqual([]);
  expect(spans.map((s) => text.slice(s.start, s.end))).toEqual(["b<|im_end|>", "d <|im_end|>"]);
  expect(spans.map((s) => s.messageIndex)).toEqual([1, 3]);
});

// Drops the content of every assistant turn but the last, as reasoning templates drop thinking.
const rewriting =
  "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[A]{% else %}[{{ m.role }}:{{ m.content }}]{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant:{% endif %}";

test("a template that rewrites earlier turns is refused, or its unstable turns skipped", () => {
  const vars = { messages: conversation };
  expect(findPrefixViolations(rewriting, vars).map((v) => [v.messageIndex, v.kind])).toEqual([[1, "prompt"], [1, "turn-end"]]);
  expect(() => assistantSpans(rewriting, vars)).toThrow(PrefixPropertyError);
  const { text, spans, skipped } = assistantSpans(rewriting, vars, { onViolation: "skip" });
  expect(skipped).toEqual([1]);
  expect(spans.map((s) => text.slice(s.start, s.end))).toEqual(["d ]"]);
});

test("token mask marks tokens overlapping a span, empty-range tokens never", () => {
  const spans = [{ start: 2, end: 5 }];
  const offsets: [number, number][] = [[0, 0], [0, 2], [1, 3], [3, 4], [4, 6], [5, 7], [5, 5]];
  expect([...tokenMaskFromSpans(spans, offsets)]).toEqual([0, 0, 1, 1, 1, 0, 0]);
});
