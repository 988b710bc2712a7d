import { afterAll, describe, expect, test } from "bun:test";
import {
  crossEntropy, crossEntropyChunk, crossEntropyOnLabelledRows, crossEntropyOnePass, getRuntime, IGNORE_INDEX, labelledRows, logitsRows, readLoss, type DType,
} from "../src/index.ts";
import { fromBf16Bits, fromF16Bits, randn, relError, rng, toBf16Bits, toF16Bits } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

/** float64 reference: loss sum, count, per-token nll, dh and dW of scale·Σ nll. */
function crossEntropyRef(h: Float32Array, w: Float32Array, labels: Int32Array, T: number, C: number, V: number, scale: number) {
  const nll = new Float64Array(T);
  const dh = new Float64Array(T * C);
  const dw = new Float64Array(V * C);
  let sum = 0, count = 0;
  const logits = new Float64Array(V);
  for (let t = 0; t < T; t++) {
    const label = labels[t]!;
    if (label === IGNORE_INDEX) continue;
    let mx = -Infinity;
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += h[t * C + c]! * w[v * C + c]!;
      logits[v] = s;
      mx = Math.max(mx, s);
    }
    let se = 0;
    for (let v = 0; v < V; v++) se += Math.exp(logits[v]! - mx);
    const lse = mx + Math.log(se);
    nll[t] = lse - logits[label]!;
    sum += nll[t]!;
    count++;
    for (let v = 0; v < V; v++) {
      const d = (Math.exp(logits[v]! - lse) - (v === label ? 1 : 0)) * scale;
      for (let c = 0; c < C; c++) {
        dh[t * C + c]! += d * w[v * C + c]!;
        dw[v * C + c]! += d * h[t * C + c]!;
      }
    }
  }
  return { sum, count, nll, dh, dw };
}

function makeLabels(T: number, V: number, seed: number, ignoreEvery = 5): Int32Array {
  const r = rng(seed);
  const labels = new Int32Array(T);
  for (let t = 0; t < T; t++) labels[t] = t % ignoreEvery === 2 ? IGNORE_INDEX : r.int(0, V);
  labels[0] = V - 1; // the last column: inside the last, partial chunk
  return labels;
}

/** Weights as stored (rounded to dtype) plus their exact f32 values for the reference. */
function makeWeights(dtype: DType, n: number, scale: number) {
  const w32 = randn(n, scale);
  if (dtype === "f32") return { data: w32 as ArrayBufferView, values: w32 };
  const bits = dtype === "bf16" ? toBf16Bits(w32) : toF16Bits(w32);
  return { data: bits as ArrayBufferView, values: dtype === "bf16" ? fromBf16Bits(bits) : fromF16Bits(bits) };
}

describe("crossEntropy against float64", () => {
  test("f32 head: loss, nll, dh, dW; chunks not dividing V, V not a multiple of 64, ignored rows", async () => {
    const T = 37, C = 48, V = 1000, chunk = 192;
    const h = randn(T * C), { data, values: w } = makeWeights("f32", V * C, 0.3);
    const labels = makeLabels(T, V, 11);
    const count = labels.filter((l) => l !== IGNORE_INDEX).length;
    const scale = 1 / (2 * count); // as if a second micro-batch of the same size followed
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("f32", [V, C], data), tl = rt.upload("i32", [T], labels);
    const loss = rt.empty("f32", [2]), nll = rt.empty("f32", [T]), dh = rt.empty("f32", [T, C]), dw = rt.empty("f32", [V, C]);
    const rec = rt.recorder("ce");
    crossEntropy(rec, { h: th, w: tw, labels: tl, loss, nll, dh, dw, scale, chunk });
    rec.submit();
    const ref = crossEntropyRef(h, w, labels, T, C, V, scale);
    const l = await readLoss(rt, loss);
    expect(l.count).toBe(count);
    expect(Math.abs(l.sum - ref.sum) / ref.sum).toBeLessThan(1e-5);
    expect(relError(await rt.read(nll), ref.nll)).toBeLessThan(1e-5);
    expect(relError(await rt.read(dh), ref.dh)).toBeLessThan(1e-5);
    expect(relError(await rt.read(dw), ref.dw)).toBeLessThan(1e-5);

    // a second micro-batch accumulates loss and gradients
    const rec2 = rt.recorder("ce accumulate");
    crossEntropy(rec2, { h: th, w: tw, labels: tl, loss, dh, dw, scale, chunk, accumulateLoss: true, accumulateDh: true, accumulateDw: true });
    rec2.submit();
    const l2 = await readLoss(rt, loss);
    expect(l2.count).toBe(2 * count);
    expect(Math.abs(l2.sum - 2 * ref.sum) / ref.sum).toBeLessThan(1e-5);
    expect(relError(await rt.read(dh), ref.dh.map((x) => 2 * x))).toBeLessThan(1e-5);
    expect(relError(await rt.read(dw), ref.dw.map((x) => 2 * x))).toBeLessThan(1e-5);
    rec.release();
    rec2.release();
    rt.release(th, tw, tl, loss, nll, dh, dw);
  });

  for (const dtype of ["bf16", "f16"] as const) {
    test(`tied ${dtype} embedding as the head: loss and dh`, async () => {
      const T = 20, C = 64, V = 777, chunk = dtype === "bf16" ? 256 : 100000; // f16: one chunk
      const h = randn(T * C), { data, values: w } = makeWeights(dtype, V * C, 0.2);
      const labels = makeLabels(T, V, 12, 4);
      const count = labels.filter((l) => l !== IGNORE_INDEX).length;
      const th = rt.upload("f32", [T, C], h), tw = rt.upload(dtype, [V, C], data), tl = rt.upload("i32", [T], labels);
      const loss = rt.empty("f32", [2]), dh = rt.empty("f32", [T, C]);
      const rec = rt.recorder("ce16");
      crossEntropy(rec, { h: th, w: tw, labels: tl, loss, dh, scale: 1 / count, chunk });
      rec.submit();
      const ref = crossEntropyRef(h, w, labels, T, C, V, 1 / count);
      const l = await readLoss(rt, loss);
      expect(l.count).toBe(count);
      // the stored 16-bit values are the reference's weights: only f32 math separates them
      expect(Math.abs(l.sum - ref.sum) / ref.sum).toBeLessThan(2e-3);
      expect(relError(await rt.read(dh), ref.dh)).toBeLessThan(2e-3);
      rec.release();
      rt.release(th, tw, tl, loss, dh);
    });
  }

  // dh without dW takes the one-pass backward (dh accumulated during the forward sweep, no logits
  // recompute); the three-GEMM form must agree with it, and both with float64, for every head dtype,
  // several chunks (labels in each), ignored rows, an out-of-range label and dh accumulated.
  for (const dtype of ["f32", "bf16", "f16"] as const) {
    test(`${dtype} head: the one-pass dh equals the three-GEMM dh and float64 (chunks, ignored rows, accumulateDh)`, async () => {
      const T = 48, C = 64, V = 700, chunk = 192;
      const h = dtype === "f32" ? randn(T * C) : fromF16Bits(toF16Bits(randn(T * C)));
      const { data, values: w } = makeWeights(dtype, V * C, 0.2);
      const labels = makeLabels(T, V, 21, 5);
      const dh0 = randn(T * C, 0.1);
      const th = rt.upload("f32", [T, C], h), tw = rt.upload(dtype, [V, C], data), tl = rt.upload("i32", [T], labels);
      const run = async (onePass: boolean) => {
        const was = crossEntropyOnePass.enabled;
        crossEntropyOnePass.enabled = onePass;
        const loss = rt.empty("f32", [2]), dh = rt.upload("f32", [T, C], dh0);
        const rec = rt.recorder(`ce one pass ${onePass}`);
        try {
          crossEntropy(rec, { h: th, w: tw, labels: tl, loss, dh, scale: 0.25, chunk, accumulateDh: true });
        } finally {
          crossEntropyOnePass.enabled = was;
        }
        rec.submit();
        const out = { loss: await readLoss(rt, loss), dh: await rt.read(dh) };
        rec.release();
        rt.release(loss, dh);
        return out;
      };
      const one = await run(true), three = await run(false);
      const ref = crossEntropyRef(h, w, labels, T, C, V, 0.25);
      const tol = dtype === "f32" ? 1e-5 : 2e-3;
      expect(relError(one.dh, ref.dh.map((x, i) => x + dh0[i]!))).toBeLessThan(tol);
      expect(relError(one.dh, three.dh)).toBeLessThan(tol);
      expect(one.loss.sum).toBe(three.loss.sum);
      // An out-of-range label gets dh = scale·Σ softmax·W in both forms (and a NaN loss).
      const bad = labels.slice();
      bad[7] = V + 5;
      rt.write(tl, bad);
      const oneBad = await run(true), threeBad = await run(false);
      expect(Number.isNaN(oneBad.loss.sum)).toBe(true);
      expect(relError(oneBad.dh.subarray(7 * C, 8 * C), threeBad.dh.subarray(7 * C, 8 * C))).toBeLessThan(tol);
      rt.release(th, tw, tl);
    });
  }

  // Shapes in multiples of 16 with an f16 head and summed-loss units (scale 1): on a device with
  // subgroup matrices the logits and dh products run on tensor cores (h and dlogits in f16).
  test("f16 head, scale 1, tensor-core-sized shapes: loss, dh and dW accumulated (two chunks; dW on tensor cores where they exist)", async () => {
    const T = 64, C = 96, V = 1024, chunk = 512;
    const { data, values: w } = makeWeights("f16", V * C, 0.2);
    const h = fromF16Bits(toF16Bits(randn(T * C))); // exactly representable in f16
    const labels = makeLabels(T, V, 14, 4);
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("f16", [V, C], data), tl = rt.upload("i32", [T], labels);
    const dw0 = randn(V * C, 0.01);
    const loss = rt.empty("f32", [2]), dh = rt.upload("f32", [T, C], randn(T * C)), dw = rt.upload("f32", [V, C], dw0);
    const rec = rt.recorder("ce tc");
    crossEntropy(rec, { h: th, w: tw, labels: tl, loss, dh, dw, scale: 1, chunk, accumulateDw: true });
    rec.submit();
    const ref = crossEntropyRef(h, w, labels, T, C, V, 1);
    const l = await readLoss(rt, loss);
    expect(Math.abs(l.sum - ref.sum) / ref.sum).toBeLessThan(2e-3);
    expect(relError(await rt.read(dh), ref.dh)).toBeLessThan(2e-3);
    expect(relError(await rt.read(dw), ref.dw.map((x, i) => x + dw0[i]!))).toBeLessThan(2e-3);
    rec.release();
    rt.release(th, tw, tl, loss, dh, dw);
  });

  test("finite differences of the GPU loss w.r.t. h match dh", async () => {
    const T = 6, C = 16, V = 300, chunk = 128;
    const h = randn(T * C), { data } = makeWeights("f32", V * C, 0.5);
    const labels = makeLabels(T, V, 13, 4);
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("f32", [V, C], data), tl = rt.upload("i32", [T], labels);
    const loss = rt.empty("f32", [2]), dh = rt.empty("f32", [T, C]);
    const rec = rt.recorder("ce fd");
    crossEntropy(rec, { h: th, w: tw, labels: tl, loss, dh, scale: 1, chunk });
    rec.submit();
    const grad = await rt.read(dh);
    const lossAt = async (x: Float32Array) => {
      rt.write(th, x);
      const r = rt.recorder("ce fd probe");
      crossEntropy(r, { h: th, w: tw, labels: tl, loss, chunk });
      r.submit();
      const { sum } = await readLoss(rt, loss);
      r.release();
      return sum;
    };
    const eps = 1e-2;
    const fd: number[] = [], an: number[] = [];
    for (const i of [0, 5, 17, 40, 63, 80, 95]) {
      const xp = h.slice(), xm = h.slice();
      xp[i]! += eps;
      xm[i]! -= eps;
      fd.push(((await lossAt(xp)) - (await lossAt(xm))) / (2 * eps));
      an.push(grad[i]!);
    }
    expect(relError(an, fd)).toBeLessThan(5e-3);
    rec.release();
    rt.release(th, tw, tl, loss, dh);
  });

  test("non-finite loss sets the flag: a label outside [0, V), a NaN in h", async () => {
    const T = 4, C = 8, V = 100;
    const h = randn(T * C);
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("f32", [V, C], randn(V * C));
    const tl = rt.upload("i32", [T], new Int32Array([1, 2, V, 3])); // V is out of range
    const loss = rt.empty("f32", [2]), flag = rt.zeros("u32", [1]);
    let rec = rt.recorder("ce bad label");
    crossEntropy(rec, { h: th, w: tw, labels: tl, loss, nonFinite: flag });
    rec.submit();
    expect(Number.isNaN((await readLoss(rt, loss)).sum)).toBe(true);
    expect((await rt.readU32(flag))[0]).toBe(1);
    rec.release();

    rt.write(tl, new Int32Array([1, 2, 3, 4]));
    rt.write(flag, new Uint32Array([0]));
    rec = rt.recorder("ce good");
    crossEntropy(rec, { h: th, w: tw, labels: tl, loss, nonFinite: flag });
    rec.submit();
    expect(Number.isFinite((await readLoss(rt, loss)).sum)).toBe(true);
    expect((await rt.readU32(flag))[0]).toBe(0);
    h[3] = NaN;
    rt.write(th, h);
    rec.submit(); // the same recording again, now over a NaN
    expect((await rt.readU32(flag))[0]).toBe(1);
    rec.release();
    rt.release(th, tw, tl, loss, flag);
  });

  test("argument errors name the kernel", () => {
    const th = rt.empty("f32", [4, 8]), tw = rt.empty("f32", [10, 9]), tl = rt.empty("i32", [4]), loss = rt.empty("f32", [2]);
    const rec = rt.recorder();
    expect(() => crossEntropy(rec, { h: th, w: tw, labels: tl, loss })).toThrow(/crossEntropy: h has 8 channels, w has 9/);
    const tw2 = rt.empty("f32", [10, 8]), dh = rt.empty("f32", [4, 8]);
    expect(() => crossEntropy(rec, { h: th, w: tw2, labels: tl, loss, dh })).toThrow(/crossEntropy: pass scale/);
  });
});

describe("chunking", () => {
  test("chunk starts are 256-byte aligned in W for real model shapes", () => {
    for (const [C, dtype] of [[896, "bf16"], [576, "bf16"], [4096, "f32"], [3584, "f16"], [72, "bf16"], [13, "f16"]] as const) {
      const n = crossEntropyChunk(rt, 64, 151936, C, dtype, 10000);
      expect((n * C * (dtype === "f32" ? 4 : 2)) % 256).toBe(0);
      expect(n).toBeLessThanOrEqual(10000);
    }
  });
});

describe("logitsRows", () => {
  test("selected rows of h·Wᵀ (bf16 W)", async () => {
    const T = 9, C = 32, V = 200;
    const h = randn(T * C), { data, values: w } = makeWeights("bf16", V * C, 1);
    const rows = [8, 3, 0];
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("bf16", [V, C], data), out = rt.empty("f32", [rows.length, V]);
    const rec = rt.recorder("logitsRows");
    logitsRows(rec, th, tw, rows, out);
    rec.submit();
    const ref = new Float64Array(rows.length * V);
    rows.forEach((r, i) => {
      for (let v = 0; v < V; v++) {
        let s = 0;
        for (let c = 0; c < C; c++) s += h[r * C + c]! * w[v * C + c]!;
        ref[i * V + v] = s;
      }
    });
    expect(relError(await rt.read(out), ref)).toBeLessThan(1e-5);
    rec.release();
    rt.release(th, tw, out);
  });
});

describe("crossEntropyOnLabelledRows (the head only where there is a label)", () => {
  test("labelledRows: labelled rows first, padded to 16 with at least one unlabelled row, and every row's index", () => {
    const labels = Int32Array.from([-100, 5, -100, 7, 9, -100]);
    const r = labelledRows(labels);
    expect(r.labelled).toBe(3);
    expect(r.rows.length).toBe(16);
    expect([...r.rows.slice(0, 3)]).toEqual([1, 3, 4]);
    expect([...r.rowLabels.slice(0, 4)]).toEqual([5, 7, 9, IGNORE_INDEX]);
    expect(r.rowLabels.slice(3).every((l) => l === IGNORE_INDEX)).toBe(true);
    expect([...r.index]).toEqual([3, 0, 3, 1, 2, 3]);
    expect(labelledRows(new Int32Array(16).fill(1)).rows.length).toBe(32); // 16 labelled + a padding row
  });

  test("answer-only labels: loss, nll and dh equal crossEntropy on every row, against float64", async () => {
    const T = 75, C = 32, V = 300;
    const h = randn(T * C), { data, values: w } = makeWeights("f32", V * C, 0.3);
    // A prompt then an answer: labels on the last 5 of every 15 rows (a third).
    const labels = Int32Array.from({ length: T }, (_, t) => (t % 15 >= 10 ? (t * 37) % V : IGNORE_INDEX));
    const count = labels.filter((l) => l !== IGNORE_INDEX).length;
    expect(count).toBe(25);
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("f32", [V, C], data), tl = rt.upload("i32", [T], labels);
    const outs = () => ({ loss: rt.zeros("f32", [2]), nll: rt.upload("f32", [T], randn(T)), dh: rt.upload("f32", [T, C], randn(T * C)) });
    const compact = outs(), full = outs();
    const rec = rt.recorder("ce labelled rows");
    const scratch = crossEntropyOnLabelledRows(rec, { h: th, w: tw, labels: tl, ...compact, scale: 0.5, chunk: 128 }, labels);
    crossEntropy(rec, { h: th, w: tw, labels: tl, ...full, scale: 0.5, chunk: 128 });
    rec.submit();
    expect(scratch.length).toBeGreaterThan(0); // the compact path ran
    const ref = crossEntropyRef(h, w, labels, T, C, V, 0.5);
    for (const o of [compact, full]) {
      const l = await readLoss(rt, o.loss);
      expect(l.count).toBe(count);
      expect(Math.abs(l.sum - ref.sum) / ref.sum).toBeLessThan(1e-5);
      expect(relError(await rt.read(o.nll), ref.nll)).toBeLessThan(1e-5); // zeros at unlabelled rows
      expect(relError(await rt.read(o.dh), ref.dh)).toBeLessThan(1e-5);
    }
    const dhC = await rt.read(compact.dh);
    for (let t = 0; t < T; t++) if (labels[t] === IGNORE_INDEX) for (let c = 0; c < C; c++) expect(dhC[t * C + c]).toBe(0);
    rec.release();
    rt.release(th, tw, tl, ...scratch, ...Object.values(compact), ...Object.values(full));
  });

  test("mostly labelled rows take plain crossEntropy; host labels must match the rows", () => {
    const T = 20, C = 16, V = 40;
    const th = rt.upload("f32", [T, C], randn(T * C)), tw = rt.upload("f32", [V, C], randn(V * C));
    const labels = Int32Array.from({ length: T }, (_, t) => (t === 0 ? IGNORE_INDEX : t)); // 95% labelled
    const tl = rt.upload("i32", [T], labels), loss = rt.zeros("f32", [2]);
    const rec = rt.recorder("ce mostly labelled");
    expect(crossEntropyOnLabelledRows(rec, { h: th, w: tw, labels: tl, loss }, labels)).toEqual([]);
    expect(() => crossEntropyOnLabelledRows(rec, { h: th, w: tw, labels: tl, loss }, labels.subarray(1))).toThrow(/19 host labels for 20 rows/);
    rec.release();
    rt.release(th, tw, tl, loss);
  });
});


/**
 * Host writes (rt.upload, rt.write, rt.zeros) go on the queue at once, ahead of any recording
 * not yet submitted. A kernel that handed its scratch back to the runtime's pool while its
 * dispatches were still only recorded let a later upload of the same recording take that
 * buffer: the recording, submitted afterwards, overwrote the upload (train --grad-accum: the
 * next micro-batch's token ids became the cross-entropy row state). Scratch must stay the
 * recording's until it is released.
 */
describe("scratch of a recording is not handed to host writes before it is submitted", () => {
  const uploadAfter = async (record: (rec: ReturnType<typeof rt.recorder>) => void, bytes: number) => {
    rt.trimPool(); // the pool's free buffers would otherwise decide which one the upload gets
    const rec = rt.recorder("scratch then upload");
    record(rec);
    const data = new Int32Array(bytes / 4).map((_, i) => 1000 + i);
    const up = rt.upload("i32", [data.length], data, "uploaded-after");
    const copy = rt.empty("i32", [data.length], "copy");
    rec.copy(up, copy); // what a later dispatch of the recording reads from the upload
    rec.submit();
    const got = await rt.readI32(copy);
    rec.release();
    rt.release(up, copy);
    return { got, data };
  };

  test("crossEntropy without a workspace: an upload recorded after it keeps its contents", async () => {
    const T = 20, C = 16, V = 96;
    const h = randn(T * C), w = randn(V * C, 0.5), labels = makeLabels(T, V, 21);
    const th = rt.upload("f32", [T, C], h), tw = rt.upload("f32", [V, C], w), tl = rt.upload("i32", [T], labels);
    const loss = rt.empty("f32", [2]), dh = rt.empty("f32", [T, C]);
    // An upload of the size of the row state (T, 4) f32 (and of the logits (T, V)).
    for (const bytes of [T * 16, T * V * 4]) {
      const { got, data } = await uploadAfter((rec) => crossEntropy(rec, { h: th, w: tw, labels: tl, loss, dh, scale: 1 }), bytes);
      expect(Array.from(got)).toEqual(Array.from(data));
    }
    const ref = crossEntropyRef(h, w, labels, T, C, V, 1);
    const l = await readLoss(rt, loss);
    expect(Math.abs(l.sum - ref.sum) / ref.sum).toBeLessThan(1e-5);
    expect(relError(await rt.read(dh), ref.dh)).toBeLessThan(1e-5);
    rt.release(th, tw, tl, loss, dh);
  });

  test("logitsRows gathering rows: an upload recorded after it keeps its contents", async () => {
    const T = 9, C = 32, V = 200, rows = [8, 3, 0];
    const th = rt.upload("f32", [T, C], randn(T * C)), tw = rt.upload("f32", [V, C], randn(V * C)), out = rt.empty("f32", [rows.length, V]);
    const { got, data } = await uploadAfter((rec) => logitsRows(rec, th, tw, rows, out), rows.length * C * 4);
    expect(Array.from(got)).toEqual(Array.from(data));
    rt.release(th, tw, out);
  });
});
