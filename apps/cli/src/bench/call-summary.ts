/**
 * What one device call decided, as text for the session that made it (report.ts writes the public
 * tables; this reads the diagnostic lines that stay out of them):
 *   bun apps/cli/src/bench/call-summary.ts DIR [--previous docs/bench-data]
 * - GEMM variants (gemm.jsonl, diag lines): TFLOP/s of every configuration per shape and form,
 *   ordered by geometric mean over the cases each measured, against the best of the table's picks;
 *   stage diags (`-no-…`) against their base configuration.
 * - Attention forward stage diags (profile.jsonl, `attn_diag`): ms per phase left out.
 * - Profiled train steps (profile.jsonl): GPU ms per kernel kind against the newest profile of the
 *   same model in --previous (earlier calls), largest change first; an A/B profile (`ab_on`/`ab_off`)
 *   against the same call's plain profile of the model when there is one.
 * - Training rows (train.jsonl): ours (full recompute, selective checkpointing) against HF PEFT.
 * - Decode A/B rows (decode.jsonl, `ab_on`/`ab_off`) against the plain row of the same model.
 * Only lines of one call are compared with each other, except the profile's `previous` column.
 */
import { readLines } from "./report.ts";

type Line = Record<string, unknown>;
const num = (x: unknown) => (typeof x === "number" && Number.isFinite(x) ? x : undefined);
const pad = (s: string, n: number) => (s.length >= n ? s : s + " ".repeat(n - s.length));
const geomean = (xs: number[]) => Math.exp(xs.reduce((a, x) => a + Math.log(x), 0) / xs.length);

/** The table's configurations (the sweep's picks, which a variant must beat). */
export const TABLE_PICKS = ["4x4_2x2sg8u", "4x2_2x4sk64g8u", "4x4_2x2sk64g8"];

/** Best TFLOP/s per (config, case) over the repetitions of correct lines; case = shape + form. */
export function bestByConfig(lines: Line[]): Map<string, Map<string, number>> {
  const best = new Map<string, Map<string, number>>();
  for (const l of lines) {
    const t = num(l.tflops), cfg = l.cfg, shape = l.shape;
    if (l.op !== "gemm_tc" || t === undefined || typeof cfg !== "string" || typeof shape !== "string" || l.error) continue;
    if ((num(l.relErr) ?? 0) >= 1e-3 && !cfg.includes("-no-")) continue; // wrong results only count for stage diags
    const key = `${shape} ${l.transB ? "x·Wᵀ" : "dy·W"}`;
    const m = best.get(cfg) ?? new Map<string, number>();
    m.set(key, Math.max(m.get(key) ?? 0, t));
    best.set(cfg, m);
  }
  return best;
}

export function gemmSection(lines: Line[]): string[] {
  const best = bestByConfig(lines.filter((l) => l.diag));
  if (best.size === 0) return ["GEMM variants: none measured"];
  const cases = [...new Set([...best.values()].flatMap((m) => [...m.keys()]))].sort();
  const picks = (c: string) => Math.max(0, ...TABLE_PICKS.map((p) => best.get(p)?.get(c) ?? 0));
  const out = ["GEMM variants (TFLOP/s, best of the repetitions; ×picks = geometric mean against the best table pick per case):"];
  out.push(`  ${pad("config", 22)} ${pad("×picks", 7)} ${cases.map((c) => pad(c, 14)).join(" ")}`);
  const rows = [...best.entries()].filter(([cfg]) => !cfg.includes("-no-")).map(([cfg, m]) => {
    const rs = cases.filter((c) => m.has(c) && picks(c) > 0).map((c) => m.get(c)! / picks(c));
    return { cfg, m, g: rs.length ? geomean(rs) : 0 };
  }).sort((a, b) => b.g - a.g);
  for (const { cfg, m, g } of rows) {
    out.push(`  ${pad(cfg + (TABLE_PICKS.includes(cfg) ? "*" : ""), 22)} ${pad(g ? g.toFixed(3) : "—", 7)} ${cases.map((c) => pad(m.has(c) ? m.get(c)!.toFixed(1) : "—", 14)).join(" ")}`);
  }
  const diags = [...best.entries()].filter(([cfg]) => cfg.includes("-no-"));
  if (diags.length) out.push("  stage diags (a stage left out; results wrong by design), TFLOP/s and × their base:");
  for (const [cfg, m] of diags) {
    const base = best.get(cfg.slice(0, cfg.indexOf("-no-")));
    out.push(`  ${pad(cfg, 30)} ${[...m.entries()].map(([c, t]) => `${c}: ${t.toFixed(1)}${base?.get(c) ? ` (${(t / base.get(c)!).toFixed(2)}×)` : ""}`).join("; ")}`);
  }
  return out;
}

export function attentionSection(lines: Line[]): string[] {
  const rows = lines.filter((l) => l.op === "attention_fwd" && typeof l.attn_diag === "string" && String(l.dtype ?? "").includes("tensor-core"));
  if (rows.length === 0) return ["Attention forward stage diags: none measured"];
  const ms = new Map<string, number>();
  for (const l of rows) {
    const m = num(l.ms);
    if (m !== undefined) ms.set(l.attn_diag as string, Math.min(ms.get(l.attn_diag as string) ?? Infinity, m));
  }
  const base = ms.get("none");
  const out = ["Attention forward (tensor cores) with one phase left out, ms (share of the full kernel it removes):"];
  for (const [d, m] of ms) out.push(`  ${pad(d, 12)} ${m.toFixed(3)}${base && d !== "none" ? ` (${(100 * (1 - m / base)).toFixed(0)}%)` : ""}`);
  return out;
}

type Profile = { gpu_ms?: number; by_kind?: Record<string, number> };

export function profileSection(lines: Line[], previous: Line[]): string[] {
  const out: string[] = [];
  for (const l of lines.filter((x) => x.op === "train" && x.profile)) {
    const p = l.profile as Profile, model = String(l.model), tag = [l.ab_on && `on ${l.ab_on}`, l.ab_off && `off ${l.ab_off}`, l.full && "full"].filter(Boolean).join(", ");
    const plain = (x: Line) => x.op === "train" && x.model === model && x.profile && !x.ab_on && !x.ab_off && !!x.full === !!l.full;
    const sameCall = tag && lines.find((x) => plain(x) && x !== l);
    const prev = sameCall || previous.filter(plain).sort((a, b) => String(b.call).localeCompare(String(a.call)))[0];
    const q = prev?.profile as Profile | undefined;
    out.push(`Profile ${model}${tag ? ` (${tag})` : ""}: GPU ${num(p.gpu_ms)?.toFixed(1)} ms${q ? ` (${sameCall ? "plain, this call" : "previous"} ${num(q.gpu_ms)?.toFixed(1)}${sameCall ? "" : `, call ${prev!.call}`})` : ""}; tok/s ${num(l.tok_s)?.toFixed(0)}`);
    const kinds = new Set([...Object.keys(p.by_kind ?? {}), ...Object.keys(q?.by_kind ?? {})]);
    const deltas = [...kinds].map((k) => ({ k, now: p.by_kind?.[k] ?? 0, was: q?.by_kind?.[k] ?? 0 }))
      .sort((a, b) => Math.abs(b.now - b.was) - Math.abs(a.now - a.was) || b.now - a.now).slice(0, 14);
    for (const { k, now, was } of deltas) out.push(`  ${pad(k, 30)} ${now.toFixed(2).padStart(8)} ms${q ? `  was ${was.toFixed(2).padStart(8)}  (${now - was >= 0 ? "+" : ""}${(now - was).toFixed(2)})` : ""}`);
  }
  return out.length ? out : ["Profiles: none measured"];
}

/** Every training row: tok/s and peak GiB, and the ratios to HF PEFT's row of the model. */
export function trainSection(lines: Line[]): string[] {
  const out: string[] = [];
  for (const l of lines.filter((x) => x.op === "train" && !x.profile && num(x.tok_s) !== undefined)) {
    const hf = lines.find((x) => x.peer === (l.full ? "hf-full" : "hf-peft") && x.model === l.model);
    const kept = [l.keep_attention_layers && `attention ×${l.keep_attention_layers}`, l.keep_mlp_layers && `MLP ×${l.keep_mlp_layers}`].filter(Boolean).join(", ");
    const what = [l.full && "full", num(l.target_fraction) !== undefined && l.target_fraction !== 1 && `labels ${l.target_fraction}`, kept && `kept ${kept}`, l.from_dir && "from dir"].filter(Boolean).join("; ");
    const ratios = hf ? ` → ${(num(l.tok_s)! / num(hf.tok_s)!).toFixed(2)}× speed, ${(num(l.peak_gib)! / num(hf.peak_gib)!).toFixed(2)}× memory of HF (${num(hf.tok_s)!.toFixed(0)} tok/s, ${num(hf.peak_gib)!.toFixed(2)} GiB)` : "";
    out.push(`Train ${l.model}${what ? ` (${what})` : ""}: ${num(l.tok_s)!.toFixed(0)} tok/s, ${num(l.peak_gib)?.toFixed(2)} GiB${ratios}`);
  }
  return out.length ? out : ["Train rows: none measured"];
}

export function decodeSection(lines: Line[]): string[] {
  const rows = lines.filter((l) => l.op === "decode" && num(l.tok_s) !== undefined);
  const out: string[] = [];
  for (const l of rows.filter((x) => x.ab_on || x.ab_off)) {
    const plain = rows.find((x) => x.model === l.model && x.batch === l.batch && !x.ab_on && !x.ab_off);
    out.push(`Decode ${l.model} batch ${l.batch} ${l.ab_on ? `with ${l.ab_on}` : `without ${l.ab_off}`}: ${num(l.tok_s)!.toFixed(1)} tok/s${plain ? ` against ${num(plain.tok_s)!.toFixed(1)} (${(num(l.tok_s)! / num(plain.tok_s)!).toFixed(3)}×)` : ""}`);
  }
  return out.length ? out : ["Decode A/B: none measured"];
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const pi = args.indexOf("--previous");
  const previous = pi >= 0 ? readLines([args[pi + 1]!]) : [];
  const dirs = pi >= 0 ? args.filter((_, i) => i !== pi && i !== pi + 1) : args;
  if (dirs.length === 0) {
    console.error("usage: bun apps/cli/src/bench/call-summary.ts DIR... [--previous docs/bench-data]");
    process.exit(2);
  }
  const lines = readLines(dirs);
  console.log([...trainSection(lines), "", ...gemmSection(lines), "", ...attentionSection(lines), "", ...profileSection(lines, previous), "", ...decodeSection(lines)].join("\n"));
}
