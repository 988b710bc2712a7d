// The pool hands out the oldest free buffer of a size whatever order buffers came back in, so a
// step that acquires and releases the same sizes at the same points gets the same buffers every
// step (and its cached bind groups hit: buffer-pool.ts).
import { expect, test } from "bun:test";
import { getRuntime } from "../src/index.ts";
import { poolBucketSize } from "../src/memory.ts";

const rt = await getRuntime();

test("oldest free buffer first, whatever the release order; sizes kept apart", () => {
  // fresh buffers of sizes nothing else uses, created in the order a, b, c
  const size = poolBucketSize(5_000_001), big = poolBucketSize(9_000_001);
  const [a, b, c] = [1, 2, 3].map((i) => rt.buffers.create(size, `pool-test-${i}`));
  const other = rt.buffers.create(big, "pool-test-big");
  for (const x of [c!, other, a!, b!]) rt.buffers.release(x);
  const got = [1, 2, 3].map(() => rt.buffers.acquire(size, "again"));
  // (toBe: GPUBuffer objects have no enumerable fields, so toEqual would call any two equal)
  got.forEach((g, i) => expect(g).toBe([a, b, c][i]!));
  expect(rt.buffers.acquire(big, "again-big")).toBe(other);
  for (const x of [a!, b!, c!, other]) rt.buffers.destroy(x);
});

test("a step's acquisitions repeat: the same buffer for the same tensor, step after step", () => {
  const step = () => {
    const x = rt.buffers.acquire(8192, "x"), y = rt.buffers.acquire(8192, "y");
    rt.buffers.release(x);
    const z = rt.buffers.acquire(8192, "z"); // takes x's buffer
    for (const t of [y, z]) rt.buffers.release(t); // y released before z: the order of the step's end
    return [x, y, z];
  };
  step();
  const first = step(), second = step();
  second.forEach((g, i) => expect(g).toBe(first[i]!));
});
