/**
 * loss_curve.svg: train loss per step (thin, "train loss (per step)"), a centered moving mean of it
 * (thick, labelled with its window: a centered mean does not lag as an EMA does, so it runs through
 * the raw curve rather than above it), and eval loss (dots on top, joined by a dashed line). The y
 * axis is logarithmic when the values span more than 10× (early loss dwarfs the rest on a linear
 * axis), linear otherwise, with "nice" ticks. Plain SVG 1.1 text, no scripts or external fonts, so
 * it renders the same in a browser, on GitHub and in an image viewer.
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

export function renderLossCurveSvg(records: readonly MetricsRecord[], options: LossCurveOptions = {}): string {
  const W = options.width ?? 720;
  const H = options.height ?? 420;
  const margin = { left: 64, right: 20, top: 40, bottom: 48 };
  const plotW = W - margin.left - margin.right;
  const plotH = H - margin.top - margin.bottom;
  const train = records.filter((r) => Number.isFinite(r.loss) && Number.isFinite(r.step));
  const evals = records.filter((r) => r.eval_loss !== undefined && Number.isFinite(r.eval_loss) && Number.isFinite(r.step));
  const title = escapeXml(options.title ?? "loss");
  const header = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`;
  const parts: string[] = [header, `<rect width="${W}" height="${H}" fill="#ffffff"/>`, `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`];
  if (train.length === 0 && evals.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#666">no data</text>`, "</svg>");
    return parts.join("\n") + "\n";
  }

  const steps = [...train, ...evals].map((r) => r.step);
  const values = [...train.map((r) => r.loss), ...evals.map((r) => r.eval_loss!)];
  let xMin = Math.min(...steps);
  let xMax = Math.max(...steps);
  if (xMax === xMin) [xMin, xMax] = [xMin - 1, xMax + 1];
  let yMin = Math.min(...values);
  let yMax = Math.max(...values);
  const logScale = yMin > 0 && yMax / yMin > 10;
  let y: (v: number) => number;
  let yTicks: number[];
  if (logScale) {
    const [lo, hi] = [Math.log10(yMin) - 0.02, Math.log10(yMax) + 0.02];
    y = (v) => margin.top + (1 - (Math.log10(v) - lo) / (hi - lo)) * plotH;
    yTicks = logTicks(10 ** lo, 10 ** hi);
  } else {
    const pad = (yMax - yMin) * 0.05 || Math.abs(yMax) * 0.05 || 1;
    yMin = Math.max(yMin >= 0 ? 0 : -Infinity, yMin - pad);
    yMax += pad;
    y = (v) => margin.top + (1 - (v - yMin) / (yMax - yMin)) * plotH;
    yTicks = niceTicks(yMin, yMax);
  }
  const x = (step: number) => margin.left + ((step - xMin) / (xMax - xMin)) * plotW;
  const fmt = (n: number) => n.toFixed(1);

  // Grid, ticks and axes.
  for (const t of yTicks) {
    parts.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${fmt(y(t))}" y2="${fmt(y(t))}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${margin.left - 6}" y="${fmt(y(t) + 4)}" text-anchor="end" fill="#444">${formatTick(t)}</text>`);
  }
  for (const t of niceTicks(xMin, xMax).filter((t) => Number.isInteger(t))) {
    parts.push(`<line x1="${fmt(x(t))}" x2="${fmt(x(t))}" y1="${margin.top + plotH}" y2="${margin.top + plotH + 4}" stroke="#444"/>`);
    parts.push(`<text x="${fmt(x(t))}" y="${margin.top + plotH + 18}" text-anchor="middle" fill="#444">${formatTick(t)}</text>`);
  }
  parts.push(`<rect x="${margin.left}" y="${margin.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#444"/>`);
  parts.push(`<text x="${margin.left + plotW / 2}" y="${H - 10}" text-anchor="middle" fill="#444">step</text>`);
  parts.push(`<text x="16" y="${margin.top + plotH / 2}" text-anchor="middle" fill="#444" transform="rotate(-90 16 ${margin.top + plotH / 2})">${logScale ? "loss (log scale)" : "loss"}</text>`);

  const polyline = (points: [number, number][], attrs: string) =>
    `<polyline fill="none" ${attrs} points="${points.map(([px, py]) => `${fmt(px)},${fmt(py)}`).join(" ")}"/>`;
  const legend: { label: string; stroke: string; dot?: boolean }[] = [];
  if (train.length > 0) {
    const raw = `stroke="#1f77b4" stroke-opacity="0.45" stroke-width="1"`;
    parts.push(polyline(train.map((r) => [x(r.step), y(r.loss)]), raw));
    legend.push({ label: "train loss (per step)", stroke: raw });
    const window = options.smoothingWindow ?? Math.max(5, 2 * Math.floor(train.length / 50) + 1);
    if (window > 1 && train.length > window) {
      const mean = centeredMean(train.map((r) => r.loss), window);
      const smooth = `stroke="#1f77b4" stroke-width="2.5"`;
      parts.push(polyline(train.map((r, i) => [x(r.step), y(mean[i]!)]), smooth));
      legend.push({ label: `train loss, centered mean of ${window} steps`, stroke: smooth });
    }
  }
  if (evals.length > 0) {
    const dashed = `stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,4"`;
    parts.push(polyline(evals.map((r) => [x(r.step), y(r.eval_loss!)]), dashed));
    for (const r of evals) parts.push(`<circle cx="${fmt(x(r.step))}" cy="${fmt(y(r.eval_loss!))}" r="4" fill="#d62728" stroke="#ffffff" stroke-width="1"/>`);
    legend.push({ label: "eval loss", stroke: dashed, dot: true });
  }

  // Legend.
  const lw = 250;
  const lx = margin.left + plotW - lw - 10;
  const ly = margin.top + 10;
  parts.push(`<rect x="${lx}" y="${ly}" width="${lw}" height="${8 + 18 * legend.length}" fill="#ffffff" fill-opacity="0.85" stroke="#ccc"/>`);
  legend.forEach((item, i) => {
    const cy = ly + 13 + 18 * i;
    parts.push(`<line x1="${lx + 8}" x2="${lx + 30}" y1="${cy}" y2="${cy}" ${item.stroke}/>`);
    if (item.dot) parts.push(`<circle cx="${lx + 19}" cy="${cy}" r="4" fill="#d62728" stroke="#ffffff" stroke-width="1"/>`);
    parts.push(`<text x="${lx + 36}" y="${cy + 4}">${escapeXml(item.label)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
