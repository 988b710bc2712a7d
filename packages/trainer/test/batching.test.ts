import { describe, expect, test } from "bun:test";
import { DataLoader, assembleBatch, firstFitPack, type Batch } from "../src/batching.ts";
import { Rng } from "../src/rng.ts";
import { IGNORE_INDEX, type TokenizedExample } from "../src/tokenize-conversation.ts";

/** Example k: ids 1000k + t, every token after the first a target (labels unshifted). */
function example(k: number, length: number, targetFrom = 1): TokenizedExample {
  const inputIds = Int32Array.from({ length }, (_, t) => 1000 * k + t);
  const labels = inputIds.map((id, t) => (t >= targetFrom ? id : IGNORE_INDEX));
  return { inputIds, labels, numTargets: length - targetFrom, truncated: false, source: { file: "f", line: k + 1 } };
}

function randomExamples(n: number, seed: number, maxLen: number): TokenizedExample[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, k) => example(k, 2 + rng.nextInt(maxLen - 1), 1 + rng.nextInt(2)));
}

/** Checks every invariant of a batch and returns the examples (by id) it holds. */
function checkBatch(batch: Batch, examples: readonly TokenizedExample[], padId: number): number[] {
  const { inputIds, labels, positions, seqIds, rows, rowLength } = batch;
  expect(inputIds.length).toBe(rows * rowLength);
  const seen: number[] = [];
  let targets = 0;
  for (let b = 0; b < rows; b++) {
    let t = b * rowLength;
    const end = (b + 1) * rowLength;
    while (t < end && seqIds[t] !== -1) {
      const seq = seqIds[t]!;
      const k = Math.floor(inputIds[t]! / 1000);
      const ex = examples[k]!;
      seen.push(k);
      for (let p = 0; p < ex.inputIds.length; p++, t++) {
        expect(seqIds[t]).toBe(seq); // one example, one sequence id
        expect(positions[t]).toBe(p); // positions restart at 0
        expect(inputIds[t]).toBe(ex.inputIds[p]!);
        // Shifted target: the next token of the same example, never of the neighbour.
        expect(labels[t]).toBe(p + 1 < ex.inputIds.length ? ex.labels[p + 1]! : IGNORE_INDEX);
        if (labels[t] !== IGNORE_INDEX) targets++;
      }
    }
    for (; t < end; t++) {
      expect([inputIds[t], labels[t], seqIds[t], positions[t]]).toEqual([padId, IGNORE_INDEX, -1, 0]);
    }
  }
  expect(new Set(seqIds.filter((s) => s >= 0)).size).toBe(batch.numSequences);
  expect(batch.numSequences).toBe(seen.length);
  expect(batch.numTargets).toBe(targets);
  // Sequence ids are unique across rows, so attention by seqId cannot cross rows either.
  expect([...new Set(seqIds.filter((s) => s >= 0))].sort((a, b) => a - b)).toEqual(seen.map((_, i) => i));
  return seen;
}

describe("padding", () => {
  test("right padding to the longest row, labels shifted, pads masked", () => {
    const examples = [example(0, 5), example(1, 3, 2)];
    const batch = assembleBatch([[examples[0]!], [examples[1]!]], { padId: 7 });
    expect([batch.rows, batch.rowLength]).toEqual([2, 5]);
    expect([...batch.inputIds]).toEqual([0, 1, 2, 3, 4, 1000, 1001, 1002, 7, 7]);
    expect([...batch.labels]).toEqual([1, 2, 3, 4, -100, -100, 1002, -100, -100, -100]);
    expect([...batch.positions]).toEqual([0, 1, 2, 3, 4, 0, 1, 2, 0, 0]);
    expect([...batch.seqIds]).toEqual([0, 0, 0, 0, 0, 1, 1, 1, -1, -1]);
    expect([batch.numTargets, batch.numSequences, batch.numTokens]).toEqual([5, 2, 8]);
    expect(assembleBatch([[examples[1]!]], { padId: 0, padToMultipleOf: 4 }).rowLength).toBe(4);
  });
});

describe("packing never crosses examples", () => {
  test("first-fit matches a naive first-fit and respects capacity", () => {
    const rng = new Rng(3);
    const lengths = Array.from({ length: 300 }, () => 1 + rng.nextInt(64));
    const rows = firstFitPack(lengths, 64);
    const naive: number[][] = [];
    const free: number[] = [];
    lengths.forEach((len, i) => {
      const r = free.findIndex((f) => f >= len);
      if (r < 0) {
        naive.push([i]);
        free.push(64 - len);
      } else {
        naive[r]!.push(i);
        free[r]! -= len;
      }
    });
    expect(rows).toEqual(naive);
    expect(rows.flat().sort((a, b) => a - b)).toEqual(lengths.map((_, i) => i));
    expect(() => firstFitPack([65], 64)).toThrow("more than the packing length 64");
  });

  test("packed batches: positions restart, sequence ids separate, every example once per epoch", () => {
    const examples = randomExamples(120, 5, 40);
    const loader = new DataLoader(examples, { mode: "pack", batchSize: 3, maxLength: 64, seed: 11, padId: 9 });
    for (let epoch = 0; epoch < 2; epoch++) {
      const seen: number[] = [];
      const batches = loader.batchesInEpoch(epoch);
      for (let i = 0; i < batches; i++) {
        const { batch, position } = loader.next();
        expect(position).toEqual({ epoch, step: i });
        expect(batch.rowLength).toBeLessThanOrEqual(64);
        seen.push(...checkBatch(batch, examples, 9));
      }
      expect(seen.sort((a, b) => a - b)).toEqual(examples.map((_, k) => k));
      // Packing is dense: fewer rows than examples.
      expect(batches * 3).toBeLessThan(examples.length);
    }
  });

  test("padded batches satisfy the same invariants", () => {
    const examples = randomExamples(25, 6, 30);
    const loader = new DataLoader(examples, { mode: "pad", batchSize: 4, maxLength: 64, seed: 1, padId: 0 });
    expect(loader.batchesInEpoch(0)).toBe(7);
    const seen: number[] = [];
    for (let i = 0; i < 7; i++) seen.push(...checkBatch(loader.next().batch, examples, 0));
    expect(seen.sort((a, b) => a - b)).toEqual(examples.map((_, k) => k));
    expect(new DataLoader(examples, { mode: "pad", batchSize: 4, maxLength: 64, seed: 1, padId: 0, dropLast: true }).batchesInEpoch(0)).toBe(6);
  });
});

describe("deterministic order and exact resume", () => {
  const examples = randomExamples(50, 8, 20);
  const make = (seed = 42) => new DataLoader(examples, { mode: "pack", batchSize: 2, maxLength: 48, seed, padId: 0 });

  test("same seed, same order; epochs and seeds differ", () => {
    expect(make().epochOrder(0)).toEqual(make().epochOrder(0));
    expect(make().epochOrder(0)).not.toEqual(make().epochOrder(1));
    expect(make().epochOrder(0)).not.toEqual(make(43).epochOrder(0));
    expect(new DataLoader(examples, { mode: "pad", batchSize: 1, maxLength: 48, seed: 0, padId: 0, shuffle: false }).epochOrder(0)).toEqual(examples.map((_, i) => i));
  });

  test("a loader resumed at a saved position yields the same batches, across epoch boundaries", () => {
    const reference = make();
    const perEpoch = reference.batchesInEpoch(0);
    const total = perEpoch + reference.batchesInEpoch(1) + 3;
    const stream = Array.from({ length: total }, () => reference.next());
    for (const stopAt of [1, perEpoch - 1, perEpoch, perEpoch + 2]) {
      const first = make();
      for (let i = 0; i < stopAt; i++) first.next();
      const saved = JSON.parse(JSON.stringify(first.position));
      const resumed = make();
      resumed.seek(saved);
      for (let i = stopAt; i < total; i++) {
        const { batch, position } = resumed.next();
        expect(position).toEqual(stream[i]!.position);
        expect(batch).toEqual(stream[i]!.batch);
      }
    }
  });

  test("positions past the data are refused; the end of an epoch is the start of the next", () => {
    const loader = make();
    const n = loader.batchesInEpoch(0);
    loader.seek({ epoch: 0, step: n });
    expect(loader.position).toEqual({ epoch: 1, step: 0 });
    expect(() => loader.seek({ epoch: 0, step: n + 1 })).toThrow("past the end of epoch 0");
    expect(() => loader.seek({ epoch: -1, step: 0 })).toThrow("invalid data position");
  });

  test("totalBatches sums epochs; evalBatches cover the data once in order", () => {
    const loader = make();
    expect(loader.totalBatches(3)).toBe(loader.batchesInEpoch(0) + loader.batchesInEpoch(1) + loader.batchesInEpoch(2));
    const evals = DataLoader.evalBatches(examples, { mode: "pad", batchSize: 8, maxLength: 48, padId: 0 });
    const order = evals.flatMap((b) => checkBatch(b, examples, 0));
    expect(order).toEqual(examples.map((_, i) => i));
  });

  test("an example longer than maxLength is refused with the fix", () => {
    expect(() => new DataLoader([example(0, 10)], { mode: "pad", batchSize: 1, maxLength: 8, seed: 0, padId: 0 })).toThrow("tokenize with the same maxLength");
  });
});
