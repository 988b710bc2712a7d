/**
 * loss_curve.svg: train loss per step (thin, "train loss (per step)"), a centered moving mean of it
 * (thick, labelled with its window: a centered mean does not lag as an EMA does, so it runs through
 * the raw curve rather than above it), and eval loss (dots on top, joined by a dashed line). The y
 * axis is logarithmic when the values span more than 10× (early loss dwarfs the rest on a linear
 * axis), linear otherwise, with "nice" ticks. Plain SVG 1.1 text, no scripts or external fonts, so
 * it renders the same in a browser, on GitHub and in an image viewer. With the forgetting monitor's
 * records (general_ppl), a second panel below: general-text perplexity of the model being tuned,
 * and the base model's as a dotted reference line.
 */
import type { MetricsRecord } from "./metrics.ts";

export interface LossCurveOptions {
  width?: number;
  height?: number;
  title?: string;
  /** Steps in the centered moving mean (default: about 1/25 of the steps, odd, ≥ 5; 0 or 1 disables). */
  smoothingWindow?: number;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** Round tick positions (1, 2, 5 × 10^k) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function formatTick(v: number): string {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** Round ticks for a log axis: 1, 2, 5 × 10^k inside [lo, hi] (lo > 0). */
export function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= lo && v <= hi) ticks.push(v);
    }
  }
  return ticks;
}

/** Mean of values[i − h .. i + h] clipped to the ends (h = ⌊window/2⌋): no lag, unlike an EMA. */
export function centeredMean(values: readonly number[], window: number): number[] {
  const h = Math.floor(window / 2);
  const prefix = [0];
  for (const v of values) prefix.push(prefix.at(-1)! + v);
  return values.map((_, i) => {
    const a = Math.max(0, i - h), b = Math.min(values.length, i + h + 1);
    return (prefix[b]! - prefix[a]!) / (b - a);
  });
}

interface Panel {
  top: number;
  height: number;
  y: (v: number) => number;
  logScale: boolean;
}

/** A y axis over `values` for a panel at `top` of `height` px: log when they span > 10×, else linear from 0 (or below). */
function yAxis(values: readonly number[], top: number, height: number): Panel & { ticks: number[] } {
  let yMin = Math.min(...values);
  let yMax = Math.max(...values);
  if (yMin > 0 && yMax / yMin > 10) {
    const [lo, hi] = [Math.log10(yMin) - 0.02, Math.log10(yMax) + 0.02];
    return { top, height, logScale: true, y: (v) => top + (1 - (Math.log10(v) - lo) / (hi - lo)) * height, ticks: logTicks(10 ** lo, 10 ** hi) };
  }
  const pad = (yMax - yMin) * 0.05 || Math.abs(yMax) * 0.05 || 1;
  yMin = Math.max(yMin >= 0 ? 0 : -Infinity, yMin - pad);
  yMax += pad;
  return { top, height, logScale: false, y: (v) => top + (1 - (v - yMin) / (yMax - yMin)) * height, ticks: niceTicks(yMin, yMax) };
}

interface LegendItem {
  label: string;
  stroke: string;
  /** Fill of a dot drawn on the sample line. */
  dot?: string;
}

const fmt = (n: number) => n.toFixed(1);
const polyline = (points: [number, number][], attrs: string) =>
  `<polyline fill="none" ${attrs} points="${points.map(([px, py]) => `${fmt(px)},${fmt(py)}`).join(" ")}"/>`;

/**
 * loss_curve.svg: the loss panel, and below it, when the records carry the forgetting monitor's
 * general-text perplexity, a second panel with it and the base model's as a flat reference line.
 */
export function renderLossCurveSvg(records: readonly MetricsRecord[], options: LossCurveOptions = {}): string {
  const W = options.width ?? 720;
  const lossH = options.height ?? 420;
  const margin = { left: 64, right: 20, top: 40, bottom: 48 };
  const plotW = W - margin.left - margin.right;
  const finite = (v: number | undefined): v is number => v !== undefined && Number.isFinite(v);
  const train = records.filter((r) => finite(r.loss) && finite(r.step));
  const evals = records.filter((r) => finite(r.eval_loss) && finite(r.step));
  const general = records.filter((r) => finite(r.general_ppl) && finite(r.general_ppl_base) && finite(r.step));
  const generalH = general.length ? 220 : 0;
  const H = lossH + generalH;
  const title = escapeXml(options.title ?? "loss");
  const header = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`;
  const parts: string[] = [header, `<rect width="${W}" height="${H}" fill="#ffffff"/>`, `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`];
  if (train.length === 0 && evals.length === 0 && general.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#666">no data</text>`, "</svg>");
    return parts.join("\n") + "\n";
  }

  const steps = [...train, ...evals, ...general].map((r) => r.step);
  let xMin = Math.min(...steps);
  let xMax = Math.max(...steps);
  if (xMax === xMin) [xMin, xMax] = [xMin - 1, xMax + 1];
  const x = (step: number) => margin.left + ((step - xMin) / (xMax - xMin)) * plotW;

  /** Grid, ticks, frame and axis labels of one panel. */
  const frame = (p: Panel & { ticks: number[] }, yLabel: string) => {
    const bottom = p.top + p.height;
    for (const t of p.ticks) {
      parts.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${fmt(p.y(t))}" y2="${fmt(p.y(t))}" stroke="#e5e5e5"/>`);
      parts.push(`<text x="${margin.left - 6}" y="${fmt(p.y(t) + 4)}" text-anchor="end" fill="#444">${formatTick(t)}</text>`);
    }
    for (const t of niceTicks(xMin, xMax).filter((t) => Number.isInteger(t))) {
      parts.push(`<line x1="${fmt(x(t))}" x2="${fmt(x(t))}" y1="${bottom}" y2="${bottom + 4}" stroke="#444"/>`);
      parts.push(`<text x="${fmt(x(t))}" y="${bottom + 18}" text-anchor="middle" fill="#444">${formatTick(t)}</text>`);
    }
    parts.push(`<rect x="${margin.left}" y="${p.top}" width="${plotW}" height="${p.height}" fill="none" stroke="#444"/>`);
    parts.push(`<text x="${margin.left + plotW / 2}" y="${bottom + 38}" text-anchor="middle" fill="#444">step</text>`);
    const mid = p.top + p.height / 2;
    parts.push(`<text x="16" y="${mid}" text-anchor="middle" fill="#444" transform="rotate(-90 16 ${mid})">${escapeXml(p.logScale ? `${yLabel} (log scale)` : yLabel)}</text>`);
  };
  const legend = (items: readonly LegendItem[], top: number) => {
    const lw = 270;
    const lx = margin.left + plotW - lw - 10;
    const ly = top + 10;
    parts.push(`<rect x="${lx}" y="${ly}" width="${lw}" height="${8 + 18 * items.length}" fill="#ffffff" fill-opacity="0.85" stroke="#ccc"/>`);
    items.forEach((item, i) => {
      const cy = ly + 13 + 18 * i;
      parts.push(`<line x1="${lx + 8}" x2="${lx + 30}" y1="${cy}" y2="${cy}" ${item.stroke}/>`);
      if (item.dot) parts.push(`<circle cx="${lx + 19}" cy="${cy}" r="4" fill="${item.dot}" stroke="#ffffff" stroke-width="1"/>`);
      parts.push(`<text x="${lx + 36}" y="${cy + 4}">${escapeXml(item.label)}</text>`);
    });
  };
  const dots = (points: [number, number][], fill: string) => {
    for (const [px, py] of points) parts.push(`<circle cx="${fmt(px)}" cy="${fmt(py)}" r="4" fill="${fill}" stroke="#ffffff" stroke-width="1"/>`);
  };

  // The loss panel: train loss, its centered mean, eval loss.
  const lossValues = [...train.map((r) => r.loss), ...evals.map((r) => r.eval_loss!)];
  if (lossValues.length > 0) {
    const p = yAxis(lossValues, margin.top, lossH - margin.top - margin.bottom);
    frame(p, "loss");
    const items: LegendItem[] = [];
    if (train.length > 0) {
      const raw = `stroke="#1f77b4" stroke-opacity="0.45" stroke-width="1"`;
      parts.push(polyline(train.map((r) => [x(r.step), p.y(r.loss)]), raw));
      items.push({ label: "train loss (per step)", stroke: raw });
      const window = options.smoothingWindow ?? Math.max(5, 2 * Math.floor(train.length / 50) + 1);
      if (window > 1 && train.length > window) {
        const mean = centeredMean(train.map((r) => r.loss), window);
        const smooth = `stroke="#1f77b4" stroke-width="2.5"`;
        parts.push(polyline(train.map((r, i) => [x(r.step), p.y(mean[i]!)]), smooth));
        items.push({ label: `train loss, centered mean of ${window} steps`, stroke: smooth });
      }
    }
    if (evals.length > 0) {
      const dashed = `stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,4"`;
      const points = evals.map((r): [number, number] => [x(r.step), p.y(r.eval_loss!)]);
      parts.push(polyline(points, dashed));
      dots(points, "#d62728");
      items.push({ label: "eval loss", stroke: dashed, dot: "#d62728" });
    }
    legend(items, margin.top);
  }

  // The forgetting monitor's panel: general-text perplexity, tuned vs base.
  if (general.length > 0) {
    const top = lossH + 24;
    const base = general.at(-1)!.general_ppl_base!;
    const p = yAxis([...general.map((r) => r.general_ppl!), base], top, generalH - 24 - margin.bottom);
    parts.push(`<text x="${W / 2}" y="${top - 8}" text-anchor="middle" font-size="13">forgetting monitor: perplexity on general text (lower is better)</text>`);
    frame(p, "general-text ppl");
    const baseLine = `stroke="#7f7f7f" stroke-width="1.5" stroke-dasharray="2,3"`;
    parts.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${fmt(p.y(base))}" y2="${fmt(p.y(base))}" ${baseLine}/>`);
    const tuned = `stroke="#2ca02c" stroke-width="2"`;
    const points = general.map((r): [number, number] => [x(r.step), p.y(r.general_ppl!)]);
    parts.push(polyline(points, tuned));
    dots(points, "#2ca02c");
    legend([{ label: "model being tuned", stroke: tuned, dot: "#2ca02c" }, { label: "base model (before tuning)", stroke: baseLine }], top);
  }
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
