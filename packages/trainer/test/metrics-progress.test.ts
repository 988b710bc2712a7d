import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { centeredMean, logTicks, renderLossCurveSvg, niceTicks } from "../src/loss-curve-svg.ts";
import { MetricsLog, formatMetricsLine, parseMetricsJsonl, type MetricsRecord } from "../src/metrics.ts";
import { ProgressReporter, formatDuration, formatEvalLine, formatSummary } from "../src/progress.ts";
import { tempDir } from "./helpers.ts";

const record = (step: number, loss: number, extra: Partial<MetricsRecord> = {}): MetricsRecord => ({
  step, loss, lr: 1e-4, grad_norm: 0.5, tokens: step * 100, tok_s: 1000, elapsed_s: step * 0.1, ...extra,
});

describe("metrics.jsonl", () => {
  test("one line per step with the documented fields", () => {
    expect(formatMetricsLine(record(3, 2.5, { eval_loss: 2.7 }))).toBe(
      '{"step":3,"loss":2.5,"lr":0.0001,"grad_norm":0.5,"tokens":300,"tok_s":1000,"elapsed_s":0.30000000000000004,"eval_loss":2.7}',
    );
    expect(formatMetricsLine(record(1, Number.NaN))).toContain('"loss":null');
  });

  test("append, attach eval loss, and drop records past a resumed checkpoint", () => {
    const file = path.join(tempDir(), "out", "metrics.jsonl");
    const log = new MetricsLog(file);
    for (let s = 1; s <= 5; s++) log.log(record(s, 3 - s * 0.1));
    log.logEval(4, 2.9);
    const records = parseMetricsJsonl(readFileSync(file, "utf8"));
    expect(records.map((r) => r.step)).toEqual([1, 2, 3, 4, 5]);
    expect(records[3]!.eval_loss).toBe(2.9);
    writeFileSync(file, readFileSync(file, "utf8") + '{"step":6,"lo'); // a line cut by a crash
    const resumed = new MetricsLog(file, { resumeFromStep: 3 });
    expect(resumed.records.map((r) => r.step)).toEqual([1, 2, 3]);
    expect(parseMetricsJsonl(readFileSync(file, "utf8")).map((r) => r.step)).toEqual([1, 2, 3]);
  });
});

describe("loss curve SVG", () => {
  test("train and eval series, well-formed, no scripts", () => {
    const records = Array.from({ length: 50 }, (_, i) => record(i + 1, 3 * Math.exp(-i / 15) + 0.2, (i + 1) % 10 === 0 ? { eval_loss: 3 * Math.exp(-i / 15) + 0.4 } : {}));
    const svg = renderLossCurveSvg(records, { title: "demo <run>" });
    expect(svg).toStartWith('<svg xmlns="http://www.w3.org/2000/svg"');
    expect(svg.trimEnd()).toEndWith("</svg>");
    expect(svg).toContain("demo &lt;run&gt;");
    expect(svg.match(/<polyline/g)!.length).toBe(3); // raw, smoothed, eval
    expect(svg.match(/<circle/g)!.length).toBe(5 + 1); // the eval points and the legend's
    expect(svg).toContain("train loss (per step)");
    expect(svg).toMatch(/train loss, centered mean of \d+ steps/);
    expect(svg).toContain("loss (log scale)"); // 3.2 → 0.2: over 10×
    expect(renderLossCurveSvg([record(1, 2), record(2, 1.5), record(3, 1)])).toContain(">loss</text>"); // under 10×: linear
    expect(svg).not.toContain("NaN");
    expect(svg).not.toContain("<script");
    expect(renderLossCurveSvg([])).toContain("no data");
    expect(renderLossCurveSvg([record(1, 2)])).not.toContain("NaN");
  });

  test("log-scale y when the values span more than 10×, with 1-2-5 ticks", () => {
    const records = Array.from({ length: 100 }, (_, i) => record(i + 1, 10 * Math.exp(-i / 12) + 0.05));
    const svg = renderLossCurveSvg(records);
    expect(svg).toContain("loss (log scale)");
    expect(logTicks(0.04, 11)).toEqual([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]);
    // On a log axis equal ratios are equal distances: the 0.1 and 1 gridlines are as far apart as 1 and 10.
    const ys = (v: string) => Number(new RegExp(`y="([\\d.]+)"[^>]*>${v}</text>`).exec(svg)![1]);
    expect(ys("0.1") - ys("1")).toBeCloseTo(ys("1") - ys("10"), 0);
  });

  test("the smoothed line is a centered mean: no lag on a straight line", () => {
    const line = Array.from({ length: 20 }, (_, i) => 5 - 0.2 * i);
    const mean = centeredMean(line, 5);
    for (let i = 2; i < 18; i++) expect(mean[i]).toBeCloseTo(line[i]!, 12); // an EMA would sit above a falling curve
    expect(mean[0]).toBeCloseTo((line[0]! + line[1]! + line[2]!) / 3, 12); // clipped at the ends
  });

  test("nice ticks", () => {
    expect(niceTicks(0, 10)).toEqual([0, 2, 4, 6, 8, 10]);
    expect(niceTicks(0.13, 0.61)).toEqual([0.2, 0.3, 0.4, 0.5, 0.6]);
  });
});

describe("progress", () => {
  function sink(isTTY: boolean) {
    const chunks: string[] = [];
    return { chunks, stream: { isTTY, columns: 120, write: (t: string) => chunks.push(t) } };
  }
  const update = (step: number) => ({ step, loss: 2 - step / 100, lr: 1e-4, tokS: 5120, elapsedS: step * 0.5 });

  test("TTY: one line redrawn in place, messages above it", () => {
    const { chunks, stream } = sink(true);
    const p = new ProgressReporter({ total: 100, stream });
    p.update(update(1));
    p.update(update(50));
    p.log("eval loss 1.9");
    p.finish();
    expect(chunks[0]).toStartWith("\r\x1b[2Kstep 1/100 [");
    expect(chunks[1]).toContain("step 50/100 [=========>          ] 50% loss 1.5000 lr 1.00e-4 5.1k tok/s ETA 25s");
    expect(chunks[2]).toStartWith("\r\x1b[2Keval loss 1.9\nstep 50/100");
    expect(chunks.at(-1)).toBe("\n");
  });

  test("not a TTY: plain lines every N steps, no control characters", () => {
    const { chunks, stream } = sink(false);
    const p = new ProgressReporter({ total: 25, stream, logEvery: 10 });
    for (let s = 1; s <= 25; s++) p.update(update(s));
    p.log("done");
    p.finish();
    expect(chunks.map((c) => c.split(" ").slice(0, 2).join(" "))).toEqual(["step 1/25", "step 10/25", "step 20/25", "step 25/25", "done\n"]);
    expect(chunks.join("")).not.toMatch(/[\r\x1b]/);
  });

  test("the printed loss is the mean over the logging window; epoch shown; eval line", () => {
    const { chunks, stream } = sink(false);
    const p = new ProgressReporter({ total: 20, stream, logEvery: 10 });
    for (let s = 1; s <= 20; s++) p.update({ step: s, loss: s, lr: 1e-4, tokS: 100, elapsedS: s, epoch: s / 8 });
    // Windows: {1}, {2..10}, {11..20}.
    expect(chunks[0]).toContain("epoch 0.13 loss 1.0000");
    expect(chunks[1]).toContain("step 10/20 epoch 1.25 loss 6.0000");
    expect(chunks[2]).toContain("step 20/20 epoch 2.50 loss 15.5000");
    expect(formatEvalLine(40, 0.8, 1.3, 1.2)).toBe("eval: step 40 epoch 0.80 eval_loss 1.3000 (best 1.2000)");
    expect(formatEvalLine(40, 0.8, 1.2, 1.2)).toBe("eval: step 40 epoch 0.80 eval_loss 1.2000");
  });

  test("durations and the final summary", () => {
    expect([formatDuration(5), formatDuration(75), formatDuration(7322), formatDuration(Number.NaN)]).toEqual(["5s", "1m15s", "2h02m", "?"]);
    const text = formatSummary({
      steps: 200, epochs: 2, elapsedS: 95, tokens: 512000, trainableParams: 40960, totalParams: 4096000,
      firstLoss: 5.1, finalLoss: 0.42, evalLoss: 0.5, bestEvalLoss: 0.48, outputDir: "out/adapter", notes: ["exact match 18/20"],
    });
    expect(text).toContain("steps        200 (2.00 epochs) in 1m35s");
    expect(text).toContain("parameters   41.0k trainable of 4.1M (1.00%)");
    expect(text).toContain("train loss   5.1000 → 0.4200");
    expect(text).toContain("eval loss    0.5000 (best 0.4800)");
    expect(text).toContain("exact match 18/20");
  });
});
