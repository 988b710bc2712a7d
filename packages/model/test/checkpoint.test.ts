import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expectedTensors, openCheckpoint } from "../src/checkpoint.ts";
import { parseModelConfig } from "../src/config.ts";
import { writeSafetensors, type TensorToWrite } from "../src/safetensors.ts";
import {
  bf16BitsToFloat32, bf16ToFloat32Array, f16BitsToFloat32, f16ToFloat32Array, float32Bits, float32FromBits,
  float32ToBf16Array, float32ToBf16Bits, float32ToF16Array, float32ToF16Bits,
} from "../src/half-floats.ts";

const tinyCfg = parseModelConfig({
  model_type: "qwen2", hidden_size: 8, intermediate_size: 16, num_hidden_layers: 2, num_attention_heads: 2,
  num_key_value_heads: 1, vocab_size: 10, rms_norm_eps: 1e-6, max_position_embeddings: 64, tie_word_embeddings: true,
});

function tensorsFor(specs: { name: string; shape: number[] }[]): TensorToWrite[] {
  return specs.map(({ name, shape }, k) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, i) => k + i / 100);
    return { name, dtype: "F32", shape, data };
  });
}

describe("expectedTensors", () => {
  test("qwen2: q/k/v biases, no o bias, tied head", () => {
    const names = expectedTensors(tinyCfg).map((t) => t.name);
    expect(names).toContain("model.layers.1.self_attn.k_proj.bias");
    expect(names).not.toContain("model.layers.0.self_attn.o_proj.bias");
    expect(names).not.toContain("lm_head.weight");
    expect(expectedTensors(tinyCfg).find((t) => t.name === "model.layers.0.self_attn.k_proj.weight")!.shape).toEqual([4, 8]);
    expect(expectedTensors(tinyCfg).find((t) => t.name === "model.layers.0.mlp.down_proj.weight")!.shape).toEqual([8, 16]);
  });
  test("untied llama gets lm_head, no biases", () => {
    const cfg = { ...tinyCfg, arch: "llama" as const, attentionBias: false, tieWordEmbeddings: false };
    const names = expectedTensors(cfg).map((t) => t.name);
    expect(names.at(-1)).toBe("lm_head.weight");
    expect(names.some((n) => n.endsWith(".bias"))).toBe(false);
  });
});

describe("openCheckpoint", () => {
  test("single file: all tensors, toFloat32 from F32/BF16/F16, expectTensors passes", () => {
    const dir = mkdtempSync(join(tmpdir(), "ckpt-"));
    const ts = tensorsFor(expectedTensors(tinyCfg));
    ts.push({ name: "extra.bf16", dtype: "BF16", shape: [3], data: float32ToBf16Array(new Float32Array([1, -0.5, 3])) });
    ts.push({ name: "extra.f16", dtype: "F16", shape: [2], data: float32ToF16Array(new Float32Array([65504, 2 ** -24])) });
    ts.push({ name: "extra.i32", dtype: "I32", shape: [1], data: new Int32Array([7]) });
    writeSafetensors(join(dir, "model.safetensors"), ts, { format: "pt" });
    const store = openCheckpoint(dir);
    store.expectTensors(expectedTensors(tinyCfg));
    expect(() => store.expectTensors(expectedTensors(tinyCfg), { allowUnexpected: false })).toThrow("unexpected tensor 'extra.bf16'");
    expect(store.info("model.norm.weight")).toEqual({ dtype: "F32", shape: [8], file: join(dir, "model.safetensors"), byteLength: 32 });
    expect(store.toFloat32("extra.bf16")).toEqual(new Float32Array([1, -0.5, 3]));
    expect(store.toFloat32("extra.f16")).toEqual(new Float32Array([65504, 2 ** -24]));
    expect(() => store.toFloat32("extra.i32")).toThrow("tensor 'extra.i32' has dtype I32");
    const w = store.toFloat32("model.embed_tokens.weight");
    expect(w[1]).toBeCloseTo(0.01, 6);
    w[0] = 42; // a copy: the store is unaffected
    expect(store.toFloat32("model.embed_tokens.weight")[0]).toBe(0);
    expect(store.raw("model.norm.weight").length).toBe(32);
    expect(() => store.info("nope")).toThrow("no tensor named 'nope'");
  });

  test("expectTensors reports every missing key and shape mismatch in one error, naming the file", () => {
    const dir = mkdtempSync(join(tmpdir(), "ckpt-"));
    const specs = expectedTensors(tinyCfg)
      .filter((t) => t.name !== "model.norm.weight" && t.name !== "model.layers.1.mlp.up_proj.weight")
      .map((t) => (t.name === "model.layers.0.self_attn.q_proj.weight" ? { ...t, shape: [8, 4] } : t));
    writeSafetensors(join(dir, "model.safetensors"), tensorsFor(specs));
    let msg = "";
    try {
      openCheckpoint(dir).expectTensors(expectedTensors(tinyCfg));
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toContain(`${join(dir, "model.safetensors")}: 3 problem(s)`);
    expect(msg).toContain("missing tensor 'model.norm.weight' (expected shape [8])");
    expect(msg).toContain("missing tensor 'model.layers.1.mlp.up_proj.weight'");
    expect(msg).toContain("shape mismatch for 'model.layers.0.self_attn.q_proj.weight'");
    expect(msg).toContain("has [8, 4], config implies [8, 8]");
  });

  test("sharded: index + shards, and every way an index can be wrong", () => {
    const dir = mkdtempSync(join(tmpdir(), "ckpt-"));
    const ts = tensorsFor(expectedTensors(tinyCfg));
    const half = Math.floor(ts.length / 2);
    const shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    writeSafetensors(join(dir, shards[0]!), ts.slice(0, half));
    writeSafetensors(join(dir, shards[1]!), ts.slice(half));
    const weightMap = Object.fromEntries(ts.map((t, i) => [t.name, shards[i < half ? 0 : 1]]));
    const writeIndex = (m: unknown) => writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 1 }, weight_map: m }));
    writeIndex(weightMap);
    const store = openCheckpoint(dir);
    store.expectTensors(expectedTensors(tinyCfg));
    expect(store.info(ts.at(-1)!.name).file).toBe(join(dir, shards[1]!));
    expect(store.names()).toHaveLength(ts.length);

    writeIndex({ ...weightMap, "model.norm.weight": "model-00003-of-00002.safetensors" });
    expect(() => openCheckpoint(dir)).toThrow("shard file(s) listed in weight_map not found");
    writeIndex({ ...weightMap, "model.norm.weight": shards[0] });
    expect(() => openCheckpoint(dir)).toThrow(`'model.norm.weight' (index says ${shards[0]})`);
    writeIndex({ ...weightMap, "model.norm.weight": "../evil.safetensors" });
    expect(() => openCheckpoint(dir)).toThrow("must be a plain file name");
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {} }));
    expect(() => openCheckpoint(dir)).toThrow("model.safetensors.index.json: field 'weight_map'");
  });

  test("no weights at all", () => {
    const dir = mkdtempSync(join(tmpdir(), "ckpt-"));
    expect(() => openCheckpoint(dir)).toThrow("no weights found (expected model.safetensors or model.safetensors.index.json)");
  });
});

describe("bf16 / f16 conversions (bit-exact)", () => {
  test("bf16 round-to-nearest-even, ties, inf, NaN, subnormals", () => {
    expect(float32ToBf16Bits(1)).toBe(0x3f80);
    // 1 + 2^-8 is exactly halfway between bf16 1 and 1+2^-7: ties go to even (1).
    expect(float32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    // 1 + 3·2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6: goes up to even.
    expect(float32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(float32ToBf16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(float32ToBf16Bits(Infinity)).toBe(0x7f80);
    expect(float32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(float32ToBf16Bits(3.4e38)).toBe(0x7f80); // rounds past the largest bf16 to inf
    const nan = float32ToBf16Bits(NaN);
    expect(Number.isNaN(bf16BitsToFloat32(nan))).toBe(true);
    expect(Number.isNaN(bf16BitsToFloat32(float32ToBf16Bits(float32FromBits(0x7f800001))))).toBe(true); // signalling NaN stays NaN
    expect(float32ToBf16Bits(-0)).toBe(0x8000);
    const sub = float32FromBits(0x00010000); // a float32 subnormal that is exactly a bf16 subnormal
    expect(float32ToBf16Bits(sub)).toBe(0x0001);
    expect(bf16BitsToFloat32(0x0001)).toBe(sub);
    // array path agrees with the scalar path on random bit patterns
    const bits = new Uint32Array(10000).map((_, i) => (Math.imul(i, 2654435761) ^ (i << 7)) >>> 0);
    const f = new Float32Array(bits.buffer);
    const arr = float32ToBf16Array(f);
    // (a NaN read into a JS number loses its payload, so NaNs only need to stay NaN)
    for (let i = 0; i < f.length; i++)
      if (Number.isNaN(f[i]!)) expect(Number.isNaN(bf16BitsToFloat32(arr[i]!))).toBe(true);
      else expect(arr[i]).toBe(float32ToBf16Bits(f[i]!) as number);
    const back = bf16ToFloat32Array(arr);
    for (let i = 0; i < 100; i++) if (!Number.isNaN(back[i]!)) expect(float32Bits(back[i]!)).toBe((arr[i]! << 16) >>> 0);
  });
  test("f16 agrees with Float16Array on edge cases and random values", () => {
    const edge = [0, -0, 1, -1, 65504, 65519.99, 65520, 1e6, -1e6, Infinity, -Infinity, 2 ** -24, 2 ** -25, 2 ** -25 * 1.0001,
      3 * 2 ** -25, 2 ** -14, 2 ** -14 - 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1e-10, 0.1, 1 / 3];
    const rnd: number[] = [];
    let s = 12345;
    for (let i = 0; i < 20000; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      rnd.push(float32FromBits(s));
    }
    const values = [...edge, ...rnd];
    const ref = new Uint16Array(new Float16Array(values).buffer);
    for (let i = 0; i < values.length; i++) {
      const mine = float32ToF16Bits(values[i]!);
      if (Number.isNaN(values[i]!)) expect(Number.isNaN(f16BitsToFloat32(mine))).toBe(true);
      else if (mine !== ref[i]) throw new Error(`f16 of ${values[i]} : got ${mine.toString(16)}, Float16Array ${ref[i]!.toString(16)}`);
    }
    // widening all 65536 patterns matches Float16Array
    const all = new Uint16Array(65536).map((_, i) => i);
    const wide = f16ToFloat32Array(all);
    const refWide = new Float16Array(all.buffer);
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(refWide[h]!)) expect(Number.isNaN(wide[h]!)).toBe(true);
      else if (!Object.is(wide[h], refWide[h])) throw new Error(`f16 bits ${h.toString(16)}: ${wide[h]} vs ${refWide[h]}`);
    }
    expect(f16BitsToFloat32(0x0001)).toBe(2 ** -24);
    expect(float32ToF16Bits(2 ** -25)).toBe(0); // tie at half the smallest subnormal → even (0)
    expect(float32ToF16Bits(3 * 2 ** -25)).toBe(2); // tie between 1 and 2 units → even (2)
    expect(float32ToF16Bits(65520)).toBe(0x7c00); // halfway past the max rounds to inf
  });
});
