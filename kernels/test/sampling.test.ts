import { afterAll, describe, expect, test } from "bun:test";
import {
  argmaxRef, argmaxRows, filteredProbsRef, getRuntime, logSoftmaxRef, packSamplingRows, sampleLogits, sampleRef, sampleRows,
  SAMPLING_ROW_FLOATS, topLogprobsRef, type SamplingParams,
} from "../src/index.ts";
import { randn, relError, rng } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

const rowOf = (x: Float32Array, b: number, V: number) => x.subarray(b * V, (b + 1) * V);

/**
 * Checks the GPU's draw for (logits, opts, u) against sampleRef (same token, same raw logprob);
 * a different token is allowed only where u sits within float rounding of a CDF step of `probs`
 * (filteredProbsRef). Returns 1 for such a mismatch, else 0.
 */
function checkDraw(logits: ArrayLike<number>, opts: SamplingParams, u: number, probs: Float64Array, token: number, logprob: number): number {
  const s = sampleRef(logits, opts, u);
  if (token === s.token) {
    expect(Math.abs(logprob - s.logprob)).toBeLessThan(1e-5 * Math.max(1, Math.abs(s.logprob)));
    return 0;
  }
  let acc = 0, near = false;
  for (const v of probs) if (v > 0) { acc += v; if (Math.abs(acc - u) < 1e-5) near = true; }
  expect(near).toBe(true);
  return 1;
}

describe("argmax", () => {
  test("exact, ties to the lowest index, raw logprob", async () => {
    const B = 6, V = 1000; // V not a multiple of the 256-thread workgroup
    const x = randn(B * V, 3);
    x[0 * V + 17] = x[0 * V + 900] = 50; // tie across threads: 17 wins
    x[1 * V + 999] = 40; // the last column
    x[2 * V + 256] = x[2 * V + 0] = 30; // tie with index 0
    const tl = rt.upload("f32", [B, V], x), tok = rt.empty("i32", [B]), lp = rt.empty("f32", [B]);
    const rec = rt.recorder("argmax");
    argmaxRows(rec, tl, tok, lp);
    rec.submit();
    const got = await rt.readI32(tok);
    const ref = Array.from({ length: B }, (_, b) => argmaxRef(rowOf(x, b, V)));
    expect(Array.from(got)).toEqual(ref);
    expect(ref.slice(0, 3)).toEqual([17, 999, 0]);
    const lpRef = ref.map((t, b) => logSoftmaxRef(rowOf(x, b, V))[t]!);
    expect(relError(await rt.read(lp), lpRef)).toBeLessThan(1e-5);
    rec.release();
    rt.release(tl, tok, lp);
  });
});

// One logit row per configuration, many rows: masks, draws and top-N in one dispatch.
const configs: SamplingParams[] = [
  { temperature: 1 },
  { temperature: 0.7, topK: 5 },
  { temperature: 1.3, topP: 0.8 },
  { temperature: 0.9, topK: 40, topP: 0.6 },
  { temperature: 2, topK: 1 },
  { temperature: 0 }, // greedy
  { temperature: 1, topK: 3 }, // with a tie at the 3rd value (row 6)
  { temperature: 0.8, minP: 0.05 },
  { temperature: 1.2, topK: 20, topP: 0.9, minP: 0.1 },
  { temperature: 1, minP: 1 }, // only the argmax (and ties with it)
];

describe("temperature → top-k → top-p", () => {
  test("filtered distributions and masks match the float64 reference; draws match sampleRef", async () => {
    const V = 300, B = configs.length, reps = 40;
    const base = randn(B * V, 2);
    // Top-p rows get flatter logits (std 1): with std 2 the top token alone sometimes held more
    // than p of the mass after top-k, and the nucleus was trivially that one token.
    configs.forEach((c, b) => { if (c.topP !== undefined) for (let i = b * V; i < (b + 1) * V; i++) base[i] = 0.5 * base[i]!; });
    for (let i = 6 * V; i < 7 * V; i++) base[i] = Math.min(base[i]!, 5); // no random value may outrank the planted ones
    base[6 * V + 10] = 9; base[6 * V + 20] = 8; base[6 * V + 30] = 7; base[6 * V + 40] = 7; // tie at k = 3
    // reps copies of every row, each with its own u
    const x = new Float32Array(B * reps * V);
    const r = rng(7);
    const rows: (SamplingParams & { u: number })[] = [];
    for (let j = 0; j < reps; j++) for (let b = 0; b < B; b++) {
      x.set(rowOf(base, b, V), (j * B + b) * V);
      rows.push({ ...configs[b]!, u: r.uniform() });
    }
    const N = B * reps;
    const tl = rt.upload("f32", [N, V], x), rp = rt.upload("f32", [N, SAMPLING_ROW_FLOATS], packSamplingRows(rows));
    const tok = rt.empty("i32", [N]), lp = rt.empty("f32", [N]), probs = rt.empty("f32", [N, V]);
    const topIds = rt.empty("i32", [N, 5]), topLp = rt.empty("f32", [N, 5]);
    const rec = rt.recorder("sample");
    sampleRows(rec, { logits: tl, rowParams: rp, tokens: tok, logprobs: lp, probs, topIds, topLogprobs: topLp });
    rec.submit();
    const gotProbs = await rt.read(probs), gotTok = await rt.readI32(tok), gotLp = await rt.read(lp);
    const gotIds = await rt.readI32(topIds), gotTopLp = await rt.read(topLp);
    let mismatches = 0;
    for (let b = 0; b < B; b++) {
      const row = rowOf(base, b, V);
      const ref = filteredProbsRef(row, configs[b]!);
      const got = gotProbs.subarray(b * V, (b + 1) * V);
      expect(relError(got, ref)).toBeLessThan(1e-5);
      expect(Array.from(got, (v) => v > 0)).toEqual(Array.from(ref, (v) => v > 0)); // the exact mask
      const kept = ref.filter((v) => v > 0).length;
      if (configs[b]!.topK === 5) expect(kept).toBe(5);
      if (b === 6) expect(kept).toBe(4); // both tied 3rd values kept, as HF's mask does
      if (configs[b]!.temperature === 0 || configs[b]!.topK === 1) expect(kept).toBe(1);
      if (configs[b]!.topP !== undefined) expect(kept).toBeGreaterThan(1);
      const topRef = topLogprobsRef(row, 5);
      for (let j = 0; j < reps; j++) {
        const n = j * B + b;
        mismatches += checkDraw(row, configs[b]!, rows[n]!.u, ref, gotTok[n]!, gotLp[n]!);
        expect(ref[gotTok[n]!]!).toBeGreaterThan(0); // never a filtered-out token
        expect(Array.from(gotIds.subarray(n * 5, n * 5 + 5))).toEqual(topRef.map((t) => t.token));
        expect(relError(gotTopLp.subarray(n * 5, n * 5 + 5), topRef.map((t) => t.logprob))).toBeLessThan(1e-5);
      }
    }
    expect(mismatches).toBeLessThanOrEqual(1);
    rec.release();
    rt.release(tl, rp, tok, lp, probs, topIds, topLp);
  });

  // Each draw is a row of its own (same logits, fresh u), so a few thousand draws are one dispatch.
  // lavapipe runs ~1 ms per filtered row (two threshold searches): the filtered case draws fewer.
  for (const [opts, draws] of [[{ temperature: 0.8 }, 8000], [{ temperature: 0.8, topK: 12, topP: 0.9 }, 2500]] as const) {
    test(`sampled frequencies over ${draws} draws match the probabilities (${JSON.stringify(opts)})`, async () => {
      const V = 24;
      // A fresh row with at least 5 tokens left after filtering (about 1 in 50 random rows keep
      // fewer; 1 in 125 kept ≤ 3, too few degrees of freedom for the χ² check below).
      let row: Float32Array, ref: Float64Array;
      do {
        row = randn(V, 1.2);
        ref = filteredProbsRef(row, opts);
      } while (ref.filter((p) => p > 0).length < 5);
      const x = new Float32Array(draws * V);
      for (let i = 0; i < draws; i++) x.set(row, i * V);
      const r = rng((Math.random() * 2 ** 32) >>> 0); // fresh draws every run
      const tl = rt.upload("f32", [draws, V], x);
      const got = await sampleLogits(rt, tl, Array.from({ length: draws }, () => ({ ...opts, u: r.uniform() })));
      const counts = new Float64Array(V);
      for (const g of got) counts[g.token]!++;
      let chi2 = 0, df = -1;
      for (let v = 0; v < V; v++) {
        if (ref[v] === 0) {
          expect(counts[v]).toBe(0); // a filtered token is never drawn
          continue;
        }
        const expected = ref[v]! * draws;
        chi2 += (counts[v]! - expected) ** 2 / expected;
        df++;
        // every token within 5 standard deviations of its expected count
        expect(Math.abs(counts[v]! - expected)).toBeLessThan(5 * Math.sqrt(expected * (1 - ref[v]!)) + 1);
      }
      // χ² with df ≤ 23: P(χ² > df + 8·sqrt(2·df)) is below 1e-4 for these df
      expect(df).toBeGreaterThan(2);
      expect(chi2).toBeLessThan(df + 8 * Math.sqrt(2 * df));
      rt.release(tl);
    }, 30_000);
  }

  test("argument errors", () => {
    expect(() => packSamplingRows([{ temperature: 1, topP: 0, u: 0.5 }])).toThrow(/topP must be in \(0, 1\]/);
    expect(() => packSamplingRows([{ temperature: 1, u: 1 }])).toThrow(/u must be in \[0, 1\)/);
    const tl = rt.empty("f32", [2, 10]), tok = rt.empty("i32", [3]);
    expect(() => sampleRows(rt.recorder(), { logits: tl, tokens: tok })).toThrow(/sampleRows: tokens must have shape \[2\]/);
  });
});

// Padded vocabulary: logits (B, V) whose columns ≥ validVocab are not tokens. The padded
// columns get the LARGEST logits here, so a kernel that looked at them would pick them; the GPU
// must agree with the float64 references run on the first validVocab columns only.

/** Random logits with every padded column above every real one. */
function paddedLogits(B: number, V: number, Vt: number, seed: number): Float32Array {
  const x = randn(B * V, seed);
  for (let b = 0; b < B; b++) for (let v = Vt; v < V; v++) x[b * V + v] = 20 + Math.abs(x[b * V + v]!);
  return x;
}

const paddedConfigs: SamplingParams[] = [
  { temperature: 0 }, // greedy
  { temperature: 1 },
  { temperature: 0.7, topK: 5 },
  { temperature: 1.3, topP: 0.8 },
  { temperature: 0.9, topK: 40, topP: 0.6 },
  { temperature: 1, topK: 280 }, // Vt ≤ k < V: no top-k among the real tokens
];

describe("padded vocabulary (validVocab < V)", () => {
  test("tokens, logprobs, top-N and the sampled distribution match the references on the real columns", async () => {
    const V = 300, Vt = 263, topN = 5, reps = 12; // neither a multiple of the 256-thread workgroup
    const B = paddedConfigs.length;
    const base = paddedLogits(B, V, Vt, 3);
    const r = rng(11);
    const x = new Float32Array(B * reps * V);
    const rows: (SamplingParams & { u: number })[] = [];
    for (let j = 0; j < reps; j++) for (let b = 0; b < B; b++) {
      x.set(base.subarray(b * V, (b + 1) * V), (j * B + b) * V);
      rows.push({ ...paddedConfigs[b]!, u: r.uniform() });
    }
    const N = B * reps;
    const tl = rt.upload("f32", [N, V], x), rp = rt.upload("f32", [N, SAMPLING_ROW_FLOATS], packSamplingRows(rows));
    const tok = rt.empty("i32", [N]), lp = rt.empty("f32", [N]), probs = rt.empty("f32", [N, V]);
    const topIds = rt.empty("i32", [N, topN]), topLp = rt.empty("f32", [N, topN]);
    const rec = rt.recorder("sample padded");
    sampleRows(rec, { logits: tl, rowParams: rp, tokens: tok, logprobs: lp, probs, topIds, topLogprobs: topLp, validVocab: Vt });
    rec.submit();
    const gotTok = await rt.readI32(tok), gotLp = await rt.read(lp), gotProbs = await rt.read(probs);
    const gotIds = await rt.readI32(topIds), gotTopLp = await rt.read(topLp);
    let mismatches = 0;
    for (let b = 0; b < B; b++) {
      const real = base.subarray(b * V, b * V + Vt);
      const ref = filteredProbsRef(real, paddedConfigs[b]!);
      const got = gotProbs.subarray(b * V, (b + 1) * V);
      expect(Array.from(got.subarray(Vt))).toEqual(new Array(V - Vt).fill(0));
      expect(relError(got.subarray(0, Vt), ref)).toBeLessThan(1e-5);
      expect(Array.from(got.subarray(0, Vt), (v) => v > 0)).toEqual(Array.from(ref, (v) => v > 0));
      const topRef = topLogprobsRef(real, topN);
      for (let j = 0; j < reps; j++) {
        const n = j * B + b;
        expect(gotTok[n]!).toBeLessThan(Vt);
        // logprobs are normalised over the real tokens only
        mismatches += checkDraw(real, paddedConfigs[b]!, rows[n]!.u, ref, gotTok[n]!, gotLp[n]!);
        expect(Array.from(gotIds.subarray(n * topN, (n + 1) * topN))).toEqual(topRef.map((t) => t.token));
        expect(relError(gotTopLp.subarray(n * topN, (n + 1) * topN), topRef.map((t) => t.logprob))).toBeLessThan(1e-5);
      }
    }
    expect(mismatches).toBeLessThanOrEqual(1);
    // Without validVocab the same rows pick padding: the test above would have caught a kernel that ignored it.
    const unmasked = await sampleLogits(rt, tl, rows, topN);
    expect(unmasked.every((row) => row.token >= Vt && row.top!.every((t) => t.token >= Vt))).toBe(true);
    rec.release();
    rt.release(tl, rp, tok, lp, probs, topIds, topLp);
  });

  test("Qwen2.5's shape: 151,936 rows, 151,665 tokens; greedy and nucleus sampling stay below 151,665", async () => {
    const V = 151_936, Vt = 151_665, B = 2;
    const x = paddedLogits(B, V, Vt, 5);
    const rows = [{ temperature: 0, u: 0.5 }, { temperature: 0.8, topP: 0.9, u: 0.37 }];
    const tl = rt.upload("f32", [B, V], x);
    const got = await sampleLogits(rt, tl, rows, 3, Vt);
    for (let b = 0; b < B; b++) {
      const real = x.subarray(b * V, b * V + Vt);
      expect(got[b]!.token).toBeLessThan(Vt);
      expect(checkDraw(real, rows[b]!, rows[b]!.u, filteredProbsRef(real, rows[b]!), got[b]!.token, got[b]!.logprob)).toBe(0);
      expect(got[b]!.top!.map((t) => t.token)).toEqual(topLogprobsRef(real, 3).map((t) => t.token));
    }
    rt.release(tl);
  }, 30_000);

  test("validVocab = V is the default; out-of-range values and top-N beyond it are refused", async () => {
    const V = 40, B = 3;
    const x = randn(B * V, 9);
    const tl = rt.upload("f32", [B, V], x);
    const rows = Array.from({ length: B }, (_, i) => ({ temperature: 0.8, u: (i + 0.5) / B }));
    expect(await sampleLogits(rt, tl, rows, 4, V)).toEqual(await sampleLogits(rt, tl, rows, 4));
    const tok = rt.empty("i32", [B]), ids = rt.empty("i32", [B, 4]), lps = rt.empty("f32", [B, 4]);
    const rec = rt.recorder();
    expect(() => sampleRows(rec, { logits: tl, tokens: tok, validVocab: 0 })).toThrow(/validVocab must be an integer in 1\.\.40 .*, got 0/);
    expect(() => sampleRows(rec, { logits: tl, tokens: tok, validVocab: 41 })).toThrow(/validVocab must be an integer in 1\.\.40/);
    expect(() => sampleRows(rec, { logits: tl, tokens: tok, topIds: ids, topLogprobs: lps, validVocab: 3 })).toThrow(/top-4 of 3 tokens/);
    rt.release(tl, tok, ids, lps);
  });
});

describe("raw logprobs (rawLogits: the logits before penalties)", () => {
  test("the token is drawn from the penalised logits; logprob and top-N are of log_softmax(raw)", async () => {
    const B = 6, V = 300, Vt = 290, topN = 4;
    const r = rng(21);
    const raw = randn(B * V, 1, 22), pen = new Float32Array(raw);
    // "Penalties": push some of each row's best tokens far down, lift others (what repetition and
    // presence penalties do), so the two distributions differ clearly.
    for (let b = 0; b < B; b++) for (let i = 0; i < 40; i++) pen[b * V + ((i * 37 + b) % Vt)]! -= 3 + i % 5;
    const rows = Array.from({ length: B }, (_, b) => ({ temperature: b % 2 ? 0 : 0.8, topK: 50, topP: 0.9, u: r.uniform() }));
    const tRaw = rt.upload("f32", [B, V], raw), tPen = rt.upload("f32", [B, V], pen);
    const rp = rt.upload("f32", [B, SAMPLING_ROW_FLOATS], packSamplingRows(rows));
    const tok = rt.empty("i32", [B]), lp = rt.empty("f32", [B]), topIds = rt.empty("i32", [B, topN]), topLp = rt.empty("f32", [B, topN]);
    const rec = rt.recorder("sample raw logprobs");
    sampleRows(rec, { logits: tPen, rawLogits: tRaw, rowParams: rp, tokens: tok, logprobs: lp, topIds, topLogprobs: topLp, validVocab: Vt });
    rec.submit();
    const [gotTok, gotLp, gotIds, gotTopLp] = [await rt.readI32(tok), await rt.read(lp), await rt.readI32(topIds), await rt.read(topLp)];
    rec.release();
    let differs = 0;
    for (let b = 0; b < B; b++) {
      const realRaw = raw.subarray(b * V, b * V + Vt), realPen = pen.subarray(b * V, b * V + Vt);
      const s = sampleRef(realPen, rows[b]!, rows[b]!.u); // drawn from the penalised row
      expect(gotTok[b]).toBe(s.token);
      const lpRaw = logSoftmaxRef(realRaw);
      expect(Math.abs(gotLp[b]! - lpRaw[s.token]!)).toBeLessThan(1e-5 * Math.max(1, Math.abs(lpRaw[s.token]!)));
      if (Math.abs(lpRaw[s.token]! - s.logprob) > 1e-2) differs++; // (s.logprob is the penalised one)
      const topRef = topLogprobsRef(realRaw, topN);
      expect(Array.from(gotIds.subarray(b * topN, (b + 1) * topN))).toEqual(topRef.map((t) => t.token));
      expect(relError(gotTopLp.subarray(b * topN, (b + 1) * topN), topRef.map((t) => t.logprob))).toBeLessThan(1e-5);
    }
    expect(differs).toBeGreaterThan(0); // raw and penalised logprobs really differ here
    expect(() => sampleRows(rt.recorder("x"), { logits: tPen, rawLogits: tPen, tokens: tok })).toThrow("rawLogits must be a copy");
    rt.release(tRaw, tPen, rp, tok, lp, topIds, topLp);
  });
});
