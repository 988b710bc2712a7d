// `bun run template` as users run it: a subprocess, exact bytes on stdout, exit codes.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { caseVariables, goldenCases, templateSource, FIXTURES_DIR } from "./golden-fixtures.ts";

const repoRoot = path.resolve(import.meta.dir, "..");
const work = mkdtempSync(path.join(tmpdir(), "template-cli-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

async function runTemplate(templateFile: string, input: unknown) {
  const inputFile = path.join(work, `input-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(inputFile, JSON.stringify(input));
  const proc = Bun.spawn(["bun", "apps/cli/src/main.ts", "template", "--template", templateFile, "--input", inputFile], {
    cwd: repoRoot,
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { stdout, stderr, code };
}

test("prints exactly the rendering, date pinned by 'now'", async () => {
  // Llama 3.2 puts strftime_now's date in its system prompt, so `now` must reach the template.
  const c = goldenCases.find((x) => x.id === "meta-llama-Llama-3.2-3B-Instruct__system_user__gen")!;
  expect(c.expected).toContain("07 Mar 2025");
  const { stdout, stderr, code } = await runTemplate(path.join(FIXTURES_DIR, c.template_file), { ...caseVariables(c), now: c.now });
  expect(stderr).toBe("");
  expect(code).toBe(0);
  expect(stdout).toBe(c.expected!);
});

test("no trailing newline is added", async () => {
  const file = path.join(work, "plain.jinja");
  writeFileSync(file, "{{ messages[0].content }}|");
  const { stdout, code } = await runTemplate(file, { messages: [{ role: "user", content: "hi" }] });
  expect(code).toBe(0);
  expect(stdout).toBe("hi|");
});

test("raise_exception exits 2 with the template's message on stderr", async () => {
  const c = goldenCases.find((x) => x.error_type === "raise_exception")!;
  expect(templateSource(c.template_file)).toContain("raise_exception");
  const { stdout, stderr, code } = await runTemplate(path.join(FIXTURES_DIR, c.template_file), { ...caseVariables(c), now: c.now });
  expect(code).toBe(2);
  expect(stdout).toBe("");
  expect(stderr).toContain(c.error_message!);
});

test("a template syntax error also exits 2", async () => {
  const file = path.join(work, "broken.jinja");
  writeFileSync(file, "{% for m in messages %}{{ m.content }}");
  const { stderr, code } = await runTemplate(file, { messages: [] });
  expect(code).toBe(2);
  expect(stderr).toContain("syntax");
});

test("input that is not a JSON object is a usage error, not a template error", async () => {
  const file = path.join(work, "plain2.jinja");
  writeFileSync(file, "x");
  const { code, stderr } = await runTemplate(file, [1, 2]);
  expect(code).toBe(1);
  expect(stderr).toContain("JSON object");
});
