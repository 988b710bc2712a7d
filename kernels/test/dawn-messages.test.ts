// Dawn's own console output (adapter limit notices, shader compilation logs) is counted, not
// printed; TUNELOOM_DAWN_LOG=1 lets it through (which is also what makes this test able to fail).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const SCRIPT = join(import.meta.dir, "fixtures", "dawn-chatter.ts");
const run = (env: Record<string, string>) => {
  const p = Bun.spawnSync(["bun", SCRIPT], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
};

describe("Dawn's console output", () => {
  test("a shader warning is counted and kept, stdout and stderr hold only the program's own output", () => {
    const r = run({ TUNELOOM_DAWN_LOG: "" });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    const lines = r.stdout.trim().split("\n");
    expect(lines.length).toBe(1);
    const counts = JSON.parse(lines[0]!);
    expect(counts.shaderWarnings).toBeGreaterThanOrEqual(1);
    expect(counts.shaderModulesWithWarnings).toBe(1);
    expect(counts.recent.join("\n")).toContain("unreachable");
  }, 60_000);

  test("TUNELOOM_DAWN_LOG=1 prints Dawn's messages as Dawn writes them", () => {
    const r = run({ TUNELOOM_DAWN_LOG: "1" });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("unreachable");
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).shaderWarnings).toBe(0);
  }, 60_000);
});
