// Assistant masks on every fixture family: each assistant turn's span runs from the end of
// the generation prompt through its end-of-turn marker, nothing of other roles inside.
import { expect, test } from "bun:test";
import { PrefixPropertyError, assistantSpans, tokenMaskFromSpans } from "@tuneloom/chat-template";
import { caseVariables, templateFiles, templateSource, trainingCases } from "./golden-fixtures.ts";

/** The marker(s) a family's assistant turn ends with. */
const END_OF_TURN: Record<string, string[]> = {
  "CohereForAI-c4ai-command-r-plus-tool_use.jinja": ["<|END_OF_TURN_TOKEN|>"],
  "HuggingFaceTB-SmolLM3-3B.jinja": ["<|im_end|>"],
  "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": ["<|im_end|>"],
  "Qwen-Qwen2.5-7B-Instruct.jinja": ["<|im_end|>"],
  "Qwen-Qwen3-0.6B.jinja": ["<|im_end|>"],
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": ["<｜end▁of▁sentence｜>"],
  "google-gemma-2-2b-it.jinja": ["<end_of_turn>"],
  "ibm-granite-granite-3.3-2B-Instruct.jinja": ["<|end_of_text|>"],
  "meetkai-functionary-medium-v3.2.jinja": ["<|eot_id|>"],
  "meta-llama-Llama-3.1-8B-Instruct.jinja": ["<|eot_id|>"],
  "meta-llama-Llama-3.2-3B-Instruct.jinja": ["<|eot_id|>"],
  "microsoft-Phi-3.5-mini-instruct.jinja": ["<|end|>", "<|endoftext|>"],
  "mistralai-Mistral-Nemo-Instruct-2407.jinja": ["</s>"],
  "openai-gpt-oss-120b.jinja": ["<|return|>", "<|call|>", "<|end|>"],
};

/**
 * Turns whose span cannot be cut because the template renders them differently later on
 * (docs/chat-templates.md): case id → skipped message indices.
 */
const UNSTABLE_TURNS: Record<string, number[]> = {
  "mistralai-Mistral-Nemo-Instruct-2407__train_single__nogen": [2],
  "microsoft-Phi-3.5-mini-instruct__train_multi__nogen": [1],
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__train_single__nogen": [2],
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__train_multi__nogen": [1, 3],
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__long_content__nogen": [1],
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__tool_roundtrip_openai_wire__nogen": [1],
  "NousResearch-Hermes-3-Llama-3.1-8B-tool_use__tool_roundtrip__nogen": [3],
  "NousResearch-Hermes-3-Llama-3.1-8B-tool_use__tool_roundtrip_openai_wire__nogen": [3],
  "CohereForAI-c4ai-command-r-plus-tool_use__train_single__nogen": [2],
  "CohereForAI-c4ai-command-r-plus-tool_use__train_multi__nogen": [1, 3],
  "CohereForAI-c4ai-command-r-plus-tool_use__long_content__nogen": [1],
  "CohereForAI-c4ai-command-r-plus-tool_use__tool_roundtrip__nogen": [1, 3],
  "CohereForAI-c4ai-command-r-plus-tool_use__tool_roundtrip_openai_wire__nogen": [1, 3],
  "Qwen-Qwen3-0.6B__train_multi__nogen": [1],
  "openai-gpt-oss-120b__train_multi__nogen": [1],
};

const cases = trainingCases();

test("masks are exercised on all 14 families", () => {
  const masked = new Set(
    cases.filter((c) => (UNSTABLE_TURNS[c.id]?.length ?? 0) < c.messages.filter((m) => m.role === "assistant").length).map((c) => c.template_file),
  );
  expect(masked.size).toBe(templateFiles.length - 1); // Command R+ tool_use never masks: its prompt adds a system turn
});

for (const c of cases) {
  test(`assistant spans: ${c.id}`, () => {
    const source = templateSource(c.template_file);
    const { text, spans, skipped } = assistantSpans(source, caseVariables(c), { now: c.now, onViolation: "skip" });
    expect(text).toBe(c.expected!);
    expect(skipped).toEqual(UNSTABLE_TURNS[c.id] ?? []);
    const assistantIndices = c.messages.flatMap((m, i) => (m.role === "assistant" ? [i] : []));
    expect(spans.map((s) => s.messageIndex)).toEqual(assistantIndices.filter((i) => !skipped.includes(i)));

    let previousEnd = 0;
    for (const span of spans) {
      expect(span.start).toBeGreaterThanOrEqual(previousEnd);
      previousEnd = span.end;
      const turn = text.slice(span.start, span.end);
      expect(END_OF_TURN[c.template_file]!.some((marker) => turn.endsWith(marker))).toBe(true);
      const content = c.messages[span.messageIndex]!.content;
      if (typeof content === "string" && content.trim() !== "") expect(turn).toContain(content.trim());
      // Nothing the user or a tool said is inside an assistant span.
      for (const m of c.messages) {
        if (m.role !== "assistant" && typeof m.content === "string" && m.content.length > 8) expect(turn).not.toContain(m.content);
      }
    }

    if (skipped.length > 0) {
      expect(() => assistantSpans(source, caseVariables(c), { now: c.now })).toThrow(PrefixPropertyError);
    }
  });
}

test("character spans become a token mask given per-token offsets", () => {
  const c = cases.find((x) => x.id === "Qwen-Qwen2.5-7B-Instruct__train_multi__nogen")!;
  const { text, spans } = assistantSpans(templateSource(c.template_file), caseVariables(c), { now: c.now });
  // A toy tokenizer: special tokens whole, then runs of word characters, then single characters.
  const offsets: [number, number][] = [[0, 0]]; // a BOS the tokenizer prepends, covering no text
  for (const m of text.matchAll(/<\|[a-z_]+\|>|\w+|[^]/gu)) offsets.push([m.index!, m.index! + m[0].length]);
  const mask = tokenMaskFromSpans(spans, offsets);
  const maskedText = offsets.filter((_, t) => mask[t] === 1).map(([s, e]) => text.slice(s, e)).join("");
  expect(maskedText).toBe("2 + 2 = 4.<|im_end|>4 × 3 = 12.<|im_end|>");
  expect(mask[0]).toBe(0);
});
