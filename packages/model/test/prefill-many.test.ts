// KvCacheGenerator.prefillMany packs several prompts into one step (positions from 0 and a
// sequence id each, cache rows in each prompt's own slot, one logit row per prompt). It must
// return what prefill() of each prompt alone returns, and leave the same KV cache behind: the
// decode steps that follow give the same tokens. Checked with prompts of 1, 7 and 20 tokens in
// slots 2, 0 and 5, greedy and seeded sampling, top-N, LoRA, and a token cap that splits the
// prompts over several steps.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { SampledRow, SamplingParams } from "@tuneloom/kernels";
import { type GeneratorOptions, KvCacheGenerator, type PrefillItem, paddedPrefillTokens, prefillPadding, uniformStream } from "../src/gpu/generator.ts";
import type { LayerLora } from "../src/gpu/lora.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { GREEDY, HOT, releaseLora, SAMPLED, tinyLora, writeScenarioModel } from "./decode-scenario.ts";

let dir: { dir: string; cleanup: () => void };
let model: GpuModel;
let lora: LayerLora[];

beforeAll(async () => {
  dir = writeScenarioModel();
  model = await GpuModel.load(dir.dir, { weightDtype: "f32" }); // f32: the same kernels on every device
  lora = tinyLora(model);
});
afterAll(() => {
  if (model && lora) releaseLora(model, lora);
  dir?.cleanup();
});

const TOL = 1e-5;
const prompt = (n: number, seed: number) => {
  const next = uniformStream(seed);
  return Array.from({ length: n }, () => Math.floor(next() * 200) + 1);
};

interface Spec {
  slot: number;
  promptIds: number[];
  sampling: SamplingParams;
  topN: number;
}

/** Prompts of 1, 7 and 20 tokens into slots 2, 0 and 5 with the given sampling and top-N. */
function specs(sampling: readonly SamplingParams[], topN: readonly number[]): Spec[] {
  return [[2, 1], [0, 7], [5, 20]].map(([slot, n], i) => ({ slot: slot!, promptIds: prompt(n!, 10 + i), sampling: sampling[i]!, topN: topN[i]! }));
}

/** Prefill (packed or one at a time), then `steps` decode steps over all of them; every row returned. */
async function run(s: readonly Spec[], packed: boolean, opts: Partial<GeneratorOptions> = {}, steps = 6) {
  const gen = new KvCacheGenerator(model, { maxSlots: 6, maxContext: 40, ...opts });
  const u = uniformStream(4321);
  try {
    const items: PrefillItem[] = s.map((x) => ({ ...x, u: u() }));
    let first: SampledRow[];
    if (packed) first = await gen.prefillMany(items);
    else {
      first = [];
      for (const it of items) first.push(await gen.prefill(it.slot, it.promptIds, it.sampling, it.u, it.topN));
    }
    const decoded: SampledRow[][] = [];
    const last = first.map((r) => r.token);
    const pos = s.map((x) => x.promptIds.length);
    for (let k = 0; k < steps; k++) {
      const out = await gen.decode(s.map((x, b) => ({ slot: x.slot, token: last[b]!, position: pos[b]!, sampling: x.sampling, u: u() })), 2);
      out.forEach((r, b) => {
        last[b] = r.token;
        pos[b]!++;
      });
      decoded.push(out);
    }
    return { first, decoded, stats: { ...gen.prefillStats } };
  } finally {
    gen.dispose();
  }
}

function expectRowsClose(got: readonly SampledRow[], want: readonly SampledRow[]) {
  expect(got.map((r) => r.token)).toEqual(want.map((r) => r.token));
  expect(got.map((r) => r.top?.map((t) => t.token) ?? null)).toEqual(want.map((r) => r.top?.map((t) => t.token) ?? null));
  got.forEach((r, i) => {
    const w = want[i]!;
    expect(Math.abs(r.logprob - w.logprob)).toBeLessThanOrEqual(TOL);
    r.top?.forEach((t, j) => expect(Math.abs(t.logprob - w.top![j]!.logprob)).toBeLessThanOrEqual(TOL));
  });
}

async function expectPackedEqualsSolo(s: readonly Spec[], opts: Partial<GeneratorOptions> = {}, packedSteps = 1) {
  const solo = await run(s, false, opts);
  const packed = await run(s, true, opts);
  expect(solo.stats).toEqual({ steps: s.length, prompts: s.length });
  expect(packed.stats).toEqual({ steps: packedSteps, prompts: s.length });
  expectRowsClose(packed.first, solo.first);
  packed.decoded.forEach((rows, k) => expectRowsClose(rows, solo.decoded[k]!));
  return { solo, packed };
}

describe("KvCacheGenerator.prefillMany", () => {
  test("greedy, no top-N: one step equals three prefill() calls, and so do the decode steps after it", async () => {
    const { packed } = await expectPackedEqualsSolo(specs([GREEDY, GREEDY, GREEDY], [0, 0, 0]));
    expect(packed.first.every((r) => r.top === undefined)).toBe(true);
    // Different prompts, different continuations: the rows are not one sequence's copied thrice.
    const perPrompt = [0, 1, 2].map((b) => [packed.first[b]!, ...packed.decoded.map((rows) => rows[b]!)].map((r) => r.token).join());
    expect(new Set(perPrompt).size).toBe(3);
  });

  test("seeded sampling and a top-N per prompt (0, 3, 1): same tokens, logprobs, alternatives", async () => {
    const { packed } = await expectPackedEqualsSolo(specs([SAMPLED, HOT, GREEDY], [0, 3, 1]));
    expect(packed.first.map((r) => r.top?.length ?? 0)).toEqual([0, 3, 1]);
  });

  test("with LoRA", async () => {
    const s = specs([GREEDY, SAMPLED, HOT], [2, 0, 2]);
    const withLora = await expectPackedEqualsSolo(s, { lora });
    const plain = await run(s, true);
    expect(withLora.packed.decoded.flat().map((r) => r.token)).not.toEqual(plain.decoded.flat().map((r) => r.token));
  });

  test("a token cap splits the prompts over several steps (1 + 7 together, 20 alone though over the cap)", async () => {
    await expectPackedEqualsSolo(specs([GREEDY, SAMPLED, GREEDY], [1, 0, 2]), { maxPrefillTokens: 10 }, 2);
    await expectPackedEqualsSolo(specs([GREEDY, SAMPLED, GREEDY], [1, 0, 2]), { maxPrefillTokens: 1 }, 3);
  });

  // Steps are padded to a few token counts (prefillPadding) so that their recordings reuse cached bind
  // groups: the padding rows (a sequence of their own, cache row −1, no logit row) must change nothing,
  // neither the first rows nor the KV cache the decode steps read. 1 + 7 + 20 = 28 tokens run as 32;
  // each prompt alone as 1, 8 and 32.
  test("padded steps give what unpadded ones give, packed and one prompt at a time, with LoRA too", async () => {
    const s = specs([GREEDY, SAMPLED, GREEDY], [1, 0, 2]);
    const was = prefillPadding.enabled;
    try {
      for (const opts of [{}, { lora }]) {
        for (const packed of [true, false]) {
          prefillPadding.enabled = false;
          const plain = await run(s, packed, opts);
          prefillPadding.enabled = true;
          const padded = await run(s, packed, opts);
          expectRowsClose(padded.first, plain.first);
          padded.decoded.forEach((rows, k) => expectRowsClose(rows, plain.decoded[k]!));
        }
      }
    } finally {
      prefillPadding.enabled = was;
    }
  });

  test("paddedPrefillTokens: powers of two to 16, multiples of 16 to 256, of 64 to 1024, of 256 beyond; never past the cap", () => {
    const cases: [number, number][] = [[1, 1], [2, 2], [3, 4], [5, 8], [9, 16], [16, 16], [17, 32], [33, 48], [256, 256], [257, 320], [1000, 1024], [1025, 1280], [8000, 8192]];
    for (const [T, want] of cases) expect(paddedPrefillTokens(T, 8192)).toBe(want);
    expect(paddedPrefillTokens(8100, 8192)).toBe(8192);
    expect(paddedPrefillTokens(8193, 8192)).toBe(8193); // a prompt over the cap runs alone, unpadded
    expect(paddedPrefillTokens(20, 30)).toBe(20); // 32 would pass the cap
  });

  test("the default cap is 8192 tokens at most, smaller where the activations would not fit", () => {
    const gen = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 8 });
    expect(gen.prefillTokenCap).toBe(8192);
    gen.dispose();
    const small = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 8, maxPrefillBytes: 1 << 20 });
    expect(small.prefillTokenCap).toBeGreaterThan(0);
    expect(small.prefillTokenCap).toBeLessThan(8192);
    small.dispose();
  });

  test("refuses an empty prompt, one that does not fit, a slot out of range or given twice; [] is []", async () => {
    const gen = new KvCacheGenerator(model, { maxSlots: 2, maxContext: 8 });
    try {
      const it = (slot: number, promptIds: number[]): PrefillItem => ({ slot, promptIds, sampling: GREEDY, u: 0 });
      expect(await gen.prefillMany([])).toEqual([]);
      await expect(gen.prefillMany([it(0, [1, 2]), it(1, [])])).rejects.toThrow(/empty/);
      await expect(gen.prefillMany([it(0, [1, 2]), it(1, Array(8).fill(3))])).rejects.toThrow(/does not fit/);
      await expect(gen.prefillMany([it(2, [1, 2])])).rejects.toThrow(/slot 2/);
      await expect(gen.prefillMany([it(1, [1, 2]), it(1, [3])])).rejects.toThrow(/twice/);
      expect(gen.prefillStats.steps).toBe(0);
    } finally {
      gen.dispose();
    }
  });
});
