/**
 * Token embedding lookup from a frozen table: out (T, C) f32 = table[ids[t]], table (V, C)
 * in f32/f16/bf16, ids (T) i32. The GPU cannot throw, so out-of-range ids are reported
 * through a small u32 error buffer: make it with `embeddingErrors(rt)`, pass it to every
 * gather, and check it with `checkEmbeddingErrors` once the work is read back (the check
 * costs a readback, so do it where one happens anyway, e.g. next to the loss).
 */
import type { DType } from "./dtype.ts";
import { wgslLoader } from "./load16.ts";
import { flatGrid, Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import embeddingWgsl from "./embedding.wgsl" with { type: "text" };
import embeddingBackwardWgsl from "./embedding_backward.wgsl" with { type: "text" };

const sources = new Map<DType, KernelSource>();
function embeddingSource(tableDtype: DType): KernelSource {
  let s = sources.get(tableDtype);
  if (!s) {
    s = { name: `embedding_table${tableDtype}`, code: embeddingWgsl.replace("//!LOAD_TABLE", wgslLoader("table", 2, tableDtype)) };
    sources.set(tableDtype, s);
  }
  return s;
}

/**
 * A zeroed u32 (2) error buffer for embeddingForward: [0] counts out-of-range tokens,
 * [1] is the last offending position + 1 (0 when none).
 */
export function embeddingErrors(rt: GpuRuntime): Tensor {
  return rt.zeros("u32", [2], "embedding-errors");
}

/** Throws if any gather recorded an out-of-range id (reads the buffer back), naming the position. */
export async function checkEmbeddingErrors(rt: GpuRuntime, errors: Tensor, vocabSize?: number) {
  const [count, lastPlusOne] = await rt.readU32(errors);
  if (count) {
    const range = vocabSize === undefined ? "outside the table" : `outside [0, ${vocabSize})`;
    throw new Error(`embeddingForward: ${count} token id(s) ${range}, the last at position ${lastPlusOne! - 1}; their rows were set to zeros. Check the tokenizer's vocabulary against the model's vocab_size.`);
  }
}

/**
 * out (T, C) f32 = table (V, C)[ids (T)]. Rows of out-of-range ids are zeros and are counted
 * in `errors` (u32 (2), from embeddingErrors; it accumulates until cleared).
 */
export function embeddingForward(rec: Recorder, ids: Tensor, table: Tensor, out: Tensor, errors: Tensor) {
  expectTensor("embeddingForward", "ids", ids, "i32");
  if (table.shape.length !== 2) throw new Error(`embeddingForward: table must be (V, C), got [${table.shape.join(", ")}]`);
  const [V, C] = table.shape as [number, number];
  expectTensor("embeddingForward", "table", table, ["f32", "f16", "bf16"]);
  const T = ids.numel;
  expectTensor("embeddingForward", "out", out, "f32", [T, C]);
  expectTensor("embeddingForward", "errors", errors, "u32", [2]);
  rec.dispatch(`embeddingForward ${T}x${C}`, rec.rt.pipeline(embeddingSource(table.dtype), {}, "embedding_forward"),
    new Params(4).u32(T).u32(C).u32(V).u32(0).buffer, [ids, table, out, errors], flatGrid(T * C));
}

const backwardSource: KernelSource = { name: "embedding_backward", code: embeddingBackwardWgsl };

/**
 * dtable (V, C) f32 += the rows of dout (T, C) summed by token id (full fine-tuning).
 * `hostIds` are the batch's ids as uploaded (the host groups positions by id, so the GPU sums
 * in a fixed order); ids outside [0, V) are skipped (embeddingForward already reported them).
 * Returns the index tensors to release once the recording has run.
 */
export function embeddingBackward(rec: Recorder, hostIds: Int32Array, dout: Tensor, dtable: Tensor): Tensor[] {
  if (dtable.shape.length !== 2) throw new Error(`embeddingBackward: dtable must be (V, C), got [${dtable.shape.join(", ")}]`);
  const [V, C] = dtable.shape as [number, number];
  expectTensor("embeddingBackward", "dtable", dtable, "f32");
  expectTensor("embeddingBackward", "dout", dout, "f32", [hostIds.length, C]);
  const byId = new Map<number, number[]>();
  hostIds.forEach((id, t) => {
    if (id < 0 || id >= V) return;
    const list = byId.get(id);
    if (list) list.push(t);
    else byId.set(id, [t]);
  });
  if (byId.size === 0) return [];
  const uniq = new Uint32Array(byId.size), start = new Uint32Array(byId.size + 1), pos: number[] = [];
  [...byId.entries()].forEach(([id, ts], k) => {
    uniq[k] = id;
    start[k] = pos.length;
    pos.push(...ts);
  });
  start[byId.size] = pos.length;
  const rt = rec.rt;
  const tensors = [rt.upload("u32", [uniq.length], uniq, "emb_uniq"), rt.upload("u32", [start.length], start, "emb_start"), rt.upload("u32", [pos.length], Uint32Array.from(pos), "emb_pos")];
  rec.dispatch(`embeddingBackward ${byId.size}x${C}`, rt.pipeline(backwardSource, {}, "embedding_backward"),
    new Params(4).u32(C).u32(byId.size).u32(0).u32(0).buffer, [...tensors, dout, dtable], flatGrid(byId.size, 1));
  return tensors;
}
