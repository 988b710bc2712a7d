/**
 * loss_curve.svg: train loss per step (faint), its exponential moving average (solid), and eval
 * loss (dots joined by a dashed line), on linear axes with "nice" ticks. Plain SVG 1.1 text, no
 * scripts or external fonts, so it renders the same in a browser, on GitHub and in an image viewer.
 */
import type { MetricsRecord } from "./metrics.ts";

export interface LossCurveOptions {
  width?: number;
  height?: number;
  title?: string;
  /** EMA weight of the previous value for the smoothed train curve (default 0.9; 0 disables). */
  smoothing?: number;
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
  const pad = (yMax - yMin) * 0.05 || Math.abs(yMax) * 0.05 || 1;
  yMin = Math.max(yMin >= 0 ? 0 : -Infinity, yMin - pad);
  yMax += pad;
  const x = (step: number) => margin.left + ((step - xMin) / (xMax - xMin)) * plotW;
  const y = (v: number) => margin.top + (1 - (v - yMin) / (yMax - yMin)) * plotH;
  const fmt = (n: number) => n.toFixed(1);

  // Grid, ticks and axes.
  for (const t of niceTicks(yMin, yMax)) {
    parts.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${fmt(y(t))}" y2="${fmt(y(t))}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${margin.left - 6}" y="${fmt(y(t) + 4)}" text-anchor="end" fill="#444">${formatTick(t)}</text>`);
  }
  for (const t of niceTicks(xMin, xMax).filter((t) => Number.isInteger(t))) {
    parts.push(`<line x1="${fmt(x(t))}" x2="${fmt(x(t))}" y1="${margin.top + plotH}" y2="${margin.top + plotH + 4}" stroke="#444"/>`);
    parts.push(`<text x="${fmt(x(t))}" y="${margin.top + plotH + 18}" text-anchor="middle" fill="#444">${formatTick(t)}</text>`);
  }
  parts.push(`<rect x="${margin.left}" y="${margin.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#444"/>`);
  parts.push(`<text x="${margin.left + plotW / 2}" y="${H - 10}" text-anchor="middle" fill="#444">step</text>`);
  parts.push(`<text x="16" y="${margin.top + plotH / 2}" text-anchor="middle" fill="#444" transform="rotate(-90 16 ${margin.top + plotH / 2})">loss</text>`);

  const polyline = (points: [number, number][], attrs: string) =>
    `<polyline fill="none" ${attrs} points="${points.map(([px, py]) => `${fmt(px)},${fmt(py)}`).join(" ")}"/>`;
  if (train.length > 0) {
    parts.push(polyline(train.map((r) => [x(r.step), y(r.loss)]), `stroke="#1f77b4" stroke-opacity="0.3" stroke-width="1"`));
    const beta = options.smoothing ?? 0.9;
    if (beta > 0 && train.length > 2) {
      // Debiased EMA (as TensorBoard's smoothing), so the start is not pulled toward 0.
      let ema = 0;
      const smooth = train.map((r, i) => {
        ema = beta * ema + (1 - beta) * r.loss;
        return [x(r.step), y(ema / (1 - beta ** (i + 1)))] as [number, number];
      });
      parts.push(polyline(smooth, `stroke="#1f77b4" stroke-width="2"`));
    }
  }
  if (evals.length > 0) {
    parts.push(polyline(evals.map((r) => [x(r.step), y(r.eval_loss!)]), `stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,4"`));
    for (const r of evals) parts.push(`<circle cx="${fmt(x(r.step))}" cy="${fmt(y(r.eval_loss!))}" r="3" fill="#d62728"/>`);
  }

  // Legend.
  const lx = margin.left + plotW - 150;
  const ly = margin.top + 10;
  parts.push(`<rect x="${lx}" y="${ly}" width="140" height="${evals.length ? 44 : 26}" fill="#ffffff" fill-opacity="0.85" stroke="#ccc"/>`);
  parts.push(`<line x1="${lx + 8}" x2="${lx + 30}" y1="${ly + 13}" y2="${ly + 13}" stroke="#1f77b4" stroke-width="2"/>`);
  parts.push(`<text x="${lx + 36}" y="${ly + 17}">train loss</text>`);
  if (evals.length) {
    parts.push(`<line x1="${lx + 8}" x2="${lx + 30}" y1="${ly + 31}" y2="${ly + 31}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,4"/>`);
    parts.push(`<text x="${lx + 36}" y="${ly + 35}">eval loss</text>`);
  }
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
