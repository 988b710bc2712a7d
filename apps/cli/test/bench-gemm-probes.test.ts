import { expect, test } from "bun:test";
import { getRuntime } from "@tuneloom/kernels";
import { gemmProbes } from "../src/bench/gemm-probes.ts";

// The device script's gemm-probes step must not spend its seconds on a shader that fails to build:
// every probe compiles and runs here (lavapipe), each line a speed or the error that stopped it.
const rt = await getRuntime();

test.skipIf(!rt.device.features.has("shader-f16"))("gemm probes: every store form and load depth runs and reports a bandwidth", async () => {
  const lines = [];
  for await (const line of gemmProbes(rt, 2)) lines.push(line);
  expect(lines.map((l) => `${l.probe} ${l.form}`)).toEqual([
    "stores f16", "stores u32", "stores vec4", "stores none",
    ...[2, 4, 8, 16].flatMap((d) => [`loads guarded-d${d}`, `loads free-d${d}`]),
  ]);
  for (const l of lines) {
    expect(l).not.toHaveProperty("error");
    expect((l as { gbs: number }).gbs).toBeGreaterThan(0);
  }
});
