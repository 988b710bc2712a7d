import { describe, expect, test } from "bun:test";
import { attentionSection, bestByConfig, decodeSection, gemmSection, profileSection, trainSection } from "../src/bench/call-summary.ts";

const g = (cfg: string, shape: string, transB: boolean, tflops: number, relErr = 1e-6) => ({ op: "gemm_tc", diag: true, cfg, shape, transB, tflops, relErr });

describe("call summary", () => {
  test("GEMM variants: best repetition per case, wrong results dropped, ranked against the table's best pick", () => {
    const lines = [
      g("4x4_2x2sg8u", "S", true, 180), g("4x2_2x4sk64g8u", "S", true, 170), g("4x2_2x4sk64g8u", "S", false, 220),
      g("4x2_2x4sdg8up4", "S", true, 200), g("4x2_2x4sdg8up4", "S", true, 250, 0.5), g("4x2_2x4sdg8up4", "S", false, 242),
      g("4x2_2x4sdg8up4", "S", false, 230), g("4x4_2x2sg8u-no-loads", "S", true, 270, 0.9),
    ];
    const best = bestByConfig(lines);
    expect(best.get("4x2_2x4sdg8up4")!.get("S x·Wᵀ")).toBe(200); // the 250 had a wrong result
    expect(best.get("4x2_2x4sdg8up4")!.get("S dy·W")).toBe(242);
    const text = gemmSection(lines).join("\n");
    // (200/180 · 242/220)^½ = 1.1055
    expect(text).toMatch(/4x2_2x4sdg8up4\s+1\.106/);
    expect(text.indexOf("4x2_2x4sdg8up4")).toBeLessThan(text.indexOf("4x4_2x2sg8u*"));
    expect(text).toMatch(/4x4_2x2sg8u-no-loads\s+S x·Wᵀ: 270\.0 \(1\.50×\)/);
  });

  test("attention diags: share of the full kernel each phase takes", () => {
    const a = (d: string, ms: number) => ({ op: "attention_fwd", attn_diag: d, dtype: "f32 in, f16 tensor-core products", ms });
    const text = attentionSection([a("none", 0.5), a("none", 0.4), a("no-softmax", 0.3), { op: "attention_fwd", attn_diag: "none", dtype: "f32", ms: 9 }]).join("\n");
    expect(text).toMatch(/none\s+0\.400/);
    expect(text).toMatch(/no-softmax\s+0\.300 \(25%\)/);
  });

  test("profiles against the newest earlier profile of the same model; decode A/B against the plain row", () => {
    const p = (call: string, ms: Record<string, number>) => ({ op: "train", model: "m", call, tok_s: 1, profile: { gpu_ms: 10, by_kind: ms } });
    const text = profileSection([p("c3", { a: 5, b: 1 })], [p("c1", { a: 9 }), p("c2", { a: 6, b: 1 })]).join("\n");
    expect(text).toContain("previous 10.0, call c2");
    expect(text).toMatch(/a\s+5\.00 ms\s+was\s+6\.00\s+\(-1\.00\)/);
    // an A/B profile against the same call's plain profile, not the previous call's
    const ab = { ...p("c3", { a: 4, b: 1 }), ab_on: "aux_staged" };
    const abText = profileSection([p("c3", { a: 5, b: 1 }), ab], [p("c2", { a: 6, b: 1 })]).join("\n");
    expect(abText).toContain("Profile m (on aux_staged): GPU 10.0 ms (plain, this call 10.0)");
    expect(abText).toMatch(/on aux_staged[^]*a\s+4\.00 ms\s+was\s+5\.00\s+\(-1\.00\)/);
    const d = decodeSection([{ op: "decode", model: "m", batch: 1, tok_s: 100 }, { op: "decode", model: "m", batch: 1, tok_s: 104, ab_on: "gemv_fuse" }]).join("\n");
    expect(d).toContain("with gemv_fuse: 104.0 tok/s against 100.0 (1.040×)");
  });

  test("train rows: ours, plain and with kept activations, against HF PEFT's row of the model", () => {
    const text = trainSection([
      { op: "train", model: "m", tok_s: 1000, peak_gib: 2, target_fraction: 1 },
      { op: "train", model: "m", tok_s: 1200, peak_gib: 3, target_fraction: 1, keep_attention_layers: 15, keep_mlp_layers: 12 },
      { peer: "hf-peft", model: "m", tok_s: 1000, peak_gib: 4 },
    ]).join("\n");
    expect(text).toContain("Train m: 1000 tok/s, 2.00 GiB → 1.00× speed, 0.50× memory of HF (1000 tok/s, 4.00 GiB)");
    expect(text).toContain("Train m (kept attention ×15, MLP ×12): 1200 tok/s, 3.00 GiB → 1.20× speed, 0.75× memory");
  });
});
