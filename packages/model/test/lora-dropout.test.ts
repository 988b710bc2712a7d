/**
 * linearLoraForward/linearLoraBackward with PEFT's lora_dropout against float64 on the CPU:
 *   x̃ = x·keep/(1−p);  y = x·Wᵀ + s·(x̃·Aᵀ)·Bᵀ
 *   dB += s·dyᵀ·h,  dh = s·dy·B,  dA += dhᵀ·x̃,  dx = dy·W + (dh·A)·keep/(1−p)
 * The CPU mask comes from the published PCG hash written out here (independently of the
 * kernel) and is also checked against the GPU's own mask.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { dropoutForward, dropoutSeed, getRuntime, hasTensorCoreMatmul } from "@tuneloom/kernels";
import { fromF16Bits, matmulRef, randn, relError, toF16Bits } from "@tuneloom/kernels/testing.ts";
import { Tensor } from "@tuneloom/kernels";
import { type LoraModule, linearsLoraBackward, linearsLoraForward, loraTensorCores } from "../src/gpu/lora.ts";

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

/** One module's float64 forward + backward (dA, dB start from dA0, dB0); dx is its contribution. */
function moduleReference(o: {
  T: number; inF: number; outF: number; r: number; s: number; x: Float32Array; W: Float32Array; A: Float32Array; B: Float32Array;
  dy: Float32Array; dA0: Float32Array; dB0: Float32Array; mask: Float64Array | null;
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
  const dx = add(matmulRef(o.dy, o.W, T, inF, outF), dxLora);
  return { y, dx, dA, dB };
}

interface GroupCase {
  T: number; inF: number; r: number;
  /** Output width of each projection of the group; `adapted[i]` false = no LoRA on projection i. */
  outFs: number[]; adapted?: boolean[];
  p: number; betaDx: 0 | 1; withDropout: boolean;
  /** A's (and dA's) back to back in one buffer, as the trainer lays them out: the fused path. */
  stackA: boolean;
  /** Frozen weights uploaded as f16 (the reference uses the same rounded values): the tensor-core path on GPUs. */
  f16W?: boolean;
}

/** linearsLoraForward + linearsLoraBackward on a group of projections, and the float64 reference. */
async function runGroup(c: GroupCase) {
  const { T, inF, r, outFs, p, betaDx } = c;
  const n = outFs.length, adapted = c.adapted ?? outFs.map(() => true);
  const s = 2.5; // module i's scale is s + 0.5·i (PEFT allows per-module alphas)
  const up = (shape: number[], d: Float32Array) => rt.upload("f32", shape, d);
  const x = randn(T * inF), dx0 = randn(T * inF);
  const tx = up([T, inF], x), tdx = up([T, inF], dx0);
  const nA = adapted.filter(Boolean).length;
  // The scratch is bigger than T·in, as the trainer's (T, max in) one is.
  const scratch = rt.empty("f32", [T, inF + 8]);
  const th = rt.empty("f32", [T, nA * r]), tdh = rt.empty("f32", [T, nA * r + 3]);
  // Stacked: one buffer holding A_1 … A_n (and one for dA_1 … dA_n), each a 256-byte-aligned view.
  const aBuf = c.stackA ? rt.empty("f32", [nA * r * inF]) : null, dABuf = c.stackA ? rt.empty("f32", [nA * r * inF]) : null;
  const mods = outFs.map((outF, i) => {
    const [W0, A, B, dy, dA0, dB0] = [outF * inF, r * inF, outF * r, T * outF, r * inF, outF * r].map((k) => randn(k));
    const W = c.f16W ? fromF16Bits(toF16Bits(W0!)) : W0;
    const seed = dropoutSeed(17, T, i, outF);
    const j = adapted.slice(0, i).filter(Boolean).length; // index among the adapted
    const view = (buf: Tensor | null, data: Float32Array) => {
      if (!buf) return up([r, inF], data);
      const t = new Tensor(buf.buffer, "f32", [r, inF], buf.byteOffset + j * r * inF * 4, "A");
      rt.write(t, data);
      return t;
    };
    const lora: LoraModule | undefined = adapted[i]
      ? {
        A: view(aBuf, A!), B: up([outF, r], B!), scaling: s + 0.5 * i, dA: view(dABuf, dA0!), dB: up([outF, r], dB0!),
        dropout: c.withDropout ? { p, seed, scratch } : undefined,
      }
      : undefined;
    return { outF, W: W!, A: A!, B: B!, dy: dy!, dA0: dA0!, dB0: dB0!, seed, lora, tW: c.f16W ? rt.upload("f16", [outF, inF], toF16Bits(W!)) : up([outF, inF], W!), ty: rt.empty("f32", [T, outF]), tdy: up([T, outF], dy!) };
  });
  const rec = rt.recorder("lora group test");
  const d0 = rt.recordStats.dispatches;
  linearsLoraForward(rec, tx, mods.map((m) => ({ w: m.tW, y: m.ty, lora: m.lora })), th);
  linearsLoraBackward(rec, tx, mods.map((m) => ({ w: m.tW, dy: m.tdy, lora: m.lora })), tdx, betaDx, th, tdh);
  const dispatches = rt.recordStats.dispatches - d0;
  rec.submit();
  const refsWith = (masked: boolean) => mods.map((m, i) =>
    moduleReference({
      T, inF, outF: m.outF, r, s: adapted[i] ? s + 0.5 * i : 0, x, W: m.W, A: m.A, B: m.B, dy: m.dy, dA0: m.dA0, dB0: m.dB0,
      mask: masked && adapted[i] ? maskScale(T * inF, p, m.seed) : null,
    }));
  const refs = refsWith(c.withDropout);
  let dxRef = Float64Array.from(dx0, (v) => v * betaDx);
  for (const ref of refs) dxRef = add(dxRef, ref.dx);
  const out = {
    ys: await Promise.all(mods.map((m) => rt.read(m.ty))), dx: await rt.read(tdx),
    dAs: await Promise.all(mods.map((m) => (m.lora ? rt.read(m.lora.dA!) : null))),
    dBs: await Promise.all(mods.map((m) => (m.lora ? rt.read(m.lora.dB!) : null))),
  };
  rec.release();
  for (const m of mods) {
    rt.release(m.tW, m.ty, m.tdy);
    if (m.lora) rt.release(m.lora.B, m.lora.dB!, ...(c.stackA ? [] : [m.lora.A, m.lora.dA!]));
  }
  rt.release(tx, tdx, th, tdh, scratch, ...(aBuf ? [aBuf, dABuf!] : []));
  return { out, refs, dxRef, dispatches, n, refsNoMask: refsWith(false) };
}

/** Every output of a group case within `tol` (1e-5: f32 math) of float64. */
function expectGroupMatches(r: Awaited<ReturnType<typeof runGroup>>, tol = 1e-5) {
  const check = (what: string, got: Float32Array, ref: Float64Array) => {
    const e = relError(got, ref);
    if (!(e < tol)) throw new Error(`${what}: relative error ${e}`);
  };
  check("dx", r.out.dx, r.dxRef);
  r.refs.forEach((ref, i) => {
    check(`y${i}`, r.out.ys[i]!, ref.y);
    if (r.out.dAs[i]) check(`dA${i}`, r.out.dAs[i]!, ref.dA);
    if (r.out.dBs[i]) check(`dB${i}`, r.out.dBs[i]!, ref.dB);
  });
}

async function runCase(T: number, inF: number, outF: number, r: number, p: number, betaDx: 0 | 1, withDropout = true) {
  const seed = dropoutSeed(17, T, 0, outF);
  // The mask as the GPU draws it: dropout of ones = keep/(1−p).
  const ones = rt.upload("f32", [T, inF], new Float32Array(T * inF).fill(1)), gpuMask = rt.empty("f32", [T, inF]);
  const rec = rt.recorder("lora-dropout mask");
  dropoutForward(rec, ones, gpuMask, p, seed);
  rec.submit();
  const gpuMaskValues = await rt.read(gpuMask);
  rec.release();
  rt.release(ones, gpuMask);
  const group = await runGroup({ T, inF, r, outFs: [outF], p, betaDx, withDropout, stackA: false });
  const mask = withDropout ? maskScale(T * inF, p, seed) : null;
  return { group, mask, gpuMask: gpuMaskValues };
}

describe("LoRA linear with dropout against float64", () => {
  for (const [T, inF, outF, r, p, betaDx] of [[13, 64, 32, 4, 0.3, 0], [21, 128, 64, 8, 0.1, 1]] as const) {
    test(`T=${T} in=${inF} out=${outF} r=${r} p=${p} betaDx=${betaDx}: y, dx, dA, dB with the regenerated mask`, async () => {
      const { group, mask, gpuMask } = await runCase(T, inF, outF, r, p, betaDx);
      expect(relError(gpuMask, mask!)).toBeLessThan(1e-7); // the kernel's mask is the published hash
      let dropped = 0;
      for (const m of mask!) dropped += m === 0 ? 1 : 0;
      expect(dropped).toBeGreaterThan(0);
      expect(dropped).toBeLessThan(mask!.length);
      expectGroupMatches(group);
      // The mask matters: without it the reference is far from what the GPU computed.
      expect(relError(group.out.dAs[0]!, group.refsNoMask[0]!.dA)).toBeGreaterThan(1e-2);
      expect(relError(group.out.ys[0]!, group.refsNoMask[0]!.y)).toBeGreaterThan(1e-3);
    });
  }

  test("no dropout (p = 0 path, inference): the plain LoRA math, unchanged", async () => {
    const { group } = await runCase(13, 64, 32, 4, 0.3, 1, false);
    expectGroupMatches(group);
  });

  test("a scratch smaller than T·in is refused, naming the function", () => {
    const x = rt.upload("f32", [4, 64], randn(256)), W = rt.upload("f32", [32, 64], randn(2048));
    const y = rt.empty("f32", [4, 32]), h = rt.empty("f32", [4, 2]), scratch = rt.empty("f32", [4, 63]);
    const lora: LoraModule = { A: rt.upload("f32", [2, 64], randn(128)), B: rt.upload("f32", [32, 2], randn(64)), scaling: 1, dropout: { p: 0.1, seed: 1, scratch } };
    const rec = rt.recorder("lora-dropout scratch");
    expect(() => linearsLoraForward(rec, x, [{ w: W, y, lora }], h)).toThrow("linearsLoraForward: LoRA dropout scratch");
    rec.release();
    rt.release(x, W, y, h, scratch, lora.A, lora.B);
  });
});

describe("LoRA groups (q/k/v, gate/up: projections reading one input) against float64", () => {
  const base = { T: 19, inF: 64, r: 4, outFs: [32, 16, 16], p: 0.2, betaDx: 1 as const };
  test("stacked A's, no dropout: the fused path (fewer dispatches) matches float64", async () => {
    const fused = await runGroup({ ...base, withDropout: false, stackA: true });
    expectGroupMatches(fused);
    const apart = await runGroup({ ...base, withDropout: false, stackA: false });
    expectGroupMatches(apart);
    // One product for h, dA and the LoRA part of dx instead of one per module.
    expect(fused.dispatches).toBe(apart.dispatches - 3 * (fused.n - 1));
  });

  test("stacked A's with dropout: each module keeps its own mask (per-module path)", async () => {
    const r = await runGroup({ ...base, withDropout: true, stackA: true });
    expectGroupMatches(r);
    expect(relError(r.out.dAs[1]!, r.refsNoMask[1]!.dA)).toBeGreaterThan(1e-2);
  });

  test("a projection without LoRA inside the group (q and v adapted, k not), betaDx = 0", async () => {
    for (const stackA of [true, false]) {
      expectGroupMatches(await runGroup({ ...base, betaDx: 0, adapted: [true, false, true], withDropout: false, stackA }));
    }
  });

  test("a group of two with split-K shapes (long T)", async () => {
    expectGroupMatches(await runGroup({ T: 600, inF: 96, r: 8, outFs: [80, 80], p: 0, betaDx: 0, withDropout: false, stackA: true }));
  });
});

// 16-bit frozen weights on a GPU with subgroup matrices: h, s·h·Bᵀ (an aux slice of the frozen
// product), dh and dh·A (an aux slice of the input-gradient product) run on tensor cores with
// f16-rounded operands, so the bound is the 16-bit one.
describe.skipIf(!hasTensorCoreMatmul(rt))("LoRA on tensor cores against float64 (f16 weights)", () => {
  const was = loraTensorCores.enabled;
  beforeAll(() => { loraTensorCores.enabled = true; });
  afterAll(() => { loraTensorCores.enabled = was; });
  const base = { T: 64, inF: 96, r: 16, outFs: [64, 32, 32], p: 0, withDropout: false, f16W: true };
  test("q/k/v-like group, stacked A's, dx accumulated (and the tensor-core path is the one that ran)", async () => {
    const r = await runGroup({ ...base, betaDx: 1, stackA: true });
    expectGroupMatches(r, 2e-3);
    loraTensorCores.enabled = false;
    const f32 = await runGroup({ ...base, betaDx: 1, stackA: true });
    loraTensorCores.enabled = true;
    expectGroupMatches(f32, 2e-3);
    expect(r.dispatches).not.toBe(f32.dispatches);
  });
  test("k not adapted inside the group, dx overwritten", async () => {
    expectGroupMatches(await runGroup({ ...base, betaDx: 0, adapted: [true, false, true], stackA: true }), 2e-3);
  });
  test("with dropout: per-module products on tensor cores, each module's own mask", async () => {
    const r = await runGroup({ ...base, p: 0.2, withDropout: true, betaDx: 1, stackA: true });
    expectGroupMatches(r, 2e-3);
    expect(relError(r.out.dAs[1]!, r.refsNoMask[1]!.dA)).toBeGreaterThan(1e-2); // the masks mattered
    expectGroupMatches(await runGroup({ ...base, p: 0.3, withDropout: true, betaDx: 0, adapted: [true, false, true], stackA: false }), 2e-3);
  });
  test("one projection (o/down-like), r = 32, long K", async () => {
    expectGroupMatches(await runGroup({ T: 48, inF: 1024, r: 32, outFs: [64], p: 0, withDropout: false, f16W: true, betaDx: 0, stackA: false }), 2e-3);
  });
  test("A's not stacked: LoRA stays on the f32 products, the frozen ones on tensor cores", async () => {
    expectGroupMatches(await runGroup({ ...base, betaDx: 1, stackA: false }), 2e-3);
  });
  test("long T: dA and dB split over tokens on tensor cores (and the same with them kept f32)", async () => {
    const long = { ...base, T: 512, betaDx: 1 as const, stackA: true };
    expectGroupMatches(await runGroup(long), 2e-3);
    loraTensorCores.grads = false;
    try {
      expectGroupMatches(await runGroup(long), 2e-3);
    } finally {
      loraTensorCores.grads = true;
    }
  });
});
