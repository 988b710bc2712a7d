// writeModelDir: the base's shard layout and dtypes, replaced weights, the files beside them.
import { describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  INDEX_FILE, bf16ToFloat32Array, float32ToBf16Array, openCheckpoint, tensorsWithWeights, writeModelDir, writeSafetensors, writeTinyModel,
} from "../src/index.ts";

describe("writeModelDir", () => {
  test("a sharded bf16 base: same shards and index, replaced weights in bf16, others byte for byte", () => {
    const root = mkdtempSync(join(tmpdir(), "model-dir-"));
    try {
      const tiny = join(root, "tiny");
      writeTinyModel(tiny, { dtype: "bf16", seed: 3 });
      // Re-shard the tiny model in two files under an index.
      const base = join(root, "base");
      mkdirSync(base);
      const src = openCheckpoint(tiny);
      const names = src.names();
      const shardOf = (n: string) => (n.startsWith("model.layers.1.") ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors");
      for (const shard of new Set(names.map(shardOf))) {
        writeSafetensors(join(base, shard), names.filter((n) => shardOf(n) === shard).map((n) => {
          const i = src.info(n);
          return { name: n, dtype: i.dtype, shape: i.shape, data: src.raw(n) };
        }), { format: "pt" });
      }
      writeFileSync(join(base, INDEX_FILE), JSON.stringify({ metadata: {}, weight_map: Object.fromEntries(names.map((n) => [n, shardOf(n)])) }));
      for (const f of readdirSync(tiny)) if (!f.endsWith(".safetensors")) copyFileSync(join(tiny, f), join(base, f));
      src.close();

      const store = openCheckpoint(base);
      const q = "model.layers.1.self_attn.q_proj.weight";
      const newQ = store.toFloat32(q).map((x) => x + 0.5);
      const out = join(root, "out");
      writeModelDir(out, {
        baseDir: base, store, tensors: tensorsWithWeights(store, new Map([[q, newQ]])), tokenizerDir: base,
        chatTemplate: "{{ messages }}", extraFiles: { "training_args.json": "{}\n" },
      });
      expect(() => tensorsWithWeights(store, new Map([["nope.weight", newQ]]))).toThrow("no tensor 'nope.weight'");
      const written = openCheckpoint(out);
      try {
        expect(written.names()).toEqual(names);
        expect(JSON.parse(readFileSync(join(out, INDEX_FILE), "utf8")).weight_map).toEqual(Object.fromEntries(names.map((n) => [n, shardOf(n)])));
        expect(written.info(q).dtype).toBe("BF16");
        expect(written.toFloat32(q)).toEqual(bf16ToFloat32Array(float32ToBf16Array(newQ)));
        const other = "model.layers.0.mlp.up_proj.weight";
        expect(written.raw(other)).toEqual(store.raw(other));
      } finally {
        written.close();
      }
      expect(readFileSync(join(out, "config.json"), "utf8")).toBe(readFileSync(join(base, "config.json"), "utf8"));
      expect(readFileSync(join(out, "chat_template.jinja"), "utf8")).toBe("{{ messages }}");
      expect(readdirSync(out)).toContain("tokenizer.json");
      expect(readdirSync(out)).toContain("training_args.json");
      // F32 on request (checkpoints keep the f32 masters).
      const f32 = tensorsWithWeights(store, new Map([[q, newQ]]), "F32");
      expect(f32.find((t) => t.name === q)!.dtype).toBe("F32");
      store.close();
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
