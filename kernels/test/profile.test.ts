import { expect, test } from "bun:test";
import { getRuntime, matmul } from "../src/index.ts";
import { randn } from "../src/testing.ts";

const rt = await getRuntime();

test.skipIf(!rt.caps.timestampQuery)("submitProfiled times every dispatch, in order, and the work still happens", async () => {
  const M = 64, N = 48, K = 32;
  const a = rt.upload("f32", [M, K], randn(M * K)), b = rt.upload("f32", [K, N], randn(K * N));
  const c1 = rt.empty("f32", [M, N]), c2 = rt.empty("f32", [M, N]);
  const rec = rt.recorder("profiled");
  matmul(rec, { a, b, c: c1, M, N, K });
  rec.copy(c1, c2);
  matmul(rec, { a, b, c: c2, M, N, K, beta: 1 });
  const timings = await rec.submitProfiled();
  expect(timings.map((t) => t.label)).toEqual([`matmul ${M}x${N}x${K}`, `matmul ${M}x${N}x${K}`]);
  for (const t of timings) {
    expect(t.kernel).toContain("matmul");
    expect(Number.isFinite(t.ms) && t.ms >= 0).toBe(true);
  }
  const [o1, o2] = [await rt.read(c1), await rt.read(c2)];
  for (let i = 0; i < o1.length; i++) expect(o2[i]).toBeCloseTo(2 * o1[i]!, 4);
  rec.release();
  rt.release(a, b, c1, c2);
});
