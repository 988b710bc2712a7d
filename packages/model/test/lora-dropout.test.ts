/**
 * linearLoraForward/linearLoraBackward with PEFT's lora_dropout against float64 on the CPU:
 *   x̃ = x·keep/(1−p);  y = x·Wᵀ + s·(x̃·Aᵀ)·Bᵀ
 *   dB += s·dyᵀ·h,  dh = s·dy·B,  dA += dhᵀ·x̃,  dx = dy·W + (dh·A)·keep/(1−p)
 * The CPU mask comes from the published PCG hash written out here (independently of the
 * kernel) and is also checked against the GPU's own mask.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { dropoutForward, dropoutSeed, getRuntime } from "@tuneloom/kernels";
import { matmulRef, randn, relError } from "@tuneloom/kernels/testing.ts";
import { type LoraModule, linearLoraBackward, linearLoraForward } from "../src/gpu/lora.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

function pcg(v: number): number {
  const state = Number((BigInt(v >>> 0) * 747796405n + 2891336453n) & 0xffffffffn);
  const word = Number((BigInt(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0) * 277803737n) & 0xffffffffn);
  return ((word >>> 22) ^ word) >>> 0;
}
/** keep(i)/(1−p), or 1 everywhere without dropout. */
function maskScale(n: number, p: number, seed: number): Float64Array {
  const threshold = Math.round(p * 2 ** 32), s = pcg(seed);
  return Float64Array.from({ length: n }, (_, i) => (pcg((pcg(i) + s) >>> 0) >= threshold ? 1 / (1 - p) : 0));
}

const add = (a: ArrayLike<number>, b: ArrayLike<number>, s = 1) => Float64Array.from(a, (v, i) => v + s * b[i]!);

/** The float64 reference of one forward + backward (dA, dB start from dA0, dB0; dx from dx0·betaDx). */
function reference(o: {
  T: number; inF: number; outF: number; r: number; s: number; x: Float32Array; W: Float32Array; A: Float32Array; B: Float32Array;
  dy: Float32Array; dA0: Float32Array; dB0: Float32Array; dx0: Float32Array; betaDx: 0 | 1; mask: Float64Array | null;
}) {
  const { T, inF, outF, r, s } = o;
  const xd = o.mask ? Float64Array.from(o.x, (v, i) => v * o.mask![i]!) : Float64Array.from(o.x);
  const h = matmulRef(xd, o.A, T, r, inF, false, true); // (T, r)
  const y = add(matmulRef(o.x, o.W, T, outF, inF, false, true), matmulRef(h, o.B, T, outF, r, false, true), s);
  const dB = add(o.dB0, matmulRef(o.dy, h, outF, r, T, true, false), s);
  const dh = matmulRef(o.dy, o.B, T, r, outF).map((v) => s * v); // (T, r)
  const dA = add(o.dA0, matmulRef(dh, xd, r, inF, T, true, false));
  const dxd = matmulRef(dh, o.A, T, inF, r); // (T, in)
  const dxLora = o.mask ? dxd.map((v, i) => v * o.mask![i]!) : dxd;
  const dx = add(add(matmulRef(o.dy, o.W, T, inF, outF), dxLora), o.dx0, o.betaDx);
  return { y, dx, dA, dB };
}

async function runCase(T: number, inF: number, outF: number, r: number, p: number, betaDx: 0 | 1, withDropout = true) {
  const s = 2.5;
  const seed = dropoutSeed(17, T, inF, outF);
  const [x, W, A, B, dy, dA0, dB0, dx0] = [T * inF, outF * inF, r * inF, outF * r, T * outF, r * inF, outF * r, T * inF].map((n) => randn(n));
  const up = (shape: number[], d: Float32Array) => rt.upload("f32", shape, d);
  const tx = up([T, inF], x!), tW = up([outF, inF], W!), ty = rt.empty("f32", [T, outF]);
  const tdy = up([T, outF], dy!), tdx = up([T, inF], dx0!), th = rt.empty("f32", [T, r]), tdh = rt.empty("f32", [T, r]);
  // The scratch is bigger than T·in, as the trainer's (T, max in) one is.
  const scratch = rt.empty("f32", [T, inF + 8]);
  const lora: LoraModule = {
    A: up([r, inF], A!), B: up([outF, r], B!), scale: s, dA: up([r, inF], dA0!), dB: up([outF, r], dB0!),
    dropout: withDropout ? { p, seed, scratch } : undefined,
  };
  // The mask as the GPU draws it: dropout of ones = keep/(1−p).
  const ones = up([T, inF], new Float32Array(T * inF).fill(1)), gpuMask = rt.empty("f32", [T, inF]);
  const rec = rt.recorder("lora-dropout test");
  dropoutForward(rec, ones, gpuMask, p, seed);
  linearLoraForward(rec, tx, tW, undefined, ty, lora, th);
  linearLoraBackward(rec, tx, tW, tdy, tdx, betaDx, lora, th, tdh);
  rec.submit();
  const mask = withDropout ? maskScale(T * inF, p, seed) : null;
  const inputs = { T, inF, outF, r, s, x: x!, W: W!, A: A!, B: B!, dy: dy!, dA0: dA0!, dB0: dB0!, dx0: dx0!, betaDx };
  const ref = reference({ ...inputs, mask });
  const refNoMask = reference({ ...inputs, mask: null });
  const out = {
    y: await rt.read(ty), dx: await rt.read(tdx), dA: await rt.read(lora.dA!), dB: await rt.read(lora.dB!), mask: await rt.read(gpuMask),
  };
  rec.release();
  rt.release(tx, tW, ty, tdy, tdx, th, tdh, scratch, lora.A, lora.B, lora.dA!, lora.dB!, ones, gpuMask);
  return { out, ref, refNoMask, mask };
}

describe("LoRA linear with dropout against float64", () => {
  for (const [T, inF, outF, r, p, betaDx] of [[13, 64, 32, 4, 0.3, 0], [21, 128, 64, 8, 0.1, 1]] as const) {
    test(`T=${T} in=${inF} out=${outF} r=${r} p=${p} betaDx=${betaDx}: y, dx, dA, dB with the regenerated mask`, async () => {
      const { out, ref, refNoMask, mask } = await runCase(T, inF, outF, r, p, betaDx);
      expect(relError(out.mask, mask!)).toBeLessThan(1e-7); // the kernel's mask is the published hash
      let dropped = 0;
      for (const m of mask!) dropped += m === 0 ? 1 : 0;
      expect(dropped).toBeGreaterThan(0);
      expect(dropped).toBeLessThan(mask!.length);
      for (const k of ["y", "dx", "dA", "dB"] as const) {
        const e = relError(out[k], ref[k]);
        if (!(e < 1e-5)) throw new Error(`${k}: relative error ${e}`);
      }
      // The mask matters: without it the reference is far from what the GPU computed.
      expect(relError(out.dA, refNoMask.dA)).toBeGreaterThan(1e-2);
      expect(relError(out.y, refNoMask.y)).toBeGreaterThan(1e-3);
    });
  }

  test("no dropout (p = 0 path, inference): the plain LoRA math, unchanged", async () => {
    const { out, ref } = await runCase(13, 64, 32, 4, 0.3, 1, false);
    for (const k of ["y", "dx", "dA", "dB"] as const) {
      const e = relError(out[k], ref[k]);
      if (!(e < 1e-5)) throw new Error(`${k}: relative error ${e}`);
    }
  });

  test("a scratch smaller than T·in is refused, naming the function", () => {
    const x = rt.upload("f32", [4, 64], randn(256)), W = rt.upload("f32", [32, 64], randn(2048));
    const y = rt.empty("f32", [4, 32]), h = rt.empty("f32", [4, 2]), scratch = rt.empty("f32", [4, 63]);
    const lora: LoraModule = { A: rt.upload("f32", [2, 64], randn(128)), B: rt.upload("f32", [32, 2], randn(64)), scale: 1, dropout: { p: 0.1, seed: 1, scratch } };
    const rec = rt.recorder("lora-dropout scratch");
    expect(() => linearLoraForward(rec, x, W, undefined, y, lora, h)).toThrow("linearLoraForward: LoRA dropout scratch");
    rec.release();
    rt.release(x, W, y, h, scratch, lora.A, lora.B);
  });
});
