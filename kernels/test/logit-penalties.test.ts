// applyLogitPenalties against its float64 reference on random logits, with every processor on
// and off, masks, a padded vocabulary, and rows with nothing to do.
import { afterAll, describe, expect, test } from "bun:test";
import { applyLogitPenalties, applyLogitPenaltiesRef, getRuntime, packPenaltyRows, penaltiesActive, type LogitPenalties } from "../src/index.ts";
import { randn, rng } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

function randomRow(V: number, seed: number, opts: Partial<LogitPenalties>): LogitPenalties {
  const r = rng(seed);
  const promptTokens = new Set<number>(), generated = new Map<number, number>();
  for (let i = 0; i < 40; i++) promptTokens.add(Math.floor(r.uniform() * V));
  for (let i = 0; i < 60; i++) {
    const t = Math.floor(r.uniform() * V);
    generated.set(t, (generated.get(t) ?? 0) + 1);
  }
  return { repetition: 1, presence: 0, frequency: 0, promptTokens, generated, masked: [], ...opts };
}

describe("logit penalties against float64", () => {
  test("repetition (÷ positive, × negative), presence, frequency, masks; untouched rows and columns stay", async () => {
    const V = 1000, Vt = 990;
    const rows: (LogitPenalties | null)[] = [
      randomRow(V, 1, { repetition: 1.3 }),
      randomRow(V, 2, { presence: 0.7, frequency: 0.4 }),
      randomRow(V, 3, { repetition: 0.8, presence: -0.5, frequency: 1.5, masked: [5, 17, 995] }),
      null,
      randomRow(V, 4, {}), // every processor off: no entries
      randomRow(V, 5, { repetition: 2, frequency: -2, masked: [0] }),
    ];
    const B = rows.length;
    const logits = randn(B * V, 3, 11);
    const packed = packPenaltyRows(rows);
    expect(packed.offsets[4]! - packed.offsets[3]!).toBe(0);
    expect(packed.offsets[5]! - packed.offsets[4]!).toBe(0);
    expect(rows.map((r) => penaltiesActive(r))).toEqual([true, true, true, false, false, true]);
    const tl = rt.upload("f32", [B, V], logits);
    const params = rt.upload("f32", [B, 4], packed.params), offsets = rt.upload("u32", [B + 1], packed.offsets);
    const entries = rt.upload("u32", [packed.entries.length / 2, 2], packed.entries);
    const rec = rt.recorder("penalties test");
    applyLogitPenalties(rec, { logits: tl, params, offsets, entries, validVocab: Vt });
    rec.submit();
    const out = await rt.read(tl);
    rec.release();
    rt.release(tl, params, offsets, entries);
    for (let b = 0; b < B; b++) {
      const ref = Float64Array.from(logits.subarray(b * V, (b + 1) * V));
      const row = rows[b];
      if (row) applyLogitPenaltiesRef(ref.subarray(0, Vt), row);
      for (let i = 0; i < V; i++) {
        const got = out[b * V + i]!, want = ref[i]!;
        if (want === -Infinity) expect(got).toBeLessThan(-1e38);
        else expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(want)));
      }
      if (b === 2) expect(out[b * V + 995]).toBe(logits[b * V + 995]!); // masked, but a padding column: untouched
    }
  });

  test("the reference follows HF/OpenAI semantics on a hand-made row", () => {
    const row = Float64Array.from([2, -2, 1, 0.5]);
    applyLogitPenaltiesRef(row, {
      repetition: 2, presence: 0.5, frequency: 0.25,
      promptTokens: new Set([0, 1]), generated: new Map([[2, 3]]), masked: [3],
    });
    // 0: seen in the prompt, positive → 2/2; 1: negative → −2·2; 2: generated 3× → 1/2 − 3·0.25 − 0.5; 3: masked
    expect(Array.from(row)).toEqual([1, -4, 0.5 - 0.75 - 0.5, -Infinity]);
  });
});
