// Train/serve parity at string level: for each fixture conversation ending in an assistant
// turn, the training string cut before that turn equals the serve-time prompt. Templates that
// break it on purpose are listed here and in docs/chat-templates.md with the reason; any other
// break, or one of these starting to pass, fails the suite so the docs stay true.
import { expect, test } from "bun:test";
import { checkTrainServeParity, findPrefixViolations } from "@tuneloom/chat-template";
import { caseVariables, templateFiles, templateSource, trainingCases } from "./golden-fixtures.ts";

/** case id → why the serve-time prompt differs from the training text (docs/chat-templates.md). */
const KNOWN_PARITY_BREAKS: Record<string, string> = {
  "mistralai-Mistral-Nemo-Instruct-2407__train_single__nogen": "system prompt is folded into the last user turn only",
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__train_single__nogen": "generation prompt opens <think>; training text has none",
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__train_multi__nogen": "generation prompt opens <think>",
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B__long_content__nogen": "generation prompt opens <think>",
  "NousResearch-Hermes-3-Llama-3.1-8B-tool_use__tool_roundtrip__nogen": "last tool response gets a newline only when followed by more",
  "NousResearch-Hermes-3-Llama-3.1-8B-tool_use__tool_roundtrip_openai_wire__nogen": "same as tool_roundtrip",
  "CohereForAI-c4ai-command-r-plus-tool_use__train_single__nogen": "generation prompt adds a system turn with tool-use instructions",
  "CohereForAI-c4ai-command-r-plus-tool_use__train_multi__nogen": "same",
  "CohereForAI-c4ai-command-r-plus-tool_use__long_content__nogen": "same",
  "CohereForAI-c4ai-command-r-plus-tool_use__tool_roundtrip__nogen": "same",
  "CohereForAI-c4ai-command-r-plus-tool_use__tool_roundtrip_openai_wire__nogen": "same",
};

const cases = trainingCases();

test("every family has at least one training conversation", () => {
  expect(new Set(cases.map((c) => c.template_file)).size).toBe(templateFiles.length);
});

for (const c of cases) {
  test(`train/serve parity: ${c.id}`, () => {
    const report = checkTrainServeParity(templateSource(c.template_file), caseVariables(c), { now: c.now });
    expect(report.trainingText).toBe(c.expected!);
    if (c.id in KNOWN_PARITY_BREAKS) {
      expect(report.ok).toBe(false);
      expect(report.mismatchAt).toBeLessThan(report.promptText.length);
    } else {
      expect(report.ok).toBe(true);
      expect(report.trainingText.slice(0, report.promptText.length)).toBe(report.promptText);
      expect(report.trainingText.length).toBeGreaterThan(report.promptText.length);
    }
  });
}

test("a parity break is also a prefix violation of kind 'prompt' at the last assistant turn", () => {
  for (const id of Object.keys(KNOWN_PARITY_BREAKS)) {
    const c = cases.find((x) => x.id === id)!;
    const violations = findPrefixViolations(templateSource(c.template_file), caseVariables(c), { now: c.now });
    const lastAssistant = c.messages.length - 1;
    expect(violations.some((v) => v.kind === "prompt" && v.messageIndex === lastAssistant)).toBe(true);
  }
});

test("token-level parity uses the given encoder on both strings", () => {
  const c = cases.find((x) => x.id === "Qwen-Qwen2.5-7B-Instruct__train_single__nogen")!;
  // A toy byte-pair-free encoder: one id per UTF-16 unit, so token parity must equal string parity.
  const encode = (text: string) => Array.from(text, (ch) => ch.codePointAt(0)!);
  const report = checkTrainServeParity(templateSource(c.template_file), caseVariables(c), { now: c.now, encode });
  expect(report.tokens?.ok).toBe(true);
  expect(report.tokens?.mismatchAt).toBe(report.tokens!.promptIds.length);
  // An encoder that merges across the prompt/answer boundary breaks token parity only.
  const merging = (text: string) => (text.endsWith("assistant\n") ? [1, 2] : [1, 3, 4]);
  const broken = checkTrainServeParity(templateSource(c.template_file), caseVariables(c), { now: c.now, encode: merging });
  expect(broken.ok).toBe(true);
  expect(broken.tokens).toMatchObject({ ok: false, mismatchAt: 1 });
});
