import { describe, expect, test } from "bun:test";
import { GpuError, Tensor, addInPlace, getRuntime, formatCapabilities, poolBucketSize } from "../src/index.ts";
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

describe("bind group cache (recorders with cacheBindings)", () => {
  test("a repeated recording reuses its bind groups and uniforms and computes the same result", async () => {
    const n = 4096;
    const x = randn(n);
    const acc = rt.upload("f32", [n], x), one = rt.upload("f32", [n], x);
    const run = async () => {
      const rec = rt.recorder("cached", { cacheBindings: true });
      for (let i = 0; i < 3; i++) addInPlace(rec, acc, one);
      rec.submit();
      const out = await rt.read(acc);
      rec.release();
      return out;
    };
    const first = await run();
    const before = rt.bindings.stats;
    const second = await run();
    expect(rt.bindings.stats.bindGroups).toBe(before.bindGroups);
    expect(rt.bindings.stats.uniformBlocks).toBe(before.uniformBlocks);
    expect(relError(first, x.map((v) => 4 * v))).toBeLessThan(1e-6);
    expect(relError(second, x.map((v) => 7 * v))).toBeLessThan(1e-6);
    rt.release(acc, one);
  });

  test("destroying a buffer drops the bind groups that use it; new buffers get new ones", async () => {
    const n = 256;
    const x = randn(n);
    const a = rt.upload("f32", [n], x);
    const b = new Tensor(rt.createBuffer(4 * n, "b"), "f32", [n]);
    rt.write(b, x);
    const rec = rt.recorder("cached", { cacheBindings: true });
    addInPlace(rec, a, b);
    rec.submit();
    await rt.read(a);
    rec.release();
    const with1 = rt.bindings.stats.bindGroups;
    rt.destroyBuffer(b.buffer);
    expect(rt.bindings.stats.bindGroups).toBe(with1 - 1);
    const c = new Tensor(rt.createBuffer(4 * n, "c"), "f32", [n]);
    rt.write(c, x);
    const rec2 = rt.recorder("cached", { cacheBindings: true });
    addInPlace(rec2, a, c);
    rec2.submit();
    expect(relError(await rt.read(a), x.map((v) => 3 * v))).toBeLessThan(1e-6);
    rec2.release();
    rt.release(a);
    rt.destroyBuffer(c.buffer);
  });

  test("an oversized uniform arena is emptied when a caching recording starts and none is alive", () => {
    for (let i = 0; i < 16500; i++) rt.bindings.uniform(new Uint32Array([i, 7, 7, 7]).buffer);
    expect(rt.bindings.stats.uniformBlocks).toBeGreaterThan(16384);
    const held = rt.recorder("held", { cacheBindings: true }); // starts the reset, then stays alive
    expect(rt.bindings.stats.uniformBlocks).toBe(0);
    for (let i = 0; i < 16500; i++) rt.bindings.uniform(new Uint32Array([i, 8, 8, 8]).buffer);
    const other = rt.recorder("other", { cacheBindings: true }); // `held` is alive: no reset
    expect(rt.bindings.stats.uniformBlocks).toBeGreaterThan(16384);
    other.release();
    held.release();
    rt.recorder("after", { cacheBindings: true }).release();
    expect(rt.bindings.stats.uniformBlocks).toBe(0);
  });
});
