import { expect, test } from "bun:test";
import { TemplateError, renderChatTemplate, strftime } from "../src/index.ts";

const messages = [{ role: "user", content: "hi" }];

test("\\r\\n and \\r in the template source render like \\n; values keep theirs", () => {
  const unix = "{% for m in messages %}\n{{ m.content }}\n{% endfor %}\nend\n";
  const windows = unix.replace(/\n/g, "\r\n");
  const oldMac = unix.replace(/\n/g, "\r");
  const vars = { messages: [{ role: "user", content: "a\r\nb" }] };
  expect(renderChatTemplate(windows, vars)).toBe(renderChatTemplate(unix, vars));
  expect(renderChatTemplate(oldMac, vars)).toBe("a\r\nb\nend");
});

test("one trailing newline of the source is dropped, a second one kept", () => {
  expect(renderChatTemplate("x\n", {})).toBe("x");
  expect(renderChatTemplate("x\n\n", {})).toBe("x\n");
});

test("{% generation %} outputs its body unchanged", () => {
  expect(renderChatTemplate("A{% generation %}{{ messages[0].content }}{% endgeneration %}B", { messages })).toBe("AhiB");
});

test("raise_exception gives a TemplateError with the template's message", () => {
  const err = (() => {
    try {
      renderChatTemplate("{{ raise_exception('Roles must alternate') }}", {});
    } catch (e) {
      return e;
    }
  })() as TemplateError;
  expect(err).toBeInstanceOf(TemplateError);
  expect(err.kind).toBe("raise_exception");
  expect(err.message).toBe("Roles must alternate");
});

test("syntax and runtime failures are TemplateErrors of their own kinds", () => {
  expect(() => renderChatTemplate("{% if %}", {})).toThrow(TemplateError);
  try {
    renderChatTemplate("{{ 'a' + 1 }}", {});
  } catch (e) {
    expect((e as TemplateError).kind).toBe("render");
  }
});

test("strftime_now formats the pinned clock in the C locale", () => {
  const out = renderChatTemplate(`{{ strftime_now("%d %B %Y|%b %-d|%A %H:%M:%S|%j") }}`, {}, { now: "2025-03-07T09:05:03" });
  expect(out).toBe("07 March 2025|Mar %-d|Friday 09:05:03|066");
  expect(strftime(new Date(2024, 0, 1, 13), "%I%p %a %y")).toBe("01PM Mon 24");
  expect(renderChatTemplate(`{{ strftime_now("%Y-%m-%d") }}`, {}, { now: "2025-12-31" })).toBe("2025-12-31");
});

test("template variables shadow globals; missing ones are Undefined, null is None", () => {
  expect(renderChatTemplate("{{ range }}", { range: "mine" })).toBe("mine");
  expect(renderChatTemplate("{{ bos_token is defined }} {{ tools is none }}", { tools: null })).toBe("false true");
  expect(renderChatTemplate("{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}", {})).toBe("135");
});

test("Python filter semantics: string, trim, reject/select, items, tojson", () => {
  const vars = { d: { a: 1, b: "x" }, n: null, l: ["code_interpreter", "brave_search", "wolfram_alpha"] };
  expect(renderChatTemplate("{{ d|string }}|{{ n|trim }}|{{ u|string }}|{{ ' \\tx\\n'|trim }}|{{ 'xxaxx'|trim('x') }}", vars)).toBe(
    "{'a': 1, 'b': 'x'}|None||x|a",
  );
  expect(renderChatTemplate("{{ l|reject('equalto', 'code_interpreter')|join(', ') }}", vars)).toBe("brave_search, wolfram_alpha");
  expect(renderChatTemplate("{{ [0, 1, '', 'a']|select|list|length }}", vars)).toBe("2");
  expect(renderChatTemplate("{% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}{% for k in u|items %}!{% endfor %}", vars)).toBe("a1bx");
  expect(renderChatTemplate("{{ d|tojson }}|{{ d|tojson(indent=1) }}|{{ d|tojson(separators=(',', ':')) }}", vars)).toBe(
    '{"a": 1, "b": "x"}|{\n "a": 1,\n "b": "x"\n}|{"a":1,"b":"x"}',
  );
});
