// report.ts's training tables: ratios only from lines of one device call, full fine-tuning rows
// kept apart from LoRA rows, diagnostic GEMM lines kept out of the GEMM table.
import { expect, test } from "bun:test";
import { decodeTable, gemmTable, trainFullTable, trainTable } from "../src/bench/report.ts";

const gpu = "NVIDIA H100 80GB HBM3";
const lines = [
  { call: "c1", gpu, op: "train", model: "smollm2-135m", target_fraction: 1, tok_s: 20000, peak_gib: 1 },
  { call: "c1", gpu, peer: "hf-peft", model: "smollm2-135m", tok_s: 10000, peak_gib: 2 },
  { call: "c2", gpu, op: "train", model: "smollm2-135m", full: true, buffers: 1, target_fraction: 1, tok_s: 9000, peak_gib: 3 },
  { call: "c2", gpu, peer: "hf-full", model: "smollm2-135m", tok_s: 6000, peak_gib: 4 },
];

test("LoRA rows pair ours with HF PEFT of the same call and ignore full fine-tuning lines", () => {
  const t = trainTable(lines);
  expect(t).toContain("| smollm2-135m | NVIDIA H100 80GB HBM3 | 20,000 | 1.00 | 10,000 | 2.00 | **2.00×** | 0.50× |");
  expect(t).not.toContain("9,000");
});

test("selective checkpointing lines (keep_attention_layers, keep_mlp_layers) make their own row against the same call's HF line", () => {
  const t = trainTable([
    ...lines,
    { call: "c1", gpu, op: "train", model: "smollm2-135m", target_fraction: 1, keep_mlp_layers: 20, tok_s: 25000, peak_gib: 1.5 },
    { call: "c1", gpu, op: "train", model: "smollm2-135m", target_fraction: 0.3, keep_mlp_layers: 20, tok_s: 26000, peak_gib: 1.5 },
    { call: "c1", gpu, op: "train", model: "smollm2-135m", target_fraction: 1, keep_attention_layers: 29, keep_mlp_layers: 10, tok_s: 24000, peak_gib: 1.2 },
  ]);
  expect(t).toContain("| smollm2-135m | NVIDIA H100 80GB HBM3 | 20,000 | 1.00 | 10,000 | 2.00 | **2.00×** | 0.50× | — | c1 |");
  expect(t).toContain("| smollm2-135m, MLP kept in 20 layers | NVIDIA H100 80GB HBM3 | 25,000 | 1.50 | 10,000 | 2.00 | **2.50×** | 0.75× | 26,000 | c1 |");
  expect(t).toContain("| smollm2-135m, attention kept in 29 layers, MLP kept in 10 layers | NVIDIA H100 80GB HBM3 | 24,000 | 1.20 | 10,000 | 2.00 | **2.40×** | 0.60× | — | c1 |");
});

test("a row that ran with forms the device script turned on for the rest of its call says so", () => {
  const t = trainTable([
    { call: "c3", gpu, op: "train", model: "llama3.2-1b", target_fraction: 1, tok_s: 30000, peak_gib: 5, forms_on: "gemm_guard_free,gemm_const_strides" },
    { call: "c3", gpu, peer: "hf-peft", model: "llama3.2-1b", tok_s: 20000, peak_gib: 10 },
  ]);
  expect(t).toContain("| llama3.2-1b, with gemm_guard_free, gemm_const_strides | NVIDIA H100 80GB HBM3 | 30,000 | 5.00 | 20,000 | 10.00 | **1.50×** | 0.50× | — | c3 |");
});

test("full fine-tuning rows pair ours --full with peft_bench --full 1 of the same call", () => {
  const t = trainFullTable(lines);
  expect(t).toContain("| smollm2-135m | NVIDIA H100 80GB HBM3 | 9,000 | 3.00 | 1 | 6,000 | 4.00 | **1.50×** | 0.75× | c2 |");
  // A full line without an HF line in its call makes no row.
  expect(trainFullTable(lines.slice(0, 3))).toContain("no full fine-tuning run");
});

test("diagnostic GEMM lines stay out of the GEMM table", () => {
  const g = [
    { call: "c3", gpu, op: "gemm_tc", cfg: "4x4_2x2s", shape: "4096^3", transB: true, tflops: 170, relErr: 1e-6 },
    { call: "c3", gpu, op: "gemm_tc", cfg: "4x4_2x2s", shape: "4096x8192x4096", transB: true, tflops: 60, relErr: 1e-6, diag: true },
  ];
  const t = gemmTable(g);
  expect(t).toContain("| 4096^3 |");
  expect(t).not.toContain("4096x8192x4096");
});

test("decode rows leave out profiled runs and A/B rows with a form switched off", () => {
  const d = [
    { call: "c4", gpu, op: "decode", model: "llama3.1-8b", batch: 1, tok_s: 101.5, ms_per_token: 9.85 },
    { call: "c4", gpu, op: "decode", model: "llama3.1-8b", batch: 1, tok_s: 92.0, ms_per_token: 10.87, ab_off: "gemv_group" },
    { call: "c4", gpu, op: "decode", model: "llama3.1-8b", batch: 1, tokens: 16, tok_s: 80.0, ms_per_token: 12.5, profile: { gpu_ms: 12 } },
  ];
  const t = decodeTable(d);
  expect(t).toContain("| llama3.1-8b | NVIDIA H100 80GB HBM3 | 101.5 | 9.85 |");
  expect(t).not.toContain("92.0");
  expect(t).not.toContain("80.0");
});
