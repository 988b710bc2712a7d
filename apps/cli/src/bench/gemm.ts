/**
 * Tensor-core GEMM sweep: tile configurations (global-memory and staged, suffix s) on the
 * linear-layer shapes of the benchmark models and 4096³, f16 A and B, f32 C. One JSON line per (config, shape, form):
 * `{"op":"gemm_tc", "cfg", "shape", "transB", "ms", "tflops", "relErr"}`, relErr on sampled
 * entries against float64. Also the portable f32 kernel on the same shapes for the ratio.
 *   bun apps/cli/src/bench/gemm.ts [--quick] [--no-baselines] [--configs 4x2_2x2,4x4_1x1c] [--shapes 4096x8192x2048,llama1b] [--reps R]
 *     [--write-table FILE]
 *   bun apps/cli/src/bench/gemm.ts --table-from gemm.jsonl --write-table FILE   (a table from a device call's sweep lines)
 * --write-table writes the best correct configuration per (N, K, form) as gemm-tiles.ts reads it:
 * the swept shapes replace their entries of the table built in now; the other entries stay.
 */
import { fitWorkgroupStorage } from "@tuneloom/kernels/matmul-tc-staged.ts";
import {
  type GemmTileTable, type GpuRuntime, type TcConfig, getRuntime, hasTensorCoreMatmul, matmul, matmulTensorCore, parseTcConfig,
  tcConfigFor, tcConfigName, toF16,
} from "@tuneloom/kernels";
import { readFileSync, writeFileSync } from "node:fs";
import builtInTable from "@tuneloom/kernels/gemm-tiles.json";
import { fromF16Bits, randn, toF16Bits } from "@tuneloom/kernels/host-data.ts";
import { sampledRelError, timeGpu, warmClocks } from "./timing.ts";

const SHAPES: [string, number, number, number][] = [
  ["4096^3", 4096, 4096, 4096],
  ["smol up/gate 4096x1536x576", 4096, 1536, 576],
  ["smol down 4096x576x1536", 4096, 576, 1536],
  ["smol kv 4096x192x576", 4096, 192, 576],
  ["smol head 4096x8192x576", 4096, 8192, 576],
  ["qwen up 4096x4864x896", 4096, 4864, 896],
  ["llama up 4096x8192x2048", 4096, 8192, 2048],
  ["llama1b qo 4096x2048x2048", 4096, 2048, 2048],
  ["llama1b kv 4096x512x2048", 4096, 512, 2048],
  ["llama1b down 4096x2048x8192", 4096, 2048, 8192],
  ["llama8b up 4096x14336x4096", 4096, 14336, 4096],
  ["llama8b down 4096x4096x14336", 4096, 4096, 14336],
  ["llama8b kv 4096x1024x4096", 4096, 1024, 4096],
  ["qwen0.5b qo 4096x896x896", 4096, 896, 896],
  ["qwen0.5b kv 4096x128x896", 4096, 128, 896],
  ["qwen0.5b down 4096x896x4864", 4096, 896, 4864],
  ["llama3b qo 4096x3072x3072", 4096, 3072, 3072],
  ["llama3b kv 4096x1024x3072", 4096, 1024, 3072],
  ["llama3b up 4096x8192x3072", 4096, 8192, 3072],
  ["llama3b down 4096x3072x8192", 4096, 3072, 8192],
  ["qwen7b qo 4096x3584x3584", 4096, 3584, 3584],
  ["qwen7b kv 4096x512x3584", 4096, 512, 3584],
  ["qwen7b up 4096x18944x3584", 4096, 18944, 3584],
  ["qwen7b down 4096x3584x18944", 4096, 3584, 18944],
  // LM head chunks of cross-entropy (16,384 vocabulary rows at a time)
  ["qwen0.5b head 4096x16384x896", 4096, 16384, 896],
  ["llama1b head 4096x16384x2048", 4096, 16384, 2048],
  ["llama3b head 4096x16384x3072", 4096, 16384, 3072],
  ["qwen7b head 4096x16384x3584", 4096, 16384, 3584],
  ["llama8b head 4096x16384x4096", 4096, 16384, 4096],
];

/**
 * `--shapes`: a comma-separated list of MxNxK (e.g. 4096x8192x2048) and/or substrings of the
 * model shape names above (e.g. "llama1b,llama8b up"); default: every model shape.
 */
export function selectShapes(spec: string | undefined): [string, number, number, number][] {
  if (!spec) return SHAPES;
  return spec.split(",").flatMap((item): [string, number, number, number][] => {
    const dims = /^(\d+)x(\d+)x(\d+)$/.exec(item);
    if (dims) {
      const [M, N, K] = [+dims[1]!, +dims[2]!, +dims[3]!];
      if (M % 16 || N % 16 || K % 16) throw new Error(`--shapes: ${item} is not a multiple of 16 in every dimension`);
      return [[item, M, N, K]];
    }
    const hits = SHAPES.filter(([name]) => name.includes(item));
    if (hits.length === 0) throw new Error(`--shapes: '${item}' is neither MxNxK nor part of a model shape name (${SHAPES.map(([n]) => n).join("; ")})`);
    return hits;
  });
}

export async function* gemmSweep(rt: GpuRuntime, configs: TcConfig[], quick: boolean, baselines = true, selected = SHAPES, reps = 1) {
  const shapes = quick ? SHAPES.slice(1, 3) : selected;
  for (const [name, M, N, K] of shapes) {
    const aF = randn(M * K), bBits = toF16Bits(randn(N * K));
    const aBits = toF16Bits(aF), a = fromF16Bits(aBits), b = fromF16Bits(bBits);
    const ta32 = rt.upload("f32", [M, K], a), ta = rt.upload("f16", [M, K], aBits), tb = rt.upload("f16", [N * K], bBits);
    const tc = rt.empty("f32", [M, N]);
    const flops = 2 * M * N * K;
    const iters = Math.max(3, Math.min(200, Math.round(2e12 / flops)));
    for (const transB of [true, false]) {
      // C[m][n] = Σ_k A[m][k]·B(k, n); transB: B stored (N, K), else (K, N).
      const ref = (i: number) => {
        const m = Math.floor(i / N), n = i % N;
        let s = 0;
        for (let k = 0; k < K; k++) s += a[m * K + k]! * (transB ? b[n * K + k]! : b[k * N + n]!);
        return s;
      };
      // Each configuration is timed `reps` times, round robin over the configurations, and keeps
      // its fastest time (the GPU's clocks move between and within calls; a slow spell then
      // touches every configuration alike instead of ranking them).
      // (a configuration that cannot run is reported by the timing loop below)
      // 1 s: session 15 saw the first repetition of most configurations of a case run at a quarter of the
      // second after 300 ms of warm-up.
      await warmClocks(rt, (rec) => matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, configs[0]), 1000).catch(() => {});
      const times = new Map<TcConfig, number[]>();
      const failed = new Map<TcConfig, string>();
      // One untimed round first: pipelines built and every configuration run once before any timing
      // (session 15's call: the first case of a call, 4096³ x·Wᵀ, ran every configuration at a third
      // to a half of its speed elsewhere in both repetitions).
      for (const cfg of configs) {
        try {
          await timeGpu(rt, (rec) => matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, cfg), 1);
        } catch (e) {
          failed.set(cfg, String((e as Error).message).slice(0, 300));
        }
      }
      for (let rep = 0; rep < reps; rep++) {
        for (const cfg of configs) {
          if (failed.has(cfg)) continue;
          try {
            const ms = await timeGpu(rt, (rec) => matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, cfg), iters);
            times.set(cfg, [...(times.get(cfg) ?? []), ms]);
          } catch (e) {
            failed.set(cfg, String((e as Error).message).slice(0, 300));
          }
        }
      }
      for (const cfg of configs) {
        const err = failed.get(cfg);
        if (err !== undefined) {
          yield { op: "gemm_tc", cfg: tcConfigName(cfg), shape: name, transB, error: err };
          continue;
        }
        // The result of the last run of this configuration is checked against float64.
        await timeGpu(rt, (rec) => matmulTensorCore(rec, { a: ta, b: tb, c: tc, M, N, K, transB }, cfg), 1);
        const relErr = sampledRelError(await rt.read(tc), ref, 256);
        const all = times.get(cfg)!, ms = Math.min(...all);
        // matmulTensorCore shrinks a tile to the device's workgroup memory (fitWorkgroupStorage): say so.
        const ran = tcConfigName(fitWorkgroupStorage(cfg, transB, rt.caps.limits.maxComputeWorkgroupStorageSize));
        yield {
          op: "gemm_tc", cfg: tcConfigName(cfg), ...(ran !== tcConfigName(cfg) ? { ran } : {}), shape: name, transB, ms: +ms.toFixed(4), tflops: +(flops / ms / 1e9).toFixed(1), relErr,
          ...(all.length > 1 ? { tflops_reps: all.map((t) => +(flops / t / 1e9).toFixed(1)) } : {}),
        };
      }
      if (!baselines) continue;
      // The whole f32-activation path as the trainer uses it: convert A, then the GEMM.
      const msConv = await timeGpu(rt, (rec) => {
        const a16 = toF16(rec, ta32);
        matmulTensorCore(rec, { a: a16, b: tb, c: tc, M, N, K, transB });
        rec.recycle(a16);
      }, iters);
      yield { op: "gemm_tc+convert", cfg: tcConfigName(tcConfigFor(M, N, K, transB)), shape: name, transB, ms: +msConv.toFixed(4), tflops: +(flops / msConv / 1e9).toFixed(1) };
      const msPortable = await timeGpu(rt, (rec) => matmul(rec, { a: ta32, b: tb, c: tc, M, N, K, transB }), Math.max(2, Math.round(iters / 8)));
      yield { op: "gemm_portable_f32xf16", shape: name, transB, ms: +msPortable.toFixed(4), tflops: +(flops / msPortable / 1e9).toFixed(1) };
    }
    rt.release(ta32, ta, tb, tc);
  }
}

/**
 * The tile table a sweep writes (kernels/src/gemm-tiles.json): the best correct, complete
 * configuration per (N, K, form) among the swept lines; entries of the built-in table for shapes
 * not swept are kept.
 */
export class TileTableBuilder {
  private readonly best = new Map<string, { n: number; k: number; transB: boolean; cfg: string; tflops: number }>();
  constructor(private readonly shapes: [string, number, number, number][] = SHAPES) {}

  /** Takes one sweep line; true when it entered the table. */
  add(line: { op?: string; cfg?: string; shape?: string; transB?: boolean; tflops?: number; relErr?: number }): boolean {
    // Only correct, complete kernels enter the table (the diag variants leave work out).
    if (line.op !== "gemm_tc" || line.relErr === undefined || !line.cfg || line.cfg.includes("-no-") || !(line.relErr < 1e-3) || line.tflops === undefined) return false;
    const shape = this.shapes.find(([name]) => name === line.shape);
    if (!shape) return false;
    const key = `${shape[2]}:${shape[3]}:${line.transB}`;
    if (this.best.get(key)?.tflops! >= line.tflops) return false;
    this.best.set(key, { n: shape[2], k: shape[3], transB: !!line.transB, cfg: line.cfg, tflops: line.tflops });
    return true;
  }

  json(measured: string): string {
    const swept = new Set(this.best.keys());
    const builtIn = builtInTable as GemmTileTable;
    const kept = builtIn.entries.filter((e) => !swept.has(`${e.n}:${e.k}:${e.transB}`));
    const table: GemmTileTable = {
      measured: measured + (kept.length ? `; ${kept.length} entries kept from: ${builtIn.measured}` : ""),
      entries: [...kept, ...this.best.values()],
    };
    return `${JSON.stringify(table, null, 1)}\n`;
  }
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const quick = args.includes("--quick");
  const ci = args.indexOf("--configs");
  const configs = ci >= 0
    ? args[ci + 1]!.split(",").map(parseTcConfig)
    : ["4x4_1x1", "4x4_2x2s", "4x4_2x1s", "2x4_2x2s", "4x4_2x4s", "4x4_4x2s", "2x4_4x4s", "2x4_2x4s"].map(parseTcConfig);
  const fi = args.indexOf("--table-from");
  if (fi >= 0) {
    // The table from a sweep's JSON lines collected on the device (no GPU needed here).
    const wi = args.indexOf("--write-table");
    if (wi < 0) throw new Error("--table-from needs --write-table FILE");
    const lines = readFileSync(args[fi + 1]!, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const sweep = lines.filter((l) => l.op === "gemm_tc" && !l.diag);
    const b = new TileTableBuilder();
    for (const l of sweep) b.add(l);
    const cfgs = [...new Set(sweep.map((l) => l.cfg as string))].join(" ");
    writeFileSync(args[wi + 1]!, b.json(`${sweep[0]?.gpu ?? "unknown GPU"}, call ${sweep[0]?.call ?? "?"}, sweep of ${cfgs}`));
    process.exit(0);
  }
  const rt = await getRuntime();
  if (!hasTensorCoreMatmul(rt)) {
    console.error(`gemm sweep: ${rt.caps.description} has no f16 subgroup matrices`);
    process.exit(2);
  }
  const ri = args.indexOf("--reps");
  const reps = ri >= 0 ? Number(args[ri + 1]) : 1;
  if (!(Number.isInteger(reps) && reps >= 1 && reps <= 20)) throw new Error(`--reps: want an integer 1..20, got ${args[ri + 1]}`);
  const si = args.indexOf("--shapes");
  const shapes = selectShapes(si >= 0 ? args[si + 1] : undefined);
  const wi = args.indexOf("--write-table");
  const best = new TileTableBuilder(shapes);
  const write = () => {
    if (wi >= 0) writeFileSync(args[wi + 1]!, best.json(`${rt.caps.description}, ${new Date().toISOString().slice(0, 10)}, sweep of ${configs.map(tcConfigName).join(" ")}`));
  };
  for await (const line of gemmSweep(rt, configs, quick, !args.includes("--no-baselines"), shapes, reps)) {
    console.log(JSON.stringify(line));
    // The table is rewritten after every correct line, so a sweep cut short by a deadline keeps what it measured.
    if (best.add(line)) write();
  }
}
