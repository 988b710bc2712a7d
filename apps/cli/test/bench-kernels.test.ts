// bench --kernels: the --quick lines of a few ops, each checked against its float64 reference
// in the same run (a broken kernel fails here through relErr), and the CLI wiring.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { getRuntime } from "@tuneloom/kernels";
import { type KernelBenchLine, KERNEL_OPS, kernelBenchmarks, kernelTolerance } from "../src/bench/kernels.ts";
import { RelErr } from "../src/bench/kernels-common.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

async function quickLines(ops: string[]): Promise<KernelBenchLine[]> {
  const lines: KernelBenchLine[] = [];
  for await (const line of kernelBenchmarks(rt, { quick: true, ops })) lines.push(line);
  return lines;
}

/** The contract of one line: op, shape, dtype, ms, exactly one of gflops/gbs, relErr within tolerance. */
function expectLine(line: KernelBenchLine) {
  const m = line as unknown as Record<string, unknown>;
  for (const key of ["op", "shape", "dtype"]) expect(typeof m[key]).toBe("string");
  for (const key of ["ms", "relErr"]) expect(Number.isFinite(m[key])).toBe(true);
  expect(line.ms).toBeGreaterThan(0);
  const rates = ["gflops", "gbs"].filter((k) => k in m);
  expect(rates).toHaveLength(1);
  expect(m[rates[0]!] as number).toBeGreaterThan(0);
  if (!(line.relErr >= 0 && line.relErr <= kernelTolerance(line))) {
    throw new Error(`${line.op} ${line.shape} (${line.dtype}): relErr ${line.relErr} over ${kernelTolerance(line)}`);
  }
}

describe("bench --kernels --quick", () => {
  test("embedding, rmsnorm, rope, swiglu, adamw, grad norm: one line per op and shape, relErr within tolerance", async () => {
    const lines = await quickLines(["embedding", "rmsnorm", "rope", "swiglu", "adamw", "grad_norm"]);
    expect(lines.map((l) => l.op)).toEqual([
      "embedding", "embedding", "rmsnorm_fwd", "rmsnorm_bwd", "rope_fwd", "rope_bwd", "swiglu_fwd", "swiglu_bwd", "adamw", "grad_norm_clip",
    ]);
    for (const line of lines) expectLine(line);
    expect(lines.map((l) => l.dtype).slice(0, 2)).toEqual(["bf16 table -> f32", "f16 table -> f32"]);
    // memory-bound ops report bandwidth
    for (const line of lines) expect(line.gbs).toBeGreaterThan(0);
  }, 120_000);

  test("tolerances: 2e-3 where 16-bit values are involved, 1e-5 for f32 math; NaN never passes", () => {
    expect(kernelTolerance({ dtype: "bf16 table -> f32" })).toBe(2e-3);
    expect(kernelTolerance({ dtype: "f32 h, f16 W" })).toBe(2e-3);
    expect(kernelTolerance({ dtype: "f32" })).toBe(1e-5);
    const e = new RelErr();
    e.add(1, 1);
    e.add(NaN, 2);
    expect(e.value).toBe(Infinity);
  });

  test("unknown op names and --quick with models are refused", async () => {
    await expect(quickLines(["rmsnorm", "softmax"])).rejects.toThrow(/unknown kernel op 'softmax' \(known: matmul, embedding/);
    const gen = kernelBenchmarks(rt, { quick: true, models: ["smollm2-135m"] });
    await expect(gen.next()).rejects.toThrow(/--quick runs its own tiny shapes/);
    expect(KERNEL_OPS).toContain("attention_decode");
  });
});

describe("bench --kernels (CLI)", () => {
  test("--quick --ops residual_add,convert prints one JSON line per op and shape and exits 0", () => {
    const p = Bun.spawnSync(["bun", join(import.meta.dir, "..", "src", "main.ts"), "bench", "--kernels", "--quick", "--ops", "residual_add,convert"], {
      stdout: "pipe", stderr: "pipe",
    });
    // Dawn's own warnings aside, stderr holds only the device line
    const stderr = p.stderr.toString().split("\n").filter((l) => l && !l.startsWith("Warning:"));
    expect(stderr).toHaveLength(1);
    expect(stderr[0]).toMatch(/^bench: .*\(.*\)$/);
    expect(p.exitCode).toBe(0);
    const lines = p.stdout.toString().trim().split("\n").map((l) => JSON.parse(l) as KernelBenchLine);
    expect(lines.map((l) => `${l.op} ${l.dtype}`)).toEqual(["residual_add f32", "convert bf16 -> f32", "convert bf16 -> f16"]);
    for (const line of lines) expectLine(line);
  }, 60_000);
});
