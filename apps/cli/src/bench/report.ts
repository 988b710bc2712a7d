/**
 * Rewrites the generated tables of docs/benchmarks.md from the JSON lines that
 * scripts/gpu-measure.sh collected on the GPU machine (no hand copying):
 *   bun apps/cli/src/bench/report.ts [--doc docs/benchmarks.md] DIR_OR_FILE...
 * Each table lies between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`; the text
 * around them is left as it is. A ratio is only formed from two lines of the same device call.
 * The raw lines are appended to docs/bench-data/ so that the tables can be rebuilt later.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";

type Line = Record<string, unknown> & { call?: string; gpu?: string };

export function readLines(inputs: string[]): Line[] {
  const files = inputs.flatMap((p) =>
    statSync(p).isDirectory() ? readdirSync(p).filter((f) => f.endsWith(".jsonl")).map((f) => path.join(p, f)) : [p],
  );
  const lines: Line[] = [];
  for (const f of files) {
    for (const [i, text] of readFileSync(f, "utf8").split("\n").entries()) {
      if (!text.trim()) continue;
      try {
        lines.push(JSON.parse(text));
      } catch {
        throw new Error(`${f}:${i + 1}: not a JSON line`);
      }
    }
  }
  return lines;
}

const fmt = (x: unknown, digits = 0) =>
  typeof x === "number" && Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "—";
const ratio = (a: unknown, b: unknown) => (typeof a === "number" && typeof b === "number" && b > 0 ? `${(a / b).toFixed(2)}×` : "—");
const MODEL_ORDER = ["smollm2-135m", "qwen2.5-0.5b", "llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "qwen2.5-7b"];
const byModel = (a: string, b: string) => (MODEL_ORDER.indexOf(a) + 99 * +!MODEL_ORDER.includes(a)) - (MODEL_ORDER.indexOf(b) + 99 * +!MODEL_ORDER.includes(b)) || a.localeCompare(b);

/** The newest call holding lines that satisfy every predicate, and those lines. */
function newestCall(lines: Line[], ...want: ((l: Line) => boolean)[]): { call: string; found: Line[] } | null {
  const calls = [...new Set(lines.map((l) => l.call).filter((c): c is string => !!c))].sort().reverse();
  for (const call of calls) {
    const inCall = lines.filter((l) => l.call === call);
    const found = want.map((w) => inCall.findLast(w));
    if (found.every(Boolean)) return { call, found: found as Line[] };
  }
  return null;
}

export function trainTable(lines: Line[]): string {
  const models = [...new Set(lines.filter((l) => l.op === "train" || l.peer === "hf-peft").map((l) => String(l.model)))].sort(byModel);
  const rows = ["| model | GPU | tuneloom tok/s | peak GiB | HF PEFT tok/s | HF peak GiB | speed ours/HF | memory ours/HF | answer-only labels (30%) tok/s | call |", "|---|---|---|---|---|---|---|---|---|---|"];
  // One row per model with full recompute, and one per selective checkpointing setting (layers that
  // kept their attention output / MLP: `--keep-attention-layers`, `--keep-mlp-layers`), each against
  // HF's line of the same call.
  const count = (x: unknown) => (typeof x === "number" ? x : 0);
  const kept = (l: Line) => {
    const a = count(l.keep_attention_layers), mlp = count(l.keep_mlp_layers);
    return [a ? `attention kept in ${a} layers` : "", mlp ? `MLP kept in ${mlp} layers` : ""].filter(Boolean).join(", ");
  };
  for (const m of models) {
    const settings = [...new Set(lines.filter((l) => l.op === "train" && l.model === m).map(kept))].sort();
    for (const k of settings.length ? settings : [""]) {
      const r = newestCall(
        lines,
        (l) => l.op === "train" && l.model === m && kept(l) === k && l.target_fraction === 1 && !l.from_dir && !l.full && !l.profile && !l.ab_off,
        (l) => l.peer === "hf-peft" && l.model === m,
      );
      if (!r) continue;
      const [ours, hf] = r.found as [Line, Line];
      const answerOnly = lines.findLast((l) => l.call === r.call && l.op === "train" && l.model === m && kept(l) === k && l.target_fraction === 0.3 && !l.full && !l.profile);
      // Off-by-default forms a step of the call turned on (the device script's forms_on) are named.
      const label = [m, k, ours.forms_on ? `with ${String(ours.forms_on).replaceAll(",", ", ")}` : ""].filter(Boolean).join(", ");
      rows.push(`| ${label} | ${ours.gpu} | ${fmt(ours.tok_s)} | ${fmt(ours.peak_gib, 2)} | ${fmt(hf.tok_s)} | ${fmt(hf.peak_gib, 2)} | **${ratio(ours.tok_s, hf.tok_s)}** | ${ratio(ours.peak_gib, hf.peak_gib)} | ${fmt(answerOnly?.tok_s)} | ${r.call} |`);
    }
  }
  return rows.join("\n");
}

/** Full fine-tuning (`bench --train --full`) against `peft_bench.py --full 1` of the same call. */
export function trainFullTable(lines: Line[]): string {
  const models = [...new Set(lines.filter((l) => (l.op === "train" && l.full) || l.peer === "hf-full").map((l) => String(l.model)))].sort(byModel);
  const rows = ["| model | GPU | tuneloom tok/s | peak GiB | flat buffers | HF tok/s | HF peak GiB | speed ours/HF | memory ours/HF | call |", "|---|---|---|---|---|---|---|---|---|---|"];
  for (const m of models) {
    const r = newestCall(lines, (l) => l.op === "train" && l.full === true && l.model === m && !l.profile, (l) => l.peer === "hf-full" && l.model === m);
    if (!r) continue;
    const [ours, hf] = r.found as [Line, Line];
    rows.push(`| ${m} | ${ours.gpu} | ${fmt(ours.tok_s)} | ${fmt(ours.peak_gib, 2)} | ${fmt(ours.buffers)} | ${fmt(hf.tok_s)} | ${fmt(hf.peak_gib, 2)} | **${ratio(ours.tok_s, hf.tok_s)}** | ${ratio(ours.peak_gib, hf.peak_gib)} | ${r.call} |`);
  }
  return rows.length > 2 ? rows.join("\n") : "_no full fine-tuning run collected yet_";
}

export function loadTable(lines: Line[]): string {
  const models = [...new Set(lines.filter((l) => l.peer === "hf-from-pretrained").map((l) => String(l.model)))].sort(byModel);
  const rows = ["| model | GPU | HF from_pretrained s | tuneloom load s | load ours/HF | tuneloom tok/s on that directory | call |", "|---|---|---|---|---|---|---|"];
  for (const m of models) {
    const r = newestCall(lines, (l) => l.peer === "hf-from-pretrained" && l.model === m, (l) => l.op === "train" && l.model === m && l.from_dir === true);
    if (!r) continue;
    const [hf, ours] = r.found as [Line, Line];
    rows.push(`| ${m} | ${ours.gpu} | ${fmt(hf.load_s, 1)} | ${fmt(ours.load_s, 1)} | ${ratio(ours.load_s, hf.load_s)} | ${fmt(ours.tok_s)} | ${r.call} |`);
  }
  return rows.join("\n");
}

export function decodeTable(lines: Line[]): string {
  const models = [...new Set(lines.filter((l) => l.op === "decode").map((l) => String(l.model)))].sort(byModel);
  const rows = ["| model | GPU | batch 1 tok/s | ms/token | batch 16 tok/s (total) | HF generate tok/s (batch 1) | batch 1 ours/HF | call |", "|---|---|---|---|---|---|---|---|"];
  for (const m of models) {
    // Not the profiled runs (timestamp queries) nor the A/B rows with a form switched off or on.
    const r = newestCall(lines, (l) => l.op === "decode" && l.model === m && l.batch === 1 && !l.profile && !l.ab_off && !l.ab_on);
    if (!r) continue;
    const [b1] = r.found as [Line];
    const b16 = lines.findLast((l) => l.call === r.call && l.op === "decode" && l.model === m && l.batch === 16 && !l.profile && !l.ab_off && !l.ab_on);
    const hf = lines.findLast((l) => l.call === r.call && l.peer === "hf-generate" && l.model === m);
    rows.push(`| ${m} | ${b1.gpu} | ${fmt(b1.tok_s, 1)} | ${fmt(b1.ms_per_token, 2)} | ${fmt(b16?.tok_s, 1)} | ${fmt(hf?.decode_tok_s, 1)} | ${ratio(b1.tok_s, hf?.decode_tok_s)} | ${r.call} |`);
  }
  return rows.join("\n");
}

export function gemmTable(lines: Line[]): string {
  // Diagnostic sweeps (synthetic shapes, "diag": true) stay in the data, not in the table.
  const g = lines.filter((l) => l.op === "gemm_tc" && typeof l.tflops === "number" && !l.diag);
  const call = [...new Set(g.map((l) => l.call))].filter(Boolean).sort().at(-1);
  if (!call) return "_no sweep collected yet_";
  const inCall = g.filter((l) => l.call === call);
  const shapes = [...new Set(inCall.map((l) => `${l.shape}|${l.transB}`))];
  const rows = [`| shape (M×N×K) | form | best config | TFLOP/s | relErr |`, "|---|---|---|---|---|"];
  for (const s of shapes) {
    const best = inCall.filter((l) => `${l.shape}|${l.transB}` === s).sort((a, b) => (b.tflops as number) - (a.tflops as number))[0]!;
    rows.push(`| ${best.shape} | ${best.transB ? "x·Wᵀ (forward)" : "dy·W (input gradient)"} | ${best.cfg} | ${fmt(best.tflops, 1)} | ${typeof best.relErr === "number" ? best.relErr.toExponential(1) : "—"} |`);
  }
  return `${rows.join("\n")}\n\nSweep of call ${call} on ${inCall[0]?.gpu}.`;
}

export function serveTable(lines: Line[]): string {
  const r = newestCall(lines, (l) => l.op === "serve");
  if (!r) return "_no serving run collected yet_";
  const rows = ["| model | GPU | streams | TTFT p50 / max ms | decode tok/s per stream | total tok/s | call |", "|---|---|---|---|---|---|---|"];
  for (const l of lines.filter((x) => x.call === r.call && x.op === "serve"))
    rows.push(`| ${l.model} | ${l.gpu} | ${l.streams} | ${fmt(l.ttft_ms_p50, 1)} / ${fmt(l.ttft_ms_max, 1)} | ${fmt(l.decode_tok_s_per_stream, 1)} | ${fmt(l.total_tok_s, 1)} | ${r.call} |`);
  return rows.join("\n");
}

/**
 * `bench --decode-loras`: per model, the newest call's lines: one batch over k distinct adapters
 * in adapter slots (one forward per step) vs one adapter, the no-LoRA batch, and the per-adapter
 * forwards the server ran before slots.
 */
export function multiLoraTable(lines: Line[]): string {
  const ml = lines.filter((l) => l.op === "multi_lora_decode");
  const models = [...new Set(ml.map((l) => String(l.model)))].sort(byModel);
  const rows = [
    "| model | GPU | batch | rank | adapters | tok/s, one forward (slots) | vs one adapter | tok/s, one forward per adapter | no LoRA tok/s | prefill tok/s (prompt) | prefill vs no LoRA | slots | call |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const m of models) {
    const r = newestCall(ml, (l) => l.model === m && l.path === "slots" && l.adapters === 1);
    if (!r) continue;
    const inCall = ml.filter((l) => l.call === r.call && l.model === m);
    const base = inCall.findLast((l) => l.path === "base");
    const ks = [...new Set(inCall.filter((l) => l.path === "slots").map((l) => Number(l.adapters)))].sort((a, b) => a - b);
    for (const k of ks) {
      const slots = inCall.findLast((l) => l.path === "slots" && l.adapters === k)!;
      const per = inCall.findLast((l) => l.path === "per-adapter" && l.adapters === k);
      rows.push(`| ${m} | ${slots.gpu} | ${slots.batch} | ${slots.rank} | ${k} | ${fmt(slots.tok_s, 1)} | **${ratio(slots.tok_s, r.found[0]!.tok_s)}** | ${k === 1 ? "(same)" : fmt(per?.tok_s, 1)} | ${fmt(base?.tok_s, 1)} | ${slots.prefill_tok_s === undefined ? "—" : `${fmt(slots.prefill_tok_s, 0)} (${slots.prompt_tokens})`} | ${ratio(slots.prefill_tok_s, base?.prefill_tok_s)} | ${slots.lora_dtype ?? "f32"} | ${r.call} |`);
    }
  }
  return rows.length > 2 ? rows.join("\n") : "_no multi-adapter decode run collected yet_";
}

export const TABLES: Record<string, (lines: Line[]) => string> = {
  train: trainTable, "train-full": trainFullTable, load: loadTable, decode: decodeTable, gemm: gemmTable, serve: serveTable, "multi-lora": multiLoraTable,
};

/** Replaces each generated section of `doc` with its table; sections without data stay as they are. */
export function rewriteDoc(doc: string, lines: Line[]): string {
  return doc.replace(/<!-- generated:([\w-]+) -->\n[\s\S]*?<!-- \/generated:\1 -->/g, (whole, name: string) => {
    const make = TABLES[name];
    if (!make) throw new Error(`docs: unknown generated section '${name}' (known: ${Object.keys(TABLES).join(", ")})`);
    return `<!-- generated:${name} -->\n${make(lines)}\n<!-- /generated:${name} -->`;
  });
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const di = args.indexOf("--doc");
  const docPath = di >= 0 ? args.splice(di, 2)[1]! : path.join(import.meta.dir, "../../../../docs/benchmarks.md");
  const dataDir = path.join(path.dirname(docPath), "bench-data");
  const fresh = args.length ? readLines(args) : [];
  // Keep every collected line: new ones are appended to docs/bench-data/<file>.jsonl.
  if (fresh.length) {
    mkdirSync(dataDir, { recursive: true });
    const byOp = new Map<string, Line[]>();
    for (const l of fresh) {
      const kind = l.op === "gemm_tc" ? "gemm" : l.op === "multi_lora_decode" ? "multi-lora" : l.op === "decode" || l.peer === "hf-generate" ? "decode" : l.op === "serve" ? "serve" : l.peer === "hf-from-pretrained" ? "load" : l.op === "train" || l.peer === "hf-peft" || l.peer === "hf-full" ? "train" : "other";
      byOp.set(kind, [...(byOp.get(kind) ?? []), l]);
    }
    for (const [kind, ls] of byOp) {
      const f = path.join(dataDir, `${kind}.jsonl`);
      const old = existsSync(f) ? readFileSync(f, "utf8") : "";
      const have = new Set(old.split("\n").filter(Boolean));
      const add = ls.map((l) => JSON.stringify(l)).filter((t) => !have.has(t));
      writeFileSync(f, old + add.map((t) => `${t}\n`).join(""));
    }
  }
  const all = existsSync(dataDir) ? readLines([dataDir]) : fresh;
  writeFileSync(docPath, rewriteDoc(readFileSync(docPath, "utf8"), all));
  console.error(`report: ${all.length} lines → ${docPath}`);
}
