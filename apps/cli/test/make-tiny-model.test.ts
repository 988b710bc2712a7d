// The make-tiny-model command (the generator itself is tested in packages/model/test/tiny-model.test.ts).
import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadChatTemplate, loadModelConfig } from "@tuneloom/model";
import { run as makeTinyModel } from "../src/commands/make-tiny-model.ts";

const tmp = () => mkdtempSync(join(tmpdir(), "tiny-"));

describe("make-tiny-model", () => {
  test("make-tiny-model command: flags, --template, errors", async () => {
    const dir = tmp();
    const template = join(dir, "t.jinja");
    writeFileSync(template, "{% for m in messages %}{{ m.content }}{% endfor %}");
    const out = join(dir, "model");
    expect(await makeTinyModel(["--out", out, "--arch", "qwen2", "--template", template, "--seed", "4", "--dtype", "bf16"])).toBe(0);
    expect(loadChatTemplate(out).source).toBe("{% for m in messages %}{{ m.content }}{% endfor %}");
    expect(loadModelConfig(out).arch).toBe("qwen2");
    await expect(makeTinyModel([])).rejects.toThrow("--out is required");
    await expect(makeTinyModel(["--out", out, "--arch", "gpt2"])).rejects.toThrow("--arch must be llama or qwen2");
    await expect(makeTinyModel(["--out", out, "--sed", "1"])).rejects.toThrow("unknown flag --sed");
  });
});
