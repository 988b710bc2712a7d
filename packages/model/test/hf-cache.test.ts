import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { hfHubCacheDir, resolveModelDir } from "../src/hf-cache.ts";

describe("Hugging Face cache lookup", () => {
  test("cache directory: HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME or ~/.cache", () => {
    expect(hfHubCacheDir({ HF_HUB_CACHE: "/a", HF_HOME: "/b" })).toBe("/a");
    expect(hfHubCacheDir({ HF_HOME: "/b" })).toBe("/b/hub");
    expect(hfHubCacheDir({ XDG_CACHE_HOME: "/x" })).toBe("/x/huggingface/hub");
    expect(hfHubCacheDir({})).toBe(join(homedir(), ".cache", "huggingface", "hub"));
  });

  test("refs/<revision> → snapshots/<commit>; a directory wins; misses say where", () => {
    const home = mkdtempSync(join(tmpdir(), "hf-home-"));
    const repo = join(home, "hub", "models--org--m");
    const snap = (c: string) => join(repo, "snapshots", c);
    for (const c of ["a".repeat(40), "b".repeat(40)]) {
      mkdirSync(snap(c), { recursive: true });
      writeFileSync(join(snap(c), "config.json"), "{}");
    }
    mkdirSync(join(repo, "refs"));
    writeFileSync(join(repo, "refs", "main"), "a".repeat(40));
    writeFileSync(join(repo, "refs", "v2"), "b".repeat(40));
    const env = { HF_HOME: home };
    expect(resolveModelDir("org/m", { env })).toBe(snap("a".repeat(40)));
    expect(resolveModelDir("org/m@v2", { env })).toBe(snap("b".repeat(40)));
    expect(resolveModelDir(`org/m@${"b".repeat(40)}`, { env })).toBe(snap("b".repeat(40)));
    expect(resolveModelDir(home, { env })).toBe(home);
    expect(() => resolveModelDir("org/other", { env })).toThrow(`--model org/other: not found; looked for the directory org/other and for ${join(home, "hub", "models--org--other", "refs", "main")}`);
    expect(() => resolveModelDir("org/m@v3", { env })).toThrow("no refs/v3");
    expect(() => resolveModelDir("./not/here", { env })).toThrow("--model ./not/here: directory not found");
  });
});
