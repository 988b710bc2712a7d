// GpuModel.load end to end: single file and sharded checkpoints stream to the GPU bit-exactly,
// bf16 → f16 losses are counted per tensor, overflow is refused naming the tensor, and the
// bf16 / f32 weight types load such a checkpoint and run it.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getRuntime, type Tensor } from "@tuneloom/kernels";
import { expectedTensors, INDEX_FILE, openCheckpoint, SINGLE_FILE } from "../src/checkpoint.ts";
import { bf16BitsToFloat32, float32ToBf16Bits, float32ToF16Bits } from "../src/half-floats.ts";
import { writeSafetensors, type TensorToWrite } from "../src/safetensors.ts";
import { writeTinyModel } from "../src/tiny-model.ts";
import { formatLoadReport, formatUnderflow, type TensorLoss } from "../src/gpu/weight-stream.ts";
import { GpuModel } from "../src/gpu/model.ts";
import type { GpuModelWeights } from "../src/gpu/weights.ts";

const rt = await getRuntime();
const root = mkdtempSync(join(tmpdir(), "weight-loading-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A tiny bf16 model whose weights are rewritten by `edit` (name → bf16 bits, in place). */
function model(name: string, edit: (name: string, bits: Uint16Array) => void): string {
  const dir = join(root, name);
  writeTinyModel(dir, { arch: "llama", dtype: "bf16", seed: 3 });
  const store = openCheckpoint(dir);
  const tensors: TensorToWrite[] = store.names().map((n) => {
    const bits = new Uint16Array(store.raw(n).buffer);
    edit(n, bits);
    return { name: n, dtype: "BF16", shape: store.info(n).shape, data: bits };
  });
  store.close();
  writeSafetensors(join(dir, SINGLE_FILE), tensors);
  return dir;
}

const UNDER = "model.layers.0.mlp.up_proj.weight";
const OVER = "model.layers.1.mlp.down_proj.weight";
const b = float32ToBf16Bits;
const underflowing = model("underflow", (n, bits) => {
  if (n === UNDER) bits.set([b(1e-9), b(-1e-9), b(1e-6), b(-3e-5)], 10); // 2 flushed to zero, 2 subnormal in f16
});
const overflowing = model("overflow", (n, bits) => {
  if (n === UNDER) bits.set([b(1e-9)], 10);
  if (n === OVER) bits.set([b(1e5), b(-7e4), b(65520)], 20); // beyond f16's 65504
});

/** The same checkpoint as three shards and an index. */
function shard(src: string): string {
  const dir = join(root, "sharded");
  mkdirSync(dir);
  for (const f of readdirSync(src)) if (f !== SINGLE_FILE) copyFileSync(join(src, f), join(dir, f));
  const store = openCheckpoint(src);
  const names = store.names();
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < 3; s++) {
    const file = `model-0000${s + 1}-of-00003.safetensors`;
    const part = names.filter((_, i) => i % 3 === s);
    writeSafetensors(join(dir, file), part.map((n) => ({ name: n, dtype: "BF16", shape: store.info(n).shape, data: new Uint16Array(store.raw(n).buffer) })));
    for (const n of part) weightMap[n] = file;
  }
  store.close();
  writeFileSync(join(dir, INDEX_FILE), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return dir;
}

/** Every uploaded tensor by checkpoint name. */
function byName(w: GpuModelWeights): Map<string, Tensor> {
  const m = new Map<string, Tensor>([["model.embed_tokens.weight", w.embed], ["model.norm.weight", w.finalNorm]]);
  w.layers.forEach((l, i) => {
    const p = `model.layers.${i}.`;
    const add = (n: string, t: Tensor) => m.set(p + n, t);
    add("input_layernorm.weight", l.inputNorm);
    add("post_attention_layernorm.weight", l.postNorm);
    add("self_attn.q_proj.weight", l.q);
    add("self_attn.k_proj.weight", l.k);
    add("self_attn.v_proj.weight", l.v);
    add("self_attn.o_proj.weight", l.o);
    add("mlp.gate_proj.weight", l.gate);
    add("mlp.up_proj.weight", l.up);
    add("mlp.down_proj.weight", l.down);
  });
  if (w.lmHead !== w.embed) m.set("lm_head.weight", w.lmHead);
  return m;
}

async function nll(m: GpuModel): Promise<number> {
  const T = 24, V = m.cfg.vocabSize;
  const ids = Int32Array.from({ length: T }, (_, i) => (i * 37 + 5) % V);
  const labels = Int32Array.from({ length: T }, (_, i) => (i + 1 < T ? ids[i + 1]! : -100));
  const { sum, count } = await m.nll(ids, Int32Array.from({ length: T }, (_, i) => i), new Int32Array(T), labels);
  return sum / count;
}

describe("GpuModel.load streams weights to the GPU", () => {
  test("sharded, f16, 1 KiB staging slots: every weight is the CPU's RNE conversion, losses counted per tensor", async () => {
    const dir = shard(underflowing);
    const m = await GpuModel.load(dir, { weightDtype: "f16", stagingSlotBytes: 1024 });
    const store = openCheckpoint(dir);
    const tensors = byName(m.weights);
    expect([...tensors.keys()].sort()).toEqual(expectedTensors(m.cfg).map((t) => t.name).sort());
    const expectedLosses: TensorLoss[] = [];
    for (const [name, t] of tensors) {
      const bits = new Uint16Array(store.raw(name).buffer);
      if (t.dtype === "f32") {
        expect(await rt.read(t)).toEqual(Float32Array.from(bits, bf16BitsToFloat32));
        continue;
      }
      const want = Uint16Array.from(bits, (h) => float32ToF16Bits(bf16BitsToFloat32(h)));
      expect(new Uint16Array(await rt.readBytes(t))).toEqual(want);
      let zeroed = 0, subnormal = 0;
      want.forEach((h, i) => {
        if ((h & 0x7fff) === 0 && (bits[i]! & 0x7fff) !== 0) zeroed++;
        if ((h & 0x7c00) === 0 && (h & 0x3ff) !== 0) subnormal++;
      });
      expectedLosses.push({ name, from: "bf16", to: "f16", numel: bits.length, overflow: 0, zeroed, subnormal });
    }
    store.close();
    const r = m.loadReport;
    expect(r.tensors).toBe(tensors.size);
    expect(r.conversions["bf16→f32"]).toBe(2 * m.cfg.numLayers + 1);
    expect(r.losses.sort((a, b) => a.name.localeCompare(b.name))).toEqual(expectedLosses.sort((a, b) => a.name.localeCompare(b.name)));
    const up = r.losses.find((l) => l.name === UNDER)!;
    expect(up.zeroed).toBeGreaterThanOrEqual(2);
    expect(up.subnormal).toBeGreaterThanOrEqual(2);
    expect(formatLoadReport(r)).toMatch(/^\d+\.\d\d s for 21 tensors, \d\.\d\d GB \(.* GB\/s; reading \d+\.\d\d s, waiting for the GPU \d+\.\d\d s\); converted on the GPU: bf16→f32 ×5, bf16→f16 ×16$/);
    // The host's share of the load: reading and waiting are parts of the whole.
    expect(r.readSeconds).toBeGreaterThan(0);
    expect(r.waitSeconds).toBeGreaterThanOrEqual(0);
    expect(r.readSeconds + r.waitSeconds).toBeLessThanOrEqual(r.seconds);
    expect(formatUnderflow(r.losses)).toContain("values flushed to zero");
    // The sharded load and the single file's give the same model.
    const single = await GpuModel.load(underflowing, { weightDtype: "f16" });
    expect(await nll(single)).toBe(await nll(m));
  }, 60_000);

  test("overflow in f16 is refused, naming the tensor and its count, and frees what was uploaded", async () => {
    const inUse = rt.memory.inUseBytes;
    const err = await GpuModel.load(overflowing, { weightDtype: "f16" }).then(() => null, (e: Error) => e);
    expect(err?.message).toContain(`1 tensor(s) overflow f16`);
    expect(err?.message).toContain(`'${OVER}': 3 of 8,192 values beyond f16's range (bf16→f16)`);
    expect(err?.message).toContain("--weight-dtype bf16 or --weight-dtype f32");
    expect(rt.memory.inUseBytes).toBe(inUse);
  }, 60_000);

  test("bf16 and f32 weights load the same checkpoint and agree; the huge values are kept", async () => {
    const asBf16 = await GpuModel.load(overflowing, { weightDtype: "bf16" });
    const asF32 = await GpuModel.load(overflowing, { weightDtype: "f32" });
    expect(asBf16.loadReport.losses).toEqual([]); // nothing narrowed
    const down = new Uint16Array(await rt.readBytes(asBf16.weights.layers[1]!.down));
    expect(Array.from(down.subarray(20, 23), bf16BitsToFloat32)).toEqual([99840, -70144, 65536]);
    expect((await rt.read(asF32.weights.layers[1]!.down)).subarray(20, 23)).toEqual(new Float32Array([99840, -70144, 65536]));
    const a = await nll(asBf16), c = await nll(asF32);
    expect(Number.isFinite(a)).toBe(true);
    expect(Math.abs(a - c)).toBeLessThan(1e-4 * Math.abs(c));
  }, 60_000);
});
