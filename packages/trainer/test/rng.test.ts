import { describe, expect, test } from "bun:test";
import { Rng } from "../src/rng.ts";

describe("Rng", () => {
  test("saved state continues the exact stream", () => {
    const a = new Rng(2024);
    for (let i = 0; i < 37; i++) a.nextUint32();
    const saved = JSON.parse(JSON.stringify(a.state()));
    const expected = Array.from({ length: 100 }, () => a.nextFloat());
    const b = Rng.fromState(saved);
    expect(Array.from({ length: 100 }, () => b.nextFloat())).toEqual(expected);
  });

  test("seeds and derived streams are distinct and reproducible", () => {
    const draw = (r: Rng) => Array.from({ length: 8 }, () => r.nextUint32());
    expect(draw(new Rng(1))).toEqual(draw(new Rng(1)));
    expect(draw(new Rng(1))).not.toEqual(draw(new Rng(2)));
    expect(draw(Rng.derive(1, "shuffle", 0))).not.toEqual(draw(Rng.derive(1, "shuffle", 1)));
    expect(draw(Rng.derive(1, "a", 12))).not.toEqual(draw(Rng.derive(1, "a1", 2)));
    expect(draw(Rng.derive(1, "a", 12))).toEqual(draw(Rng.derive(1, "a", 12)));
  });

  test("ranges and distributions", () => {
    const r = new Rng(5);
    const counts = new Array(6).fill(0);
    for (let i = 0; i < 60000; i++) counts[r.nextInt(6)]++;
    for (const c of counts) expect(Math.abs(c - 10000)).toBeLessThan(500);
    for (let i = 0; i < 1000; i++) {
      const f = r.nextFloat();
      expect(f >= 0 && f < 1).toBe(true);
    }
    const normals = Array.from({ length: 20000 }, () => r.normal());
    const mean = normals.reduce((a, b) => a + b, 0) / normals.length;
    const variance = normals.reduce((a, b) => a + (b - mean) ** 2, 0) / normals.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
    expect(r.permutation(50).sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  test("invalid states are refused", () => {
    expect(() => Rng.fromState({ algorithm: "xoshiro128**", state: [0, 0, 0, 0] })).toThrow("invalid RNG state");
    expect(() => Rng.fromState({ algorithm: "mt" as "xoshiro128**", state: [1, 2, 3, 4] })).toThrow("invalid RNG state");
  });
});
