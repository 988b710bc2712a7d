/**
 * What the gradient parity tests (trainer-grads-parity.test.ts: LoRA, full-grads-parity.test.ts:
 * full fine-tuning) share: the fixture tests/fixtures/hf/<arch>.json (make_fixtures.py), its
 * tiny model regenerated and checked by sha256, its training batch as our Batch, and the error
 * measure max |ours − ref| / max |ref|.
 */
import { expect } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GpuModel, writeTinyModel } from "@tuneloom/model";
import type { Batch } from "@tuneloom/trainer";

export const FIXTURE_DIR = join(import.meta.dir, "fixtures", "hf");
export const ARCHS = ["llama", "qwen2"] as const;
export type Arch = (typeof ARCHS)[number];

/** The fixture's training batch (right-padded, transformers' labels: label[t] is the token at t). */
export interface FixtureBatch { input_ids: number[][]; attention_mask: number[][]; labels: number[][]; lengths: number[] }

export interface Fixture {
  format: number;
  tiny_model: { seed: number; dtype: "f32" | "bf16"; sha256: Record<string, string> };
  pad_token_id: number;
  lora: {
    r: number;
    lora_alpha: number;
    adapter_dir: string;
    batch: FixtureBatch;
    loss: number;
    num_targets: number;
    grads: Record<string, { shape: number[]; values: number[] }>;
  };
  /** Absent in fixtures made before format 3. */
  full?: {
    tied_embeddings: boolean;
    loss: number;
    num_targets: number;
    num_parameters: number;
    /** Every parameter's gradient by transformers name: base64 of little-endian f32, row-major. */
    grads: Record<string, { shape: number[]; f32_base64: string }>;
  };
}

export const fixturePath = (arch: Arch) => join(FIXTURE_DIR, `${arch}.json`);

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

/** The fixture, and its tiny model written to a temporary folder (must be byte-identical to the one it was made from). */
export function loadFixture(arch: Arch): { fx: Fixture; modelDir: string } {
  const fx = JSON.parse(readFileSync(fixturePath(arch), "utf8")) as Fixture;
  const modelDir = join(mkdtempSync(join(tmpdir(), "grads-parity-")), arch);
  writeTinyModel(modelDir, { arch, seed: fx.tiny_model.seed, dtype: fx.tiny_model.dtype });
  expect(sha256(join(modelDir, "model.safetensors"))).toBe(fx.tiny_model.sha256["model.safetensors"]!);
  return { fx, modelDir };
}

/** The tiny model of a fixture on the GPU with f32 weights (as transformers ran it). */
export const loadF32Model = (modelDir: string) => GpuModel.load(modelDir, { weightDtype: "f32" });

/** base64 of little-endian f32 → values (the full section's encoding). */
export function decodeF32Base64(b64: string): Float32Array {
  const bytes = Buffer.from(b64, "base64");
  if (bytes.length % 4 !== 0) throw new Error(`f32_base64: ${bytes.length} bytes is not a whole number of float32 values`);
  const out = new Float32Array(bytes.length / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

export type Layout = "right-padded" | "packed";

/**
 * The fixture's batch as our Batch: transformers' labels (label[t] = the token at t, the loss at t − 1
 * predicts it) shifted to ours (labels[t] = the target of position t). Right-padded: rows of the longest
 * length, pads with sequence −1 and no target; packed: the sequences back to back.
 */
export function toBatch(b: FixtureBatch, padId: number, layout: Layout): Batch {
  const rowLength = Math.max(...b.lengths);
  const T = layout === "right-padded" ? rowLength * b.lengths.length : b.lengths.reduce((a, x) => a + x, 0);
  const inputIds = new Int32Array(T).fill(padId), labels = new Int32Array(T).fill(-100);
  const positions = new Int32Array(T), seqIds = new Int32Array(T).fill(-1);
  let t = 0;
  b.lengths.forEach((L, i) => {
    const rowEnd = t + (layout === "right-padded" ? rowLength : L);
    for (let p = 0; t + p < rowEnd; p++) {
      positions[t + p] = p;
      if (p >= L) continue;
      inputIds[t + p] = b.input_ids[i]![p]!;
      seqIds[t + p] = i;
      if (p + 1 < L) labels[t + p] = b.labels[i]![p + 1]!;
    }
    t = rowEnd;
  });
  const numTargets = labels.filter((x) => x !== -100).length;
  const numTokens = b.lengths.reduce((a, x) => a + x, 0);
  return layout === "right-padded"
    ? { inputIds, labels, positions, seqIds, numTargets, numSequences: b.lengths.length, numTokens, rows: b.lengths.length, rowLength }
    : { inputIds, labels, positions, seqIds, numTargets, numSequences: b.lengths.length, numTokens, rows: 1, rowLength: T };
}

/** max |a − b| / max |b| (b: the reference; lengths must agree). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let maxDiff = 0, maxRef = 0;
  for (let i = 0; i < b.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
    maxRef = Math.max(maxRef, Math.abs(b[i]!));
  }
  return maxDiff / maxRef;
}

/** Whether the fixture exists; when it does not, a warning naming the test that is skipped. */
export function fixturePresent(arch: Arch, test: string): boolean {
  const present = existsSync(fixturePath(arch));
  if (!present) console.warn(`${test}: ${fixturePath(arch)} is absent, so the ${arch} test is skipped (tests/fixtures/hf/make_fixtures.py makes it).`);
  return present;
}
