// The README's `bun run train` (the LoRA demo) and `bun run train -- --full` (the same demo with every
// weight trained), as subprocesses in a scratch directory: each teaches the made-up capitals (held-out
// exact match from 0% to most of the 20), prints the forgetting line, and writes its output
// (OUT/adapter in PEFT's layout, or OUT/model as an HF model directory).
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");
const root = mkdtempSync(join(tmpdir(), "tuneloom-demo-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function demo(...args: string[]) {
  const p = Bun.spawnSync(["bun", MAIN, "train", ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** "held-out exact match 0% (0/20) → 90% (18/20)" → [0, 18, 20]. */
function taskGain(stdout: string): [number, number, number] {
  const m = /task gain +held-out exact match \d+% \((\d+)\/(\d+)\) → \d+% \((\d+)\/\d+\)/.exec(stdout);
  expect(m).not.toBeNull();
  return [+m![1]!, +m![3]!, +m![2]!];
}

describe("the demos", () => {
  test("bun run train: LoRA teaches the task, reports the forgetting, writes the adapter", () => {
    const r = demo();
    expect(r.code).toBe(0);
    const [before, after, total] = taskGain(r.stdout);
    expect(total).toBe(20);
    expect(before).toBeLessThanOrEqual(2);
    expect(after).toBeGreaterThanOrEqual(14);
    expect(r.stdout).toMatch(/forgetting +general-text perplexity [\d.,]+ → [\d.,]+, [+−]/);
    expect(r.stdout).toMatch(/\n {2}adapter {6}\S+runs\/demo\/output\/adapter\n/);
    expect(existsSync(join(root, "runs/demo/output/adapter/adapter_model.safetensors"))).toBe(true);
  }, 180_000);

  test("bun run train -- --full: every weight trained, the same summary lines, an HF model directory", () => {
    const r = demo("--full");
    expect(r.code).toBe(0);
    const [before, after] = taskGain(r.stdout);
    expect(before).toBeLessThanOrEqual(2);
    expect(after).toBeGreaterThanOrEqual(14);
    expect(r.stdout).toMatch(/forgetting +general-text perplexity [\d.,]+ → [\d.,]+, [+−]/);
    expect(r.stdout).toMatch(/\n {2}model {8}\S+runs\/demo-full\/output\/model\n/);
    expect(r.stdout).toContain("serve it: bun run serve -- --model ");
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"]) {
      expect(existsSync(join(root, "runs/demo-full/output/model", f))).toBe(true);
    }
  }, 180_000);
});
