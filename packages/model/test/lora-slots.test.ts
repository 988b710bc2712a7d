// Adapter slots (lora-slots.ts) in KvCacheGenerator: a batch that mixes two adapters of different
// ranks and targets with base rows is ONE prefill step and ONE submit per decode step, and every
// sequence gets what the one-adapter path (uploadAdapter: per-module LoRA, a generator per
// adapter) gives it alone: the same greedy tokens, logprobs equal up to f32 summation order.
// Bad slot indices, ranks past the slots' and mixing the two paths are refused.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { SampledRow } from "@tuneloom/kernels";
import { type LoadedAdapter, randomLoadedAdapter } from "../src/adapter-dir.ts";
import { releaseAdapter, uploadAdapter } from "../src/gpu/adapter.ts";
import { type GeneratorOptions, KvCacheGenerator, uniformStream } from "../src/gpu/generator.ts";
import { LoraSlots, resolveLoraSlotDtype } from "../src/gpu/lora-slots.ts";
import { randn, relError } from "@tuneloom/kernels/testing.ts";
import { LORA_TARGETS, type LoraTarget, loraProjectionShape } from "../src/lora-config.ts";
import { LORA_GROUPS, type LoraGroup } from "../src/gpu/decoder-layer.ts";
import { linearsGatheredLoraForward } from "../src/gpu/lora.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { GREEDY, writeScenarioModel } from "./decode-scenario.ts";

let dir: { dir: string; cleanup: () => void };
let model: GpuModel;
let P: LoadedAdapter, Q: LoadedAdapter;
let slots: LoraSlots;
const SLOT_P = 2, SLOT_Q = 0;

beforeAll(async () => {
  dir = writeScenarioModel();
  model = await GpuModel.load(dir.dir, { weightDtype: "f32" });
  // Different ranks and targets; between them every projection is adapted.
  P = randomLoadedAdapter(model.cfg, { rank: 4, targets: ["q_proj", "v_proj", "up_proj", "down_proj"], seed: 5 });
  Q = randomLoadedAdapter(model.cfg, { rank: 8, alpha: 4, targets: ["k_proj", "o_proj", "gate_proj", "down_proj"], seed: 6 });
  SEQS.push([P, prompt(5, 1)], [null, prompt(3, 2)], [Q, prompt(7, 3)], [P, prompt(2, 4)], [Q, prompt(4, 5)]);
  slots = new LoraSlots(model.rt, model.cfg, { slots: 3, maxRank: 8 });
  for (const [s, a] of [[SLOT_P, P], [SLOT_Q, Q]] as const) {
    expect(slots.acquire(a.dir)).not.toBeNull();
    slots.write(s, a);
  }
});
afterAll(() => {
  slots?.dispose();
  dir?.cleanup();
});

const prompt = (n: number, seed: number) => {
  const next = uniformStream(seed);
  return Array.from({ length: n }, () => Math.floor(next() * 200) + 1);
};
// Sequences: [adapter, prompt]; base rows between adapter rows (filled once the adapters exist).
const SEQS: [LoadedAdapter | null, number[]][] = [];
const slotOf = (a: LoadedAdapter | null) => (a === P ? SLOT_P : a === Q ? SLOT_Q : -1);
const STEPS = 6;

/** Prefill all (one prefillMany), then STEPS decode steps over all; rows per sequence. */
async function runMixed(opts: Partial<GeneratorOptions> = {}) {
  const gen = new KvCacheGenerator(model, { maxSlots: SEQS.length, maxContext: 32, loraSlots: slots, ...opts });
  try {
    const first = await gen.prefillMany(SEQS.map(([a, ids], i) => ({ slot: i, promptIds: ids, sampling: GREEDY, u: 0, loraSlot: slotOf(a) })));
    const rows: SampledRow[][] = first.map((r) => [r]);
    for (let step = 0; step < STEPS; step++) {
      const out = await gen.decode(SEQS.map(([a, ids], i) => ({
        slot: i, token: rows[i]!.at(-1)!.token, position: ids.length + step, sampling: GREEDY, u: 0, loraSlot: slotOf(a),
      })));
      out.forEach((r, i) => rows[i]!.push(r));
    }
    return { rows, prefillSteps: gen.prefillStats.steps, submits: gen.decodeStats.submits };
  } finally {
    gen.dispose();
  }
}

/** One sequence alone through the one-adapter path (per-module LoRA uploaded f32). */
async function runAlone(adapter: LoadedAdapter | null, ids: number[]) {
  const lora = adapter ? uploadAdapter(model, adapter) : undefined;
  const gen = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 32, lora });
  try {
    const rows = [await gen.prefill(0, ids, GREEDY, 0)];
    for (let step = 0; step < STEPS; step++) rows.push(...(await gen.decode([{ slot: 0, token: rows.at(-1)!.token, position: ids.length + step, sampling: GREEDY, u: 0 }])));
    return rows;
  } finally {
    gen.dispose();
    if (lora) releaseAdapter(model, lora);
  }
}

describe("LoRA slots: one forward for a batch of several adapters", () => {
  test("f16 slot storage (serve --lora-dtype float16): the same greedy tokens, logprobs within 16-bit rounding", async () => {
    const s16 = new LoraSlots(model.rt, model.cfg, { slots: 3, maxRank: 8, dtype: "f16" });
    try {
      for (const [s, a] of [[SLOT_P, P], [SLOT_Q, Q]] as const) {
        expect(s16.acquire(a.dir)).not.toBeNull();
        s16.write(s, a);
      }
      const [f32, f16] = [await runMixed(), await runMixed({ loraSlots: s16 })];
      for (const [i, rows] of f16.rows.entries()) expect(rows.map((r) => r.token)).toEqual(f32.rows[i]!.map((r) => r.token));
      const lp = (x: Awaited<ReturnType<typeof runMixed>>) => Float64Array.from(x.rows.flat().map((r) => r.logprob));
      const err = relError(lp(f16), lp(f32)); // ‖Δ‖/‖ref‖ over every sampled logprob
      expect(err).toBeLessThan(2e-3);
      expect(err).toBeGreaterThan(0); // the f16 stacks were read (rounding shows)
    } finally {
      s16.dispose();
    }
  }, 120_000);

  test("--lora-dtype: auto is f16 with f16 weights, else f32; vLLM's names; anything else is refused", () => {
    expect(resolveLoraSlotDtype(undefined, "f16")).toBe("f16");
    expect(resolveLoraSlotDtype("auto", "bf16")).toBe("f32");
    expect(resolveLoraSlotDtype("auto", "f32")).toBe("f32");
    expect(resolveLoraSlotDtype("bfloat16", "f16")).toBe("bf16");
    expect(resolveLoraSlotDtype("float32", "f16")).toBe("f32");
    expect(() => resolveLoraSlotDtype("fp8", "f16")).toThrow(/--lora-dtype must be one of auto.*got "fp8"/);
  });

  test("f16 slots: an odd rank and an adapter value past f16's range are refused, naming the flag and the tensor", () => {
    expect(() => new LoraSlots(model.rt, model.cfg, { slots: 1, maxRank: 5, dtype: "f16" })).toThrow(/even rank, got 5 .*--max-lora-rank.*--lora-dtype float32/);
    const s16 = new LoraSlots(model.rt, model.cfg, { slots: 1, maxRank: 8, dtype: "f16" });
    try {
      const big = randomLoadedAdapter(model.cfg, { rank: 4, targets: ["q_proj"], seed: 9 });
      big.weights[1]!.B[3] = 7e4;
      expect(() => s16.write(0, big)).toThrow(/lora_B holds 70000, beyond f16's range; serve it with --lora-dtype float32/);
      expect(s16.allocated).toBe(false); // refused before anything was written
      const ok = randomLoadedAdapter(model.cfg, { rank: 4, targets: ["q_proj"], seed: 9 });
      s16.write(0, ok); // the same adapter within range goes in
      expect(s16.allocated).toBe(true);
    } finally {
      s16.dispose();
    }
  });

  test("mixed batch = each sequence alone on the one-adapter path; one prefill step, one submit per decode step", async () => {
    const mixed = await runMixed();
    expect(mixed.prefillSteps).toBe(1);
    expect(mixed.submits).toBe(STEPS);
    const alone: SampledRow[][] = [];
    for (const [a, ids] of SEQS) alone.push(await runAlone(a, ids));
    for (const [i, rows] of mixed.rows.entries()) {
      expect(rows.map((r) => r.token)).toEqual(alone[i]!.map((r) => r.token));
      for (const [t, r] of rows.entries()) expect(Math.abs(r.logprob - alone[i]![t]!.logprob)).toBeLessThan(1e-4);
    }
    // The adapters change what the base would say (else the test could not tell them apart).
    for (const i of [0, 2]) {
      const base = await runAlone(null, SEQS[i]![1]);
      const diff = Math.max(...base.map((r, t) => (r.token !== alone[i]![t]!.token ? Infinity : Math.abs(r.logprob - alone[i]![t]!.logprob))));
      expect(diff).toBeGreaterThan(1e-2);
    }
    // Recorded afresh each step (replay off): the same rows.
    const fresh = await runMixed({ replay: false });
    expect(fresh.rows.map((rs) => rs.map((r) => r.token))).toEqual(mixed.rows.map((rs) => rs.map((r) => r.token)));
  }, 120_000);

  test("a slot rewritten with another adapter serves the new one; a cleared slot's rows get the base", async () => {
    const s = new LoraSlots(model.rt, model.cfg, { slots: 1, maxRank: 8 });
    try {
      s.acquire("x");
      s.write(0, Q);
      s.write(0, P); // Q's k/o/gate entries stay in the stacks but rank 0 hides them
      const gen = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 32, loraSlots: s });
      const [ids] = [SEQS[0]![1]];
      const withP = await gen.prefill(0, ids, GREEDY, 0, 0, null);
      const row = (await gen.prefillMany([{ slot: 0, promptIds: ids, sampling: GREEDY, u: 0, loraSlot: 0 }]))[0]!;
      s.clear(0);
      const cleared = (await gen.prefillMany([{ slot: 0, promptIds: ids, sampling: GREEDY, u: 0, loraSlot: 0 }]))[0]!;
      gen.dispose();
      const [p] = await runAlone(P, ids);
      expect(Math.abs(row.logprob - p!.logprob)).toBeLessThan(1e-4);
      expect(row.token).toBe(p!.token);
      expect(cleared.token).toBe(withP.token); // rank 0 everywhere: the base
      expect(Math.abs(cleared.logprob - withP.logprob)).toBeLessThan(1e-6);
    } finally {
      s.dispose();
    }
  }, 60_000);

  test("bad input is refused with the reason", async () => {
    const gen = new KvCacheGenerator(model, { maxSlots: 2, maxContext: 32, loraSlots: slots });
    const plain = new KvCacheGenerator(model, { maxSlots: 2, maxContext: 32 });
    try {
      const item = (loraSlot: number) => ({ slot: 0, token: 5, position: 0, sampling: GREEDY, u: 0, loraSlot });
      await expect(gen.decode([item(-1), item(3)])).rejects.toThrow(/decode: row 1 has LoRA slot 3, not −1 \(base\) or one of 0…2/);
      await expect(gen.prefillMany([{ slot: 0, promptIds: [1, 2], sampling: GREEDY, u: 0, loraSlot: 7 }])).rejects.toThrow(/prefill: row 0 has LoRA slot 7/);
      await expect(plain.decode([item(0)])).rejects.toThrow(/decode: rows name LoRA slots but the generator has no loraSlots/);
      const lora = uploadAdapter(model, P);
      await expect(gen.decode([item(0)], 0, lora)).rejects.toThrow(/rows with LoRA slots cannot also run with a one-adapter lora set/);
      expect(() => new KvCacheGenerator(model, { maxSlots: 1, maxContext: 8, lora, loraSlots: slots })).toThrow(/do not go together/);
      releaseAdapter(model, lora);
      const big = randomLoadedAdapter(model.cfg, { rank: 16, targets: ["q_proj"], seed: 1, name: "big" });
      expect(() => slots.write(1, big)).toThrow(/adapter big has rank 16, above the largest rank a slot takes \(8; serve's --max-lora-rank\)/);
      expect(() => slots.write(3, P)).toThrow(/LoraSlots.write: slot 3 is not one of 0…2/);
      expect(() => new LoraSlots(model.rt, model.cfg, { slots: 0, maxRank: 8 })).toThrow(/slots must be an integer ≥ 1/);
      const empty = new LoraSlots(model.rt, model.cfg, { slots: 2, maxRank: 8 });
      const g2 = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 8, loraSlots: empty });
      await expect(g2.decode([item(0)])).rejects.toThrow(/no adapter was written into a LoRA slot yet/);
      g2.dispose();
    } finally {
      gen.dispose();
      plain.dispose();
    }
  });
});

// Prefill: runs of rows on one slot (a prompt's tokens) take dense per-run products (SGMV-style)
// instead of the per-row kernels; both must give the same y.
describe("per-run LoRA products (prefill) = the per-row kernels", () => {
  // 12 rows of P, 5 base rows, 16 of Q, 7 of P: 35 LoRA rows in 3 runs (mean 11.7 ≥ MIN_SEGMENT_ROWS).
  const rowSlots = Int32Array.from([...Array(12).fill(SLOT_P), ...Array(5).fill(-1), ...Array(16).fill(SLOT_Q), ...Array(7).fill(SLOT_P)]);

  test("LoraSlots.segments: the runs with the slots' ranks and scales; none for decode-like rows", () => {
    const segs = slots.segments(rowSlots)!;
    expect(segs.map((s) => [s.start, s.count, s.slot])).toEqual([[0, 12, SLOT_P], [17, 16, SLOT_Q], [33, 7, SLOT_P]]);
    const cols = (a: LoadedAdapter) => LORA_TARGETS.map((t) => (a.targets.includes(t) ? a.lora.rank : 0));
    expect(segs[0]!.ranks).toEqual(cols(P));
    expect(segs[1]!.ranks).toEqual(cols(Q));
    expect(segs[1]!.scale).toBeCloseTo(Q.scaling, 6);
    expect(segs[0]!.scale).toBeCloseTo(P.scaling, 6);
    expect(slots.segments(Int32Array.from([SLOT_P, -1, SLOT_Q, SLOT_P, SLOT_Q]))).toBeNull(); // one row each: per-row kernels
    expect(slots.segments(Int32Array.from([-1, -1, -1]))).toBeNull();
  });

  test("a prefill of long prompts (per-run products) gives each sequence what it gets alone", async () => {
    const seqs: [LoadedAdapter | null, number[]][] = [[P, prompt(10, 7)], [null, prompt(12, 8)], [Q, prompt(9, 9)]];
    // The packed prefill's rows: runs of 10 and 9 LoRA rows, so the generator takes the per-run path.
    expect(slots.segments(Int32Array.from(seqs.flatMap(([a, ids]) => ids.map(() => slotOf(a)))))).not.toBeNull();
    const gen = new KvCacheGenerator(model, { maxSlots: seqs.length, maxContext: 32, loraSlots: slots });
    try {
      const first = await gen.prefillMany(seqs.map(([a, ids], i) => ({ slot: i, promptIds: ids, sampling: GREEDY, u: 0, loraSlot: slotOf(a) })));
      expect(gen.prefillStats.steps).toBe(1);
      const rows: SampledRow[][] = first.map((r) => [r]);
      for (let step = 0; step < STEPS; step++) {
        const out = await gen.decode(seqs.map(([a, ids], i) => ({ slot: i, token: rows[i]!.at(-1)!.token, position: ids.length + step, sampling: GREEDY, u: 0, loraSlot: slotOf(a) })));
        out.forEach((r, i) => rows[i]!.push(r));
      }
      for (const [i, [a, ids]] of seqs.entries()) {
        const alone = await runAlone(a, ids);
        expect(rows[i]!.map((r) => r.token)).toEqual(alone.map((r) => r.token));
        for (const [t, r] of rows[i]!.entries()) expect(Math.abs(r.logprob - alone[t]!.logprob)).toBeLessThan(1e-4);
      }
    } finally {
      gen.dispose();
    }
  }, 120_000);

  for (const dtype of ["f32", "f16", "bf16"] as const) {
    test(`${dtype} slots: every group's y with runs equals the per-row y`, async () => {
      const rt = model.rt, T = rowSlots.length;
      const s2 = dtype === "f32" ? slots : new LoraSlots(rt, model.cfg, { slots: 3, maxRank: 8, dtype });
      if (s2 !== slots) for (const [s, a] of [[SLOT_P, P], [SLOT_Q, Q]] as const) { s2.acquire(a.dir); s2.write(s, a); }
      const rowsT = rt.upload("i32", [T], rowSlots);
      try {
        for (const [group, modules] of Object.entries(LORA_GROUPS) as [LoraGroup, readonly LoraTarget[]][]) {
          const inF = loraProjectionShape(model.cfg, modules[0]!).inFeatures;
          const outs = modules.map((m) => loraProjectionShape(model.cfg, m).outFeatures);
          const x = rt.upload("f32", [T, inF], randn(T * inF, 1, 11));
          const y0 = outs.map((o, i) => randn(T * o, 1, 20 + i));
          const run = async (segments: ReturnType<LoraSlots["segments"]>) => {
            const ys = outs.map((o, i) => rt.upload("f32", [T, o], y0[i]!));
            const h = rt.empty("f32", [T, modules.length * 8]);
            const rec = rt.recorder("segments");
            const l = s2.layer(1, rowsT, segments);
            linearsGatheredLoraForward(rec, x, ys, l.groups[group], l.gathered, h);
            rec.submit();
            const out = await Promise.all(ys.map((y) => rt.read(y)));
            rt.release(h, ...ys);
            return out;
          };
          const perRow = await run(null), perRun = await run(s2.segments(rowSlots));
          for (const [i, y] of perRun.entries()) {
            expect(relError(y, perRow[i]!)).toBeLessThan(1e-5);
            // Base rows keep their input exactly; adapted modules changed the LoRA rows.
            const o = outs[i]!;
            for (let t = 12; t < 17; t++) for (let c = 0; c < o; c++) expect(y[t * o + c]).toBe(Math.fround(y0[i]![t * o + c]!));
          }
          expect(perRun.some((y, i) => relError(y, y0[i]!) > 1e-3)).toBe(true);
          rt.release(x);
        }
      } finally {
        rt.release(rowsT);
        if (s2 !== slots) s2.dispose();
      }
    });
  }
});
