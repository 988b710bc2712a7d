/**
 * Kernel benchmarks of attention: the causal GQA flash kernels of training (forward, backward)
 * over a packed batch, and split-K decode over a KV cache.
 *
 * FLOPs (gflops) use the causal count, as FlashAttention reports it: each visible (query, key)
 * pair costs 2·hd for q·k and 2·hd for p·v in the forward; the backward's five matmul-like
 * products (s recomputed, dv, dp, dq, dk) cost 2.5× that. pairs = batch · S(S+1)/2 per head.
 * The backward recomputes s in both its passes, so it does more work than it is credited with.
 *
 * relErr: the float64 reference runs on a slice, the last sequence of the batch and the last
 * kv head with its group of query heads (attention is independent per sequence and kv group),
 * so the check costs S²·group·hd instead of T²·nH·hd. Decode checks up to 16 (sequence, head) rows.
 *
 * Where the device has tensor cores, the forward is measured twice: all-f32 (tensorCores:
 * false) and on tensor cores (q, k, v, P rounded to f16, f32 accumulation; attention-tc.ts),
 * which the model uses with 16-bit weights. The backward is f32 only.
 */
import {
  type GpuRuntime, type Recorder, attentionBackward, attentionDecode, attentionDecodeScratchSize, attentionForward,
} from "@tuneloom/kernels";
import { tensorCoreAttentionSupported } from "@tuneloom/kernels/attention-tc.ts";
import {
  type KernelBenchLine, type KernelShape, RelErr, checkRows, decode16, gbs, gflops, modelTag, random16, runOnce, timeKernel,
  uniform, worst,
} from "./kernels-common.ts";

/**
 * Naive causal attention and its backward in float64 on one sequence and one kv group:
 * q, dout (S, group, hd), k, v (S, hd) as plain arrays.
 */
function attentionSliceRef(S: number, group: number, hd: number, q: Float64Array, k: Float64Array, v: Float64Array, dout: Float64Array) {
  const scale = 1 / Math.sqrt(hd);
  const out = new Float64Array(S * group * hd), dq = new Float64Array(S * group * hd);
  const dk = new Float64Array(S * hd), dv = new Float64Array(S * hd);
  const p = new Float64Array(S);
  for (let h = 0; h < group; h++) {
    for (let i = 0; i < S; i++) {
      const qi = (i * group + h) * hd;
      let m = -Infinity;
      for (let j = 0; j <= i; j++) {
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += q[qi + d]! * k[j * hd + d]!;
        p[j] = scale * dot;
        m = Math.max(m, p[j]!);
      }
      let l = 0;
      for (let j = 0; j <= i; j++) l += p[j] = Math.exp(p[j]! - m);
      for (let j = 0; j <= i; j++) {
        p[j]! /= l;
        for (let d = 0; d < hd; d++) out[qi + d]! += p[j]! * v[j * hd + d]!;
      }
      // backward of out_i = Σ_j p_ij v_j, p_i = softmax(s_i), s_ij = scale · q_i·k_j
      let D = 0;
      for (let d = 0; d < hd; d++) D += dout[qi + d]! * out[qi + d]!;
      for (let j = 0; j <= i; j++) {
        let dp = 0;
        for (let d = 0; d < hd; d++) dp += dout[qi + d]! * v[j * hd + d]!;
        const ds = scale * p[j]! * (dp - D);
        for (let d = 0; d < hd; d++) {
          dq[qi + d]! += ds * k[j * hd + d]!;
          dk[j * hd + d]! += ds * q[qi + d]!;
          dv[j * hd + d]! += p[j]! * dout[qi + d]!;
        }
      }
    }
  }
  return { out, dq, dk, dv };
}

export async function* benchAttention(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const { T, batch: B, seq: S } = s, nH = s.cfg.numHeads, nKV = s.cfg.numKvHeads, hd = s.cfg.headDim, group = nH / nKV;
  const q = uniform(T * nH * hd, 1, 101), k = uniform(T * nKV * hd, 1, 102), v = uniform(T * nKV * hd, 1, 103);
  const dout = uniform(T * nH * hd, 1, 104);
  const seqId = Int32Array.from({ length: T }, (_, i) => Math.floor(i / S));
  const t = {
    q: rt.upload("f32", [T, nH, hd], q), k: rt.upload("f32", [T, nKV, hd], k), v: rt.upload("f32", [T, nKV, hd], v),
    seqId: rt.upload("i32", [T], seqId), dout: rt.upload("f32", [T, nH, hd], dout),
    out: rt.empty("f32", [T, nH, hd]), lse: rt.empty("f32", [T, nH]), dsum: rt.empty("f32", [T, nH]),
    dq: rt.empty("f32", [T, nH, hd]), dk: rt.empty("f32", [T, nKV, hd]), dv: rt.empty("f32", [T, nKV, hd]),
  };
  try {
    const fwd = (rec: Recorder) => attentionForward(rec, { ...t, tensorCores: false });
    const fwdTensorCores = (rec: Recorder) => attentionForward(rec, { ...t, tensorCores: true });
    const bwd = (rec: Recorder) => attentionBackward(rec, { ...t, tensorCores: false });
    const bwdTensorCores = (rec: Recorder) => attentionBackward(rec, { ...t, tensorCores: true });
    await runOnce(rt, "bench attention", (rec) => { fwd(rec); bwd(rec); });
    const got = { out: await rt.read(t.out), dq: await rt.read(t.dq), dk: await rt.read(t.dk), dv: await rt.read(t.dv) };

    // the slice: last sequence b, last kv head g and its query heads
    const b = B - 1, g = nKV - 1, h0 = g * group;
    const qIdx = (i: number, h: number) => ((b * S + i) * nH + h0 + h) * hd; // into (T, nH, hd)
    const kIdx = (j: number) => ((b * S + j) * nKV + g) * hd; // into (T, nKV, hd)
    const gatherQ = (x: ArrayLike<number>) => {
      const o = new Float64Array(S * group * hd);
      for (let i = 0; i < S; i++) for (let h = 0; h < group; h++) for (let d = 0; d < hd; d++) o[(i * group + h) * hd + d] = x[qIdx(i, h) + d]!;
      return o;
    };
    const gatherK = (x: ArrayLike<number>) => {
      const o = new Float64Array(S * hd);
      for (let j = 0; j < S; j++) for (let d = 0; d < hd; d++) o[j * hd + d] = x[kIdx(j) + d]!;
      return o;
    };
    const ref = attentionSliceRef(S, group, hd, gatherQ(q), gatherK(k), gatherK(v), gatherQ(dout));
    const err = (gpu: Float64Array, want: Float64Array) => {
      const e = new RelErr();
      e.addRow(gpu, 0, want);
      return e.value;
    };
    const fwdErr = err(gatherQ(got.out), ref.out);
    const bwdErr = worst(err(gatherQ(got.dq), ref.dq), err(gatherK(got.dk), ref.dk), err(gatherK(got.dv), ref.dv));

    const shape = `B=${B} S=${S} heads=${nH}/${nKV} hd=${hd}`;
    const fwdFlops = 4 * hd * nH * B * ((S * (S + 1)) / 2);
    let ms = await timeKernel(rt, fwd);
    yield { op: "attention_fwd", shape, dtype: "f32", ms, gflops: gflops(fwdFlops, ms), relErr: fwdErr, ...modelTag(s) };
    const probe = rt.recorder("bench attention probe");
    const tensorCores = tensorCoreAttentionSupported(probe, T, hd);
    probe.release();
    if (tensorCores) {
      await runOnce(rt, "bench attention tensor cores", fwdTensorCores);
      const tcErr = err(gatherQ(await rt.read(t.out)), ref.out);
      ms = await timeKernel(rt, fwdTensorCores);
      yield {
        op: "attention_fwd", shape, dtype: "f32 in, f16 tensor-core products", ms, gflops: gflops(fwdFlops, ms), relErr: tcErr, ...modelTag(s),
      };
    }
    ms = await timeKernel(rt, bwd);
    yield { op: "attention_bwd", shape, dtype: "f32", ms, gflops: gflops(2.5 * fwdFlops, ms), relErr: bwdErr, ...modelTag(s) };
    if (tensorCores) {
      await runOnce(rt, "bench attention backward tensor cores", (rec) => { fwdTensorCores(rec); bwdTensorCores(rec); });
      const tcErr = worst(err(gatherQ(await rt.read(t.dq)), ref.dq), err(gatherK(await rt.read(t.dk)), ref.dk), err(gatherK(await rt.read(t.dv)), ref.dv));
      ms = await timeKernel(rt, bwdTensorCores);
      yield {
        op: "attention_bwd", shape, dtype: "f32 in, f16 tensor-core products", ms, gflops: gflops(2.5 * fwdFlops, ms), relErr: tcErr, ...modelTag(s),
      };
    }
  } finally {
    rt.release(...Object.values(t));
  }
}

/**
 * One decode step's attention for B sequences of L cached tokens each, f32 or f16 cache, split-K
 * chosen by the kernel (scratch given, no `splits`), as the KV-cache generator runs it.
 * gbs counts the K and V rows read plus q and out.
 */
export async function* benchAttentionDecode(rt: GpuRuntime, s: KernelShape): AsyncGenerator<KernelBenchLine> {
  const nH = s.cfg.numHeads, nKV = s.cfg.numKvHeads, hd = s.cfg.headDim, group = nH / nKV, L = s.decodeContext;
  const scale = 1 / Math.sqrt(hd);
  for (const B of s.decodeBatches) {
    for (const cacheDtype of ["f32", "f16"] as const) {
      const rows = B * L, n = rows * nKV * hd;
      const q = uniform(B * nH * hd, 1, 111);
      // f32 cache: uniform ±1; f16 cache: random f16 values, read back through the decode table
      const kF32 = cacheDtype === "f32" ? uniform(n, 1, 112) : null, vF32 = cacheDtype === "f32" ? uniform(n, 1, 113) : null;
      const kBits = cacheDtype === "f16" ? random16(n, "f16", -3, 1, 114) : null, vBits = cacheDtype === "f16" ? random16(n, "f16", -3, 1, 115) : null;
      const lut = decode16("f16");
      const kAt = kF32 ? (i: number) => kF32[i]! : (i: number) => lut[kBits![i]!]!;
      const vAt = vF32 ? (i: number) => vF32[i]! : (i: number) => lut[vBits![i]!]!;
      const splitsMax = Math.min(1024, Math.ceil(L / 32));
      const t = {
        q: rt.upload("f32", [B, nH, hd], q),
        kCache: rt.upload(cacheDtype, [rows, nKV, hd], kF32 ?? kBits!), vCache: rt.upload(cacheDtype, [rows, nKV, hd], vF32 ?? vBits!),
        offsets: rt.upload("u32", [B], Uint32Array.from({ length: B }, (_, b) => b * L)),
        lengths: rt.upload("u32", [B], new Uint32Array(B).fill(L)),
        out: rt.empty("f32", [B, nH, hd]),
        scratch: rt.empty("f32", [attentionDecodeScratchSize(B, nH, hd, splitsMax)]),
      };
      try {
        const record = (rec: Recorder) => attentionDecode(rec, { ...t, maxLength: L });
        await runOnce(rt, "bench attention decode", record);
        const out = await rt.read(t.out);
        const e = new RelErr();
        const sc = new Float64Array(L);
        for (const r of checkRows(B * nH, 16)) {
          const b = Math.floor(r / nH), h = r % nH, g = Math.floor(h / group);
          let m = -Infinity;
          for (let j = 0; j < L; j++) {
            const kj = ((b * L + j) * nKV + g) * hd;
            let dot = 0;
            for (let d = 0; d < hd; d++) dot += q[r * hd + d]! * kAt(kj + d);
            m = Math.max(m, (sc[j] = scale * dot));
          }
          let l = 0;
          for (let j = 0; j < L; j++) l += sc[j] = Math.exp(sc[j]! - m);
          const want = new Float64Array(hd);
          for (let j = 0; j < L; j++) {
            const vj = ((b * L + j) * nKV + g) * hd;
            for (let d = 0; d < hd; d++) want[d]! += (sc[j]! / l) * vAt(vj + d);
          }
          e.addRow(out, r * hd, want);
        }
        const ms = await timeKernel(rt, record);
        const bytes = 2 * n * (cacheDtype === "f16" ? 2 : 4) + 2 * B * nH * hd * 4;
        yield {
          op: "attention_decode", shape: `B=${B} L=${L} heads=${nH}/${nKV} hd=${hd}`, dtype: `f32 q, ${cacheDtype} cache`, ms,
          gbs: gbs(bytes, ms), relErr: e.value, ...modelTag(s),
        };
      } finally {
        rt.release(...Object.values(t));
      }
    }
  }
}
