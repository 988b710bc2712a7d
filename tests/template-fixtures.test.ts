// Every golden case of tests/fixtures/chat-templates renders byte-identically to Python
// Jinja2 (as transformers sets it up), or fails where Python failed.
import { expect, test } from "bun:test";
import { TemplateError, renderChatTemplate } from "@tuneloom/chat-template";
import { caseVariables, goldenCases, templateFiles, templateSource } from "./golden-fixtures.ts";

test("the fixture set is the one this suite was written for", () => {
  expect(goldenCases.length).toBe(305);
  expect(templateFiles.length).toBe(14);
});

for (const c of goldenCases) {
  test(c.id, () => {
    const render = () => renderChatTemplate(templateSource(c.template_file), caseVariables(c), { now: c.now });
    if (!c.expected_error) {
      expect(render()).toBe(c.expected!);
      return;
    }
    let error: unknown;
    try {
      render();
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(TemplateError);
    if (c.error_type === "raise_exception") {
      // transformers' TemplateError carries the template's own message; so must ours.
      expect((error as TemplateError).kind).toBe("raise_exception");
      expect((error as TemplateError).message).toBe(c.error_message!);
    } else {
      expect((error as TemplateError).kind).toBe("render");
    }
  });
}
