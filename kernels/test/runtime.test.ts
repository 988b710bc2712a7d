import { describe, expect, test } from "bun:test";
import { GpuError, addInPlace, getRuntime, formatCapabilities, poolBucketSize } from "../src/index.ts";
import { randn, relError } from "../src/testing.ts";

const rt = await getRuntime();

describe("device runtime", () => {
  test("capability report names the adapter and reads subgroup-matrix getters", () => {
    const caps = rt.caps;
    expect(caps.description.length + caps.vendor.length).toBeGreaterThan(0);
    expect(caps.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 2 ** 20);
    for (const c of caps.subgroupMatrixConfigs) expect(c.M * c.N * c.K).toBeGreaterThan(0);
    expect(formatCapabilities(caps)).toContain("shader-f16:");
  });

  test("survives forced garbage collection over 1,000 submit/map cycles", async () => {
    const data = randn(256);
    const src = rt.upload("f32", [256], data);
    const dst = rt.empty("f32", [256]);
    for (let i = 0; i < 1000; i++) {
      if (i % 50 === 0) Bun.gc(true);
      const k = i % 256;
      const rec = rt.recorder("gc-stress");
      rec.copy(src, dst, 4, 4 * k, 4 * k);
      rec.submit();
      const back = await rt.read(dst);
      if (back[k] !== data[k]) throw new Error(`cycle ${i}: copy result wrong`);
    }
    rt.release(src, dst);
  }, 300_000);

  test("a broken kernel throws a GPU error naming it", async () => {
    const bad = { name: "deliberately_broken", code: "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }" };
    let err: unknown;
    try {
      await rt.pipelineChecked(bad);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(GpuError);
    expect((err as Error).message).toContain("deliberately_broken");
    // The runtime keeps working afterwards.
    const t = rt.upload("f32", [4], new Float32Array([1, 2, 3, 4]));
    expect(Array.from(await rt.read(t))).toEqual([1, 2, 3, 4]);
  });

  test("memory accounting tracks live and peak bytes; the pool reuses buffers", () => {
    rt.trimPool();
    const before = rt.memory.snapshot();
    const a = rt.empty("f32", [1 << 18]); // 1 MiB
    const afterAlloc = rt.memory.snapshot();
    expect(afterAlloc.liveBytes - before.liveBytes).toBe(poolBucketSize(1 << 20));
    expect(afterAlloc.peakBytes).toBeGreaterThanOrEqual(afterAlloc.liveBytes);
    rt.release(a);
    expect(rt.memory.inUseBytes).toBe(before.inUseBytes);
    const b = rt.empty("f32", [1 << 18]);
    expect(b.buffer).toBe(a.buffer); // same bucket: reused, no new device allocation
    expect(rt.memory.liveBytes).toBe(afterAlloc.liveBytes);
    rt.release(b);
    rt.trimPool();
    expect(rt.memory.liveBytes).toBe(before.liveBytes);
  });

  test("bucketed pool sizes waste little and are monotone", () => {
    let prev = 0;
    for (const n of [1, 255, 256, 257, 4096, 65537, 1e6, 123456789]) {
      const b = poolBucketSize(n);
      expect(b).toBeGreaterThanOrEqual(n);
      expect(b).toBeGreaterThanOrEqual(prev);
      if (n > 65536) expect(b / n).toBeLessThan(1.13);
      prev = b;
    }
  });
});

test("a recorder with flushEvery submits as it records; dependent work still runs in order", async () => {
  const n = 1000;
  const x = randn(n);
  const acc = rt.upload("f32", [n], x), one = rt.upload("f32", [n], x);
  const rec = rt.recorder("streaming", { flushEvery: 2 });
  for (let i = 0; i < 7; i++) addInPlace(rec, acc, one); // acc = x + 7·x, each add reading the previous
  rec.submit();
  const out = await rt.read(acc);
  rec.release();
  expect(relError(out, x.map((v) => 8 * v))).toBeLessThan(1e-6);
  rt.release(acc, one);
});
