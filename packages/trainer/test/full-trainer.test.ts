/**
 * Full fine-tuning: FullTrainer's gradient of every weight
 * against central finite differences of the float64 CPU reference forward (cpu-reference.ts),
 * on the tiny llama (untied head) and qwen2 (tied head, q/k/v biases) models.
 */
import { describe, expect, test } from "bun:test";
import path from "node:path";
import { cpuReferenceForward, f16ToFloat32Array, float32ToF16Array, fusedF16Copies, GpuModel, writeTinyModel } from "@tuneloom/model";
import { assembleBatch } from "../src/batching.ts";
import { GpuError } from "@tuneloom/kernels";
import { relError } from "@tuneloom/kernels/testing.ts";
import { formatFullBuffers, formatFullMemory, fullAllocationError, fullFinetuneMemory, fullParameterCount, fullParamSpecs, planFullBuffers } from "../src/full-memory.ts";
import { FullTrainer } from "../src/gpu/full-trainer.ts";
import { maxBindableBytes, planChunks } from "../src/gpu/param-chunks.ts";
import { Rng } from "../src/rng.ts";
import { tempDir } from "./helpers.ts";

/** Mean next-token NLL of `ids` (every token after the first a target) in float64. */
function cpuLoss(cfg: Parameters<typeof cpuReferenceForward>[0], weights: Map<string, Float32Array>, ids: number[]): number {
  const logits = cpuReferenceForward(cfg, { has: (n) => weights.has(n), toFloat32: (n) => weights.get(n)! }, ids);
  const V = cfg.vocabSize;
  let sum = 0;
  for (let t = 0; t + 1 < ids.length; t++) {
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[t * V + v]!);
    let z = 0;
    for (let v = 0; v < V; v++) z += Math.exp(logits[t * V + v]! - max);
    sum += max + Math.log(z) - logits[t * V + ids[t + 1]!]!;
  }
  return sum / (ids.length - 1);
}

describe("FullTrainer: every weight's gradient against float64 finite differences", () => {
  for (const arch of ["llama", "qwen2"] as const) {
    test(`${arch} tiny model, gradient checkpointing`, async () => {
      const dir = path.join(tempDir("full-grad-"), arch);
      const { config: cfg } = writeTinyModel(dir, { arch, seed: 5 });
      const model = await GpuModel.load(dir, { weightDtype: "f32" });
      const trainer = new FullTrainer(model, { gradientCheckpointing: true, weightDecay: 0, maxGradNorm: 1e9 });
      const rng = new Rng(11);
      const ids = Array.from({ length: 12 }, () => rng.nextInt(cfg.vocabSize));
      const ex = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), numTargets: ids.length - 1, truncated: false, source: { file: "t", line: 1 } };
      const batch = assembleBatch([[ex]], { padId: 0 });
      const r = await trainer.step([batch], 0, 1, false);
      const weights = await trainer.getWeights();
      const grads = await trainer.getGradients();
      expect(r.loss).toBeCloseTo(cpuLoss(cfg, weights, ids), 4);
      expect([...grads.keys()]).toEqual(trainer.names);
      expect(grads.has("lm_head.weight")).toBe(arch === "llama");
      if (arch === "qwen2") expect(grads.has("model.layers.0.self_attn.q_proj.bias")).toBe(true);

      let worst = 0;
      for (const [name, g] of grads) {
        const w = weights.get(name)!;
        const scale = Math.max(...g.map(Math.abs));
        // the largest gradient entry and a random one
        const picks = [g.indexOf(g.reduce((a, b) => (Math.abs(b) > Math.abs(a) ? b : a), 0)), rng.nextInt(g.length)];
        for (const i of picks) {
          const orig = w[i]!;
          const h = 1e-3 * Math.max(1, Math.abs(orig));
          w[i] = orig + h;
          const up = w[i]!, lUp = cpuLoss(cfg, weights, ids);
          w[i] = orig - h;
          const down = w[i]!, lDown = cpuLoss(cfg, weights, ids);
          w[i] = orig;
          const fd = (lUp - lDown) / (up - down);
          const err = Math.abs(g[i]! - fd) / (Math.abs(fd) + 1e-3 * scale + 1e-6);
          worst = Math.max(worst, err);
          if (err > 1e-3) throw new Error(`${name}[${i}]: GPU ${g[i]} vs finite differences ${fd} (relative error ${err.toExponential(2)})`);
        }
      }
      expect(worst).toBeLessThan(1e-3); // measured on lavapipe: 1.7e-5 (llama), 1.8e-5 (qwen2)
    }, 120_000);
  }
});

describe("FullTrainer: selective checkpointing", () => {
  // f32 weights: the kept attention output, lse, gate and up are the forward's own, which the
  // recompute reproduces bit for bit, so every weight's gradient is unchanged.
  test("layers that keep their attention output and MLP give the full recompute's loss and every gradient exactly", async () => {
    const dir = path.join(tempDir("full-keep-"), "qwen2");
    const { config: cfg } = writeTinyModel(dir, { arch: "qwen2", seed: 9 });
    const model = await GpuModel.load(dir, { weightDtype: "f32" });
    const rng = new Rng(13);
    const ids = Array.from({ length: 20 }, () => rng.nextInt(cfg.vocabSize));
    const ex = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), numTargets: ids.length - 1, truncated: false, source: { file: "t", line: 1 } };
    const batch = assembleBatch([[ex]], { padId: 0 });
    const run = async (keep: "all" | 0) => {
      const trainer = new FullTrainer(model, { gradientCheckpointing: true, weightDecay: 0, maxGradNorm: 0, keepAttentionLayers: keep, keepMlpLayers: keep });
      const r = await trainer.step([batch], 0, 1, false);
      return { loss: r.loss, grads: await trainer.getGradients(), layers: [...trainer.selectiveLayers.attention, ...trainer.selectiveLayers.mlp] };
    };
    const kept = await run("all"), full = await run(0);
    expect(kept.layers).toEqual([0, 0]);
    expect(kept.loss).toBe(full.loss);
    for (const [name, g] of full.grads) expect(relError(kept.grads.get(name)!, g)).toBe(0);
    expect(full.grads.get("model.layers.0.mlp.gate_proj.weight")!.some((v) => v !== 0)).toBe(true);
  }, 120_000);
});

describe("FullTrainer: 16-bit weights", () => {
  test("f16 model: f32 masters are trained, the GEMMs' f16 copies are the rounded masters after each step", async () => {
    const dir = path.join(tempDir("full-f16-"), "llama");
    const { config: cfg } = writeTinyModel(dir, { arch: "llama", seed: 6 });
    const model = await GpuModel.load(dir, { weightDtype: "f16" });
    const trainer = new FullTrainer(model, { gradientCheckpointing: false, weightDecay: 0.01, maxGradNorm: 1 });
    const rng = new Rng(12);
    const ids = Array.from({ length: 16 }, () => rng.nextInt(cfg.vocabSize));
    const ex = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), numTargets: ids.length - 1, truncated: false, source: { file: "t", line: 1 } };
    const batch = assembleBatch([[ex]], { padId: 0 });
    const losses: number[] = [];
    for (let step = 1; step <= 4; step++) losses.push((await trainer.step([batch], 1e-2, step)).loss);
    expect(losses.at(-1)!).toBeLessThan(losses[0]!);
    // The model now computes with f16(master) for matrices, the f32 masters for norms.
    const masters = await trainer.getWeights();
    const rounded = new Map([...masters].map(([n, w]) => [n, n.endsWith("norm.weight") ? w : f16ToFloat32Array(float32ToF16Array(w))]));
    const T = ids.length;
    const labels = Int32Array.from({ length: T }, (_, t) => (t + 1 < T ? ids[t + 1]! : -100));
    const gpu = await model.nll(Int32Array.from(ids), Int32Array.from({ length: T }, (_, t) => t), new Int32Array(T), labels);
    expect(gpu.sum / gpu.count).toBeCloseTo(cpuLoss(cfg, rounded, ids), 3);
  }, 120_000);
});

describe("FullTrainer: 16-bit weights against f32 weights", () => {
  // On a GPU with subgroup matrices the f16 model's products (dW included) run on tensor cores, with
  // and without the f16 copies written by SwiGLU and RMSNorm (decoder-layer.ts fusedF16Copies); the
  // f32 model's run the exact f32 kernels. Both start from the same f32 masters, so the gradients
  // differ by 16-bit rounding only (weights, operands).
  test("every weight's gradient within 16-bit rounding of the f32 model's, fused copies on and off", async () => {
    const dir = path.join(tempDir("full-f16-f32-"), "llama");
    const { config: cfg } = writeTinyModel(dir, { arch: "llama", seed: 8 });
    const rng = new Rng(21);
    const ids = Array.from({ length: 32 }, () => rng.nextInt(cfg.vocabSize)); // T = 32: the tensor-core products take it
    const ex = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), numTargets: ids.length - 1, truncated: false, source: { file: "t", line: 1 } };
    const batch = assembleBatch([[ex]], { padId: 0 });
    const opts = { gradientCheckpointing: true, weightDecay: 0, maxGradNorm: 0 };
    const f32 = new FullTrainer(await GpuModel.load(dir, { weightDtype: "f32" }), opts);
    const ref = await f32.step([batch], 0, 1, false);
    const gb = [...(await f32.getGradients()).values()];
    const was = fusedF16Copies.enabled;
    try {
      for (const fused of [true, false]) {
        fusedF16Copies.enabled = fused;
        const f16 = new FullTrainer(await GpuModel.load(dir, { weightDtype: "f16" }), opts);
        const r = await f16.step([batch], 0, 1, false);
        expect(Math.abs(r.loss - ref.loss) / ref.loss).toBeLessThan(2e-3);
        const ga = [...(await f16.getGradients()).values()];
        const flat = (xs: Float32Array[]) => Float32Array.from(xs.flatMap((x) => Array.from(x)));
        const a = flat(ga), b = flat(gb);
        expect(a.every(Number.isFinite)).toBe(true);
        expect(relError(a, b)).toBeLessThan(2e-2);
      }
    } finally {
      fusedF16Copies.enabled = was;
    }
  }, 120_000);
});

describe("FullTrainer: data-parallel state broadcast", () => {
  test("a rank takes root's masters and moments (every chunk) and computes with them (16-bit copies refreshed)", async () => {
    const dir = path.join(tempDir("full-bcast-"), "llama");
    const { config: cfg } = writeTinyModel(dir, { arch: "llama", seed: 8 });
    const rng = new Rng(3);
    const ids = Array.from({ length: 16 }, () => rng.nextInt(cfg.vocabSize));
    const ex = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), numTargets: ids.length - 1, truncated: false, source: { file: "t", line: 1 } };
    const batch = assembleBatch([[ex]], { padId: 0 });
    const opts = { gradientCheckpointing: false, weightDecay: 0, maxGradNorm: 1, maxChunkBytes: 128 * 1024 };
    // Root trains two steps (so weights and moments differ from the other rank's fresh ones).
    const rootModel = await GpuModel.load(dir, { weightDtype: "f16" });
    const root = new FullTrainer(rootModel, opts);
    for (let step = 1; step <= 2; step++) await root.step([batch], 1e-2, step);
    expect(root.chunks.length).toBeGreaterThan(1);
    const sent: Uint8Array[] = [];
    await root.broadcastState({ rank: 0, size: 2, allReduceSum: () => {}, broadcast: (buf) => void sent.push(buf.slice()) });
    // The other rank: its broadcast receives what root sent, in the same order.
    const other = new FullTrainer(await GpuModel.load(dir, { weightDtype: "f16" }), opts);
    let i = 0;
    await other.broadcastState({ rank: 1, size: 2, allReduceSum: () => {}, broadcast: (buf) => buf.set(sent[i++]!) });
    expect(i).toBe(sent.length);
    expect(sent.length).toBe(3 * root.chunks.length);
    expect(await other.getWeights()).toEqual(await root.getWeights());
    expect(await other.getOptimizerMoments()).toEqual(await root.getOptimizerMoments());
    // Both now take the same third step from the same state: equal loss (the f16 copies were refreshed).
    const [a, b] = [await root.step([batch], 1e-2, 3, false), await other.step([batch], 1e-2, 3, false)];
    expect(b.loss).toBe(a.loss);
  }, 120_000);
});

describe("FullTrainer: flat buffers split into chunks", () => {
  test("planChunks fills runs of consecutive tensors up to the limit (256-byte aligned) and refuses a tensor over it", () => {
    const spec = (name: string, numel: number) => ({ name, shape: [numel] });
    // aligned sizes: 100 → 512 B, 64 → 256 B, 200 → 1024 B, 1 → 256 B
    const runs = planChunks([spec("a", 100), spec("b", 64), spec("c", 200), spec("d", 1)], 1024);
    expect(runs.map((r) => r.map((s) => s.name))).toEqual([["a", "b"], ["c"], ["d"]]);
    expect(planChunks([spec("a", 100), spec("b", 64), spec("c", 200)], 4096).length).toBe(1);
    expect(() => planChunks([spec("a", 100), spec("big", 257)], 1024)).toThrow(/big \[257\] alone needs a 1,280-byte f32 buffer, over the device's per-buffer limit of 1,024 bytes/);
    expect(() => planChunks([spec("a", 1)], 0)).toThrow(/maxChunkBytes must be a number ≥ 256/);
    expect(maxBindableBytes({ maxBufferSize: 2 ** 32, maxStorageBufferBindingSize: 2 ** 31 - 4 })).toBe(2 ** 31 - 256);
  });

  for (const arch of ["llama", "qwen2"] as const)
    test(`${arch}: AdamW steps with the buffers in many chunks give one chunk's weights and moments`, async () => {
      const dir = path.join(tempDir("full-chunks-"), arch);
      const { config: cfg } = writeTinyModel(dir, { arch, seed: 7 });
      const rng = new Rng(13);
      const batches = Array.from({ length: 3 }, () => {
        const ids = Array.from({ length: 14 }, () => rng.nextInt(cfg.vocabSize));
        return assembleBatch([[{ inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), numTargets: ids.length - 1, truncated: false, source: { file: "t", line: 1 } }]], { padId: 0 });
      });
      const run = async (steps: number, maxGradNorm: number, maxChunkBytes?: number) => {
        const trainer = new FullTrainer(await GpuModel.load(dir, { weightDtype: "f32" }), {
          gradientCheckpointing: true, weightDecay: 0.1, maxGradNorm, ...(maxChunkBytes ? { maxChunkBytes } : {}),
        });
        const initial = await trainer.getWeights(), norms: number[] = [];
        for (let step = 1; step <= steps; step++) norms.push((await trainer.step([batches[step - 1]!], 1e-2, step)).gradNorm);
        const moments = await trainer.getOptimizerMoments();
        const of = (k: "m" | "v") => new Map([...moments].map(([n, mv]) => [n, mv[k]]));
        return { chunks: trainer.chunks.length, initial, norms, weights: await trainer.getWeights(), m: of("m"), v: of("v") };
      };
      const CHUNK = 120 * 1024; // the embedding (115 KB) alone, then a few tensors a chunk
      // Per tensor max |a − b| / max |b| (the parity tests' measure), worst over tensors.
      const worst = (a: Map<string, Float32Array>, b: Map<string, Float32Array>) => {
        expect([...a.keys()]).toEqual([...b.keys()]);
        let err = 0;
        for (const [name, x] of a) {
          const y = b.get(name)!;
          let d = 0, ref = 0;
          for (let i = 0; i < x.length; i++) (d = Math.max(d, Math.abs(x[i]! - y[i]!))), (ref = Math.max(ref, Math.abs(y[i]!)));
          err = Math.max(err, d / ref);
        }
        return err;
      };

      // Without clipping every element sees the same gradient and the same update: bit for bit.
      const one = await run(3, 0), many = await run(3, 0, CHUNK);
      expect(one.chunks).toBe(1);
      expect(many.chunks).toBeGreaterThanOrEqual(4);
      expect(worst(one.weights, one.initial)).toBeGreaterThan(1e-2); // the steps did move the weights
      many.norms.forEach((n, i) => expect(Math.abs(n - one.norms[i]!) / one.norms[i]!).toBeLessThan(1e-6)); // the reported norm: over all chunks
      for (const k of ["weights", "m", "v"] as const)
        for (const [name, x] of one[k]) expect(Buffer.from(many[k].get(name)!.buffer).equals(Buffer.from(x.buffer))).toBe(true);

      // Clipping active: one norm over all chunks (the clip coefficient is what every chunk's AdamW
      // applies); grouping its partial sums per chunk moves it, and the update, by ~1e-7.
      const oneC = await run(1, 0.5), manyC = await run(1, 0.5, CHUNK);
      expect(oneC.norms[0]!).toBeGreaterThan(2 * 0.5); // the coefficient is well below 1
      expect(Math.abs(manyC.norms[0]! - oneC.norms[0]!) / oneC.norms[0]!).toBeLessThan(1e-6);
      expect(worst(manyC.weights, oneC.weights)).toBeLessThan(1e-6);
      expect(worst(manyC.m, oneC.m)).toBeLessThan(1e-6);
      expect(worst(manyC.v, oneC.v)).toBeLessThan(1e-6);
    }, 120_000);
});

describe("full fine-tuning memory and buffer plan", () => {
  const shape = (over: Record<string, unknown>) => ({ ...writeTinyModel(path.join(tempDir("full-mem-"), "m"), { arch: "llama", seed: 1 }).config, ...over });
  const llama8b = () => shape({ hiddenSize: 4096, intermediateSize: 14336, numHeads: 32, numKvHeads: 8, headDim: 128, vocabSize: 128256, numLayers: 32, tieWordEmbeddings: false });
  // Qwen2.5-0.5B's published shape (q/k/v biases, tied head): 494,032,768 parameters.
  const qwen05b = () => shape({ arch: "qwen2", hiddenSize: 896, intermediateSize: 4864, numHeads: 14, numKvHeads: 2, headDim: 64, vocabSize: 151936, numLayers: 24, tieWordEmbeddings: true, attentionBias: true });
  const gpuLimits = { maxBufferSize: 2 ** 32, maxStorageBufferBindingSize: 2 ** 31 }; // a common Dawn/Vulkan pair
  const lavapipe = { maxBufferSize: 2 ** 32 - 1, maxStorageBufferBindingSize: 2 ** 27 };

  test("the parameter count matches the trainer's, Llama-3.1-8B's published 8,030,261,248 and Qwen2.5-0.5B's 494,032,768; the statement carries the numbers", async () => {
    for (const arch of ["llama", "qwen2"] as const) {
      const dir = path.join(tempDir("full-mem-"), arch);
      const { config: cfg } = writeTinyModel(dir, { arch, seed: 1 });
      const trainer = new FullTrainer(await GpuModel.load(dir, { weightDtype: "f32" }), { gradientCheckpointing: true, weightDecay: 0, maxGradNorm: 1 });
      expect(fullParameterCount(cfg, arch === "qwen2")).toBe(trainer.parameterCount);
      expect(trainer.names).toEqual(fullParamSpecs(cfg).map((s) => s.name));
      expect(trainer.chunks.length).toBe(planFullBuffers(cfg, trainer.model.rt.caps.limits, "x").chunks);
    }
    const big = llama8b();
    const P = fullParameterCount(big, false);
    expect(P).toBe(8_030_261_248);
    expect(fullParamSpecs(big).reduce((n, s) => n + s.shape.reduce((a, d) => a * d, 1), 0)).toBe(P);
    expect(fullParameterCount(qwen05b(), true)).toBe(494_032_768);
    const e = fullFinetuneMemory(big, { params: P, weightBytes: 2, tokensPerMicroBatch: 8 * 1024, gradientCheckpointing: true });
    expect(e.masters + e.copies16 + e.grads + e.optimizer).toBe(18 * P);
    expect(formatFullMemory(e)).toMatch(/^memory: f32 masters 32\.12 GB \+ 16-bit copies 16\.06 GB \+ gradients 32\.12 GB \+ AdamW 64\.24 GB \+ activations \d+\.\d\d GB = \d+\.\d\d GB \(8,030,261,248 parameters\)$/);
  }, 60_000);

  test("buffers split under the per-buffer limit: Llama-3.1-8B and Qwen2.5-0.5B plan on a GPU's limits; only a tensor over the limit is refused", () => {
    // 8B: 32.12 GB of masters in chunks of at most 2 GiB, 16 or more of each kind.
    const p8 = planFullBuffers(llama8b(), gpuLimits, "a test GPU");
    expect(p8.limitBytes).toBe(2 ** 31);
    expect(p8.largestBytes).toBeLessThanOrEqual(2 ** 31);
    expect(p8.chunks).toBeGreaterThanOrEqual(Math.ceil((4 * 8_030_261_248) / 2 ** 31));
    // Qwen2.5-0.5B: 1.98 GB fits one 2 GiB buffer; under a 1 GiB limit it splits instead of being refused.
    const q = planFullBuffers(qwen05b(), gpuLimits, "a test GPU");
    expect(q.chunks).toBe(1);
    const q1 = planFullBuffers(qwen05b(), { ...gpuLimits, maxStorageBufferBindingSize: 2 ** 30 }, "a test GPU");
    expect(q1.chunks).toBe(2);
    expect(formatFullBuffers(q1)).toMatch(/^flat f32 buffers: 2 each of masters, gradients, AdamW m and v \(largest 1\.\d\d GB; the device binds at most 1\.07 GB per buffer\)$/);
    // lavapipe binds 128 MiB: Qwen2.5-0.5B's 545 MB embedding cannot be bound there, and says so.
    expect(() => planFullBuffers(qwen05b(), lavapipe, "lavapipe"))
      .toThrow(/^full fine-tuning is not possible on lavapipe: model\.embed_tokens\.weight \[151936, 896\] alone needs a 544,538,624-byte f32 buffer, over the device's per-buffer limit of 134,217,728 bytes.*Train a LoRA adapter instead/);
  });

  test("an out-of-memory GPU error while allocating becomes the refusal with the memory statement; other errors pass through", () => {
    const e = fullFinetuneMemory(llama8b(), { params: 8_030_261_248, weightBytes: 2, tokensPerMicroBatch: 1024, gradientCheckpointing: true });
    const oom = fullAllocationError(new GpuError("full:params0", "Out of memory allocating 2147483648 bytes"), e, "a test GPU") as Error;
    expect(oom.message).toMatch(/^full fine-tuning does not fit in this GPU's memory \(a test GPU\): it needs about \d+\.\d\d GB \(f32 masters 32\.12 GB .*\), and the device could not allocate its buffers \(GPU error in full:params0: Out of memory.*drop --full/);
    // What Dawn's Vulkan backend said on an H100 (session 7), as an uncaptured GPUOutOfMemoryError.
    const vk = "vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY\n - While calling [Device \"tuneloom\"].CreateBuffer([BufferDescriptor \"\"full:grads8\"\"]).";
    for (const err of [new GpuError("uncaptured", vk), new GpuError("uncaptured", "allocation of 2 GB refused", "out-of-memory")]) {
      const msg = (fullAllocationError(err, e, "an H100") as Error).message;
      expect(msg).toStartWith("full fine-tuning does not fit in this GPU's memory (an H100): it needs about");
      expect(msg).not.toContain("While calling"); // the cause's first line only
    }
    const other = new GpuError("x", "validation failed");
    expect(fullAllocationError(other, e, "a test GPU")).toBe(other);
    const plain = new Error("out of memory"); // not the GPU's
    expect(fullAllocationError(plain, e, "a test GPU")).toBe(plain);
  });
});
