/**
 * Kernel benchmarks of the output head: chunked cross-entropy fused with the LM head
 * (training: forward and dh in one call) and next-token sampling (inference).
 */
import {
  type GpuRuntime, type Recorder, createCrossEntropyWorkspace, hasTensorCoreMatmul, crossEntropy, crossEntropyChunk, packSamplingRows,
  releaseCrossEntropyWorkspace, sampleRef, sampleRows, type SamplingParams,
} from "@tuneloom/kernels";
import {
  type KernelBenchLine, type KernelShape, RelErr, checkRows, decode16, frozenWeightDtype, gbs, gflops, modelTag, runOnce, timeKernel,
  uniform, worst,
} from "./kernels-common.ts";
import { type SharedTables, randomIds } from "./kernels-pointwise.ts";

/**
 * crossEntropy with dh (LoRA training: the tied head is frozen, so no dW) over T tokens, the
 * head being the model's (V, C) table in the frozen-weight dtype. gflops counts its three
 * GEMMs of 2·T·V·C (logits, logits again in the backward, dh); the softmax passes are extra.
 * relErr: per-token nll and dh rows against float64, on every row where that is cheap and on
 * a few spread rows at the real vocabularies (each costs 2·V·C on the CPU).
 */
export async function* benchCrossEntropy(rt: GpuRuntime, s: KernelShape, tables: SharedTables): AsyncGenerator<KernelBenchLine> {
  const { T } = s, V = s.cfg.vocabSize, C = s.cfg.hiddenSize;
  const wDtype = frozenWeightDtype(rt);
  const { bits, tensor: w } = tables.get(wDtype);
  const lut = decode16(wDtype);
  const h = uniform(T * C, 1, 121);
  const labels = randomIds(T, V, 122);
  const scale = 1 / T;
  const chunk = crossEntropyChunk(rt, T, V, C, wDtype);
  const ws = createCrossEntropyWorkspace(rt, T, chunk);
  const t = {
    h: rt.upload("f32", [T, C], h), labels: rt.upload("i32", [T], labels), loss: rt.empty("f32", [2]), nll: rt.empty("f32", [T]),
    dh: rt.empty("f32", [T, C]),
  };
  try {
    const record = (rec: Recorder) => crossEntropy(rec, { ...t, w, scale, workspace: ws });
    await runOnce(rt, "bench cross-entropy", record);
    const nll = await rt.read(t.nll), dh = await rt.read(t.dh), loss = await rt.read(t.loss);

    const rows = checkRows(T, Math.max(1, Math.floor(1e9 / (V * C)))); // ~0.1 s of CPU per 10⁸
    const nllErr = new RelErr(), dhErr = new RelErr();
    const logits = new Float64Array(V);
    let nllSum = 0;
    for (const r of rows) {
      let m = -Infinity;
      for (let v = 0; v < V; v++) {
        let dot = 0;
        for (let c = 0; c < C; c++) dot += h[r * C + c]! * lut[bits[v * C + c]!]!;
        m = Math.max(m, (logits[v] = dot));
      }
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(logits[v]! - m);
      const lse = m + Math.log(z);
      const want = lse - logits[labels[r]!]!;
      nllSum += want;
      nllErr.add(nll[r]!, want);
      // dh_r = scale · (softmax(logits_r) − onehot(label_r)) · W
      const row = new Float64Array(C);
      for (let v = 0; v < V; v++) {
        const dl = scale * (Math.exp(logits[v]! - lse) - (v === labels[r] ? 1 : 0));
        for (let c = 0; c < C; c++) row[c]! += dl * lut[bits[v * C + c]!]!;
      }
      dhErr.addRow(dh, r * C, row);
    }
    // the loss is [Σ nll, target count]: checkable where every row was
    const lossErr = rows.length === T ? Math.max(Math.abs(loss[0]! - nllSum) / nllSum, loss[1] === T ? 0 : Infinity) : 0;
    const ms = await timeKernel(rt, record);
    // crossEntropy computes the logits on tensor cores (h rounded to f16) where it can
    const dtype = hasTensorCoreMatmul(rt) && wDtype === "f16" ? "f32 h (f16 on tensor cores), f16 W" : `f32 h, ${wDtype} W`;
    yield {
      op: "cross_entropy_fwd_bwd", shape: `T=${T} V=${V} C=${C} chunk=${chunk}`, dtype, ms,
      gflops: gflops(6 * T * V * C, ms), relErr: worst(nllErr.value, dhErr.value, lossErr), ...modelTag(s),
    };
  } finally {
    rt.release(...Object.values(t));
    releaseCrossEntropyWorkspace(rt, ws);
  }
}

/** Qwen2.5's vocabulary: the largest of the three models. */
export const SAMPLING_VOCAB = 151936;

/**
 * One sampling step (temperature 0.7 → top-k 50 → top-p 0.9, one draw per row, raw logprob of
 * the token) over B rows of the 151,936-entry vocabulary. gbs counts one read of the logits;
 * relErr compares the logprobs of the chosen tokens with the float64 reference's tokens.
 */
export async function* benchSampling(rt: GpuRuntime, batches: number[]): AsyncGenerator<KernelBenchLine> {
  const V = SAMPLING_VOCAB;
  const opts: SamplingParams = { temperature: 0.7, topK: 50, topP: 0.9 };
  for (const B of batches) {
    const x = uniform(B * V, 8, 131 + B);
    const u = Float64Array.from({ length: B }, (_, b) => (0.3 + 0.618034 * b) % 1); // the draws, spread over [0, 1)
    const t = {
      logits: rt.upload("f32", [B, V], x), rowParams: rt.upload("f32", [B, 4], packSamplingRows(Array.from(u, (ub) => ({ ...opts, u: ub })))),
      tokens: rt.empty("i32", [B]), logprobs: rt.empty("f32", [B]),
    };
    try {
      const record = (rec: Recorder) => sampleRows(rec, t);
      await runOnce(rt, "bench sampling", record);
      const logprobs = await rt.read(t.logprobs);
      const e = new RelErr();
      for (let b = 0; b < B; b++) e.add(logprobs[b]!, sampleRef(x.subarray(b * V, (b + 1) * V), opts, u[b]!).logprob);
      const ms = await timeKernel(rt, record);
      yield {
        op: "sampling", shape: `B=${B} V=${V} top_k=${opts.topK} top_p=${opts.topP} temperature=${opts.temperature}`, dtype: "f32 logits", ms,
        gbs: gbs(B * V * 4, ms), relErr: e.value,
      };
    } finally {
      rt.release(...Object.values(t));
    }
  }
}
