// KvCacheGenerator.decode records its step once per (batch size, top-N, LoRA set) and re-submits
// it. The replayed path must return exactly what a freshly recorded step returns: same kernels,
// same shapes, only the inputs now travel through persistent buffers. Checked on a batching run
// that changes B (2 → 1 → 3 → 2), gives a released slot to a new sequence, mixes greedy and
// seeded sampling rows, and turns top-N on and off; with and without LoRA; and against what the
// generator returned before decode was replayed (fixtures/decode-scenario.json).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { KvCacheGenerator, uniformStream } from "../src/gpu/generator.ts";
import type { LayerLora } from "../src/gpu/lora.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { gemvPrologueFusion } from "../src/gpu/decoder-layer.ts";
import { gemvGrouping } from "@tuneloom/kernels";
import { FIXTURE, GREEDY, releaseLora, runScenario, SAMPLED, type ScenarioResult, tinyLora, writeScenarioModel } from "./decode-scenario.ts";

let dir: { dir: string; cleanup: () => void };
let model: GpuModel;
let lora: LayerLora[];

beforeAll(async () => {
  dir = writeScenarioModel();
  model = await GpuModel.load(dir.dir, { weightDtype: "f32" }); // the fixture was made with f32 weights (tensor-core devices default to f16)
  lora = tinyLora(model);
});
afterAll(() => {
  if (model && lora) releaseLora(model, lora);
  dir?.cleanup();
});

const fixture = JSON.parse(readFileSync(FIXTURE, "utf8")) as { plain: ScenarioResult; lora: ScenarioResult };

/** Tokens identical; logprobs equal up to float32 rounding (identical in practice: same kernels). */
function expectSameRows(got: ScenarioResult, want: ScenarioResult, tol = 0) {
  expect(got.greedyIds).toEqual(want.greedyIds);
  expect(got.sampledIds).toEqual(want.sampledIds);
  expect(got.rows.map((r) => r.token)).toEqual(want.rows.map((r) => r.token));
  expect(got.rows.map((r) => r.top?.map((t) => t.token) ?? null)).toEqual(want.rows.map((r) => r.top?.map((t) => t.token) ?? null));
  got.rows.forEach((r, i) => {
    const w = want.rows[i]!;
    expect(Math.abs(r.logprob - w.logprob)).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(w.logprob)));
    r.top?.forEach((t, j) => expect(Math.abs(t.logprob - w.top![j]!.logprob)).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(w.top![j]!.logprob))));
  });
}

describe("replayed decode step", () => {
  test("batching run (B 2 → 1 → 3 → 2, slot reuse, sampling, top-N): replayed = recorded afresh", async () => {
    const replayed = await runScenario(model, { replay: true });
    const fresh = await runScenario(model, { replay: false });
    expect(replayed.rows.some((r) => r.top)).toBe(true);
    expectSameRows(replayed, fresh);
  });

  test("with LoRA: replayed = recorded afresh", async () => {
    const replayed = await runScenario(model, { replay: true, lora });
    const fresh = await runScenario(model, { replay: false, lora });
    expectSameRows(replayed, fresh);
    // LoRA changes the outputs, so the recording really binds the adapter.
    expect(replayed.rows.map((r) => r.token)).not.toEqual((await runScenario(model, { replay: true })).rows.map((r) => r.token));
  });

  test("each replayed step after a plan's first submits the command buffer encoded during the step before", async () => {
    const gen = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 16 });
    try {
      const slot = gen.acquireSlot()!;
      let token = (await gen.prefill(slot, [3, 9, 27], GREEDY, 0)).token;
      const before = model.rt.recordStats.preparedSubmits;
      for (let i = 0; i < 5; i++) token = (await gen.decode([{ slot, token, position: 3 + i, sampling: GREEDY, u: 0 }]))[0]!.token;
      expect(model.rt.recordStats.preparedSubmits - before).toBe(4);
    } finally {
      gen.dispose();
    }
  });

  // Prefill is recorded afresh every time (its shape varies); with cached bindings a prompt of a
  // length seen before creates no bind group (~11-55 µs each through dawn.node; 364 a SmolLM2 prefill).
  test("a second prefill of the same length creates no bind group", async () => {
    const gen = new KvCacheGenerator(model, { maxSlots: 2, maxContext: 16 });
    try {
      const [a, b] = [gen.acquireSlot()!, gen.acquireSlot()!];
      const before = model.rt.bindings.stats.bindGroups;
      const first = await gen.prefill(a, [3, 9, 27, 5], GREEDY, 0);
      const groups = model.rt.bindings.stats.bindGroups;
      expect(groups).toBeGreaterThan(before); // this generator's KV cache is new: its bind groups are made (and cached)
      const second = await gen.prefill(b, [3, 9, 27, 5], GREEDY, 0);
      expect(model.rt.bindings.stats.bindGroups).toBe(groups);
      expect(second.token).toBe(first.token); // same prompt, other slot: same row
      expect(Math.abs(second.logprob - first.logprob)).toBeLessThan(1e-6);
    } finally {
      gen.dispose();
    }
  });

  test("matches what decode returned before it was replayed (fixture)", async () => {
    expectSameRows(await runScenario(model), fixture.plain, 1e-5);
    expectSameRows(await runScenario(model, { lora }), fixture.lora, 1e-5);
  });

  test("one recording per (B, top-N), reused, evicted least recently used, freed on dispose", async () => {
    // Warm-up: the kernels' lazily made stand-in buffers exist before the memory baseline.
    const warm = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 8 });
    await warm.decode([{ slot: 0, token: 1, position: 0, sampling: GREEDY, u: 0 }]);
    warm.dispose();
    const inUse = model.rt.memory.inUseBytes;
    const gen = new KvCacheGenerator(model, { maxSlots: 3, maxContext: 32, replayCacheSize: 2 });
    const slots = [gen.acquireSlot()!, gen.acquireSlot()!, gen.acquireSlot()!];
    const u = uniformStream(5);
    const last = await Promise.all(slots.map(async (s, i) => (await gen.prefill(s, [3 + i, 9, 27], GREEDY, 0)).token));
    const pos = [3, 3, 3];
    const step = async (rows: number[], topN = 0) => {
      const out = await gen.decode(rows.map((b) => ({ slot: slots[b]!, token: last[b]!, position: pos[b]!, sampling: SAMPLED, u: u() })), topN);
      rows.forEach((b, i) => {
        last[b] = out[i]!.token;
        pos[b]!++;
      });
      return out;
    };
    const before = model.rt.recordStats.dispatches;
    await step([0, 1]);
    const perStep = model.rt.recordStats.dispatches - before;
    expect(perStep).toBeGreaterThan(10);
    expect(gen.recordedSteps).toBe(1);
    for (let i = 0; i < 3; i++) await step([0, 1]);
    expect(model.rt.recordStats.dispatches - before).toBe(perStep); // replayed: nothing recorded
    await step([2]);
    expect((await step([0, 1, 2], 2))[0]!.top).toHaveLength(2);
    expect(gen.recordedSteps).toBe(2); // B=2 was least recently used: dropped
    await step([1, 0]);
    expect(gen.recordedSteps).toBe(2);
    expect(model.rt.memory.inUseBytes).toBeGreaterThan(inUse);
    gen.dispose();
    expect(gen.recordedSteps).toBe(0);
    expect(model.rt.memory.inUseBytes).toBe(inUse); // every buffer of the recordings given back
    await expect(step([0])).rejects.toThrow(/disposed/);
  });

  test("a changed LoRA set drops the recordings that bound the old one", async () => {
    const run = async (replay: boolean) => {
      const gen = new KvCacheGenerator(model, { maxSlots: 1, maxContext: 16, lora, replay });
      let token = (await gen.prefill(0, [6, 5, 4], GREEDY, 0)).token;
      const out: number[] = [];
      for (let i = 0; i < 4; i++) {
        if (i === 2) gen.opts.lora = undefined; // adapter removed between steps
        token = (await gen.decode([{ slot: 0, token, position: 3 + i, sampling: GREEDY, u: 0 }], 1))[0]!.token;
        out.push(token);
        if (replay) expect(gen.recordedSteps).toBe(1);
      }
      gen.dispose();
      return out;
    };
    expect(await run(true)).toEqual(await run(false));
  });

  test("concurrent decode calls are serialised, not interleaved", async () => {
    const mk = () => new KvCacheGenerator(model, { maxSlots: 2, maxContext: 16 });
    const run = async (gen: KvCacheGenerator, together: boolean) => {
      const [a, b] = [gen.acquireSlot()!, gen.acquireSlot()!];
      const ta = (await gen.prefill(a, [1, 2, 3], GREEDY, 0)).token, tb = (await gen.prefill(b, [4, 5], GREEDY, 0)).token;
      const calls = [
        () => gen.decode([{ slot: a, token: ta, position: 3, sampling: GREEDY, u: 0 }], 1),
        () => gen.decode([{ slot: b, token: tb, position: 2, sampling: GREEDY, u: 0 }], 1),
      ];
      const out = together ? await Promise.all(calls.map((c) => c())) : [await calls[0]!(), await calls[1]!()];
      gen.dispose();
      return out;
    };
    expect(await run(mk(), true)).toEqual(await run(mk(), false));
  });
});

// Decode's RMSNorm and SwiGLU fused into the GEMVs that read them (decoder-layer.ts
// gemvPrologueFusion, kernels' GemvPrologue): the same rows as the separate kernels up to float32
// rounding, fewer dispatches recorded, and its replayed step equal to a fresh one. With LoRA on
// q_proj and down_proj those groups keep the separate kernels (their LoRA h reads xn / act) while
// gate/up still fuse.
describe("decode with the RMSNorm and SwiGLU fused into its GEMVs", () => {
  const was = { ...gemvPrologueFusion }, grouped = gemvGrouping.enabled;
  const counted = async (fused: { norm: boolean; swiglu: boolean; act: boolean }, opts: Parameters<typeof runScenario>[1]) => {
    Object.assign(gemvPrologueFusion, fused);
    const d0 = model.rt.recordStats.dispatches;
    const result = await runScenario(model, opts);
    return { result, dispatches: model.rt.recordStats.dispatches - d0 };
  };
  const restore = () => {
    Object.assign(gemvPrologueFusion, was);
    gemvGrouping.enabled = grouped;
  };
  const off = { norm: false, swiglu: false, act: false };
  test("same tokens, logprobs within 1e-5, fewer dispatches; replayed = fresh; with and without LoRA", async () => {
    try {
      for (const withLora of [false, true]) {
        const opts = { replay: false, ...(withLora ? { lora } : {}) };
        const plain = await counted(off, opts), fused = await counted({ norm: true, swiglu: true, act: false }, opts);
        expect(fused.dispatches).toBeLessThan(plain.dispatches);
        expectSameRows(fused.result, plain.result, 1e-5);
        expectSameRows((await counted({ norm: true, swiglu: true, act: false }, { ...opts, replay: true })).result, fused.result);
      }
    } finally {
      restore();
    }
  }, 120_000);

  // With the grouped GEMVs on (session 16): on GPUs the norm and q/k/v (gate/up) are one grouped
  // dispatch (kernels' gemvGroup with a GemvNorm), and with `act` gate/up and SwiGLU too
  // (gemvGateUpSwiglu, with or without the norm in front); on CPU drivers the GEMVs take their row
  // form, which does not group, so there the norm fuses per product and `act` declines.
  for (const fused of [{ norm: true, swiglu: false, act: false }, { norm: true, swiglu: false, act: true }, { norm: false, swiglu: false, act: true }]) {
    const name = Object.entries(fused).filter(([, on]) => on).map(([k]) => k).join(" + ");
    test(`grouped GEMVs on, ${name}: same rows as the separate kernels, no more dispatches; replayed = fresh; with and without LoRA`, async () => {
      try {
        gemvGrouping.enabled = true;
        for (const withLora of [false, true]) {
          const opts = { replay: false, ...(withLora ? { lora } : {}) };
          const plain = await counted(off, opts), with_ = await counted(fused, opts);
          if (fused.norm || model.rt.caps.isSoftware === false) expect(with_.dispatches).toBeLessThan(plain.dispatches);
          else expect(with_.dispatches).toBe(plain.dispatches); // act alone declines on CPU drivers
          expectSameRows(with_.result, plain.result, 1e-5);
          expectSameRows((await counted(fused, { ...opts, replay: true })).result, with_.result);
        }
      } finally {
        restore();
      }
    }, 120_000);
  }
});
