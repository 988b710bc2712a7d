/**
 * Decode-shaped products y (M, N) = x (M, K) · Wᵀ: gemv() against the portable matmul() on the
 * linear-layer and LM-head shapes of the benchmark models. One JSON line per (shape, dtype, M,
 * rows-per-thread config):
 *   {"op":"gemv", "shape", "N", "K", "dtype", "M", "rows", "ms", "gbs", "matmul_ms", "relErr"}
 * gbs = bytes of W / gemv time (the product is bound by reading W once); relErr = gemv vs
 * matmul() on the same inputs. LM heads larger than one storage binding are done in row
 * chunks of W (as logitsRows does), the same chunks for both kernels.
 *   bun apps/cli/src/bench/gemv.ts [--quick] [--M 1,4,16] [--dtype f16,bf16,f32] [--rows 1,2,4]
 */
import { type DType, type GemvConfig, type GpuRuntime, type Recorder, Tensor, gemv, getRuntime, matmul } from "@tuneloom/kernels";
import { randn, relError, toBf16Bits, toF16Bits } from "@tuneloom/kernels/host-data.ts";
import { timeGpuAdaptive } from "./timing.ts";

/** [name, N (out features), K (in features)] */
const SHAPES: [string, number, number][] = [
  ["smol up/gate 576->1536", 1536, 576],
  ["smol down 1536->576", 576, 1536],
  ["smol q/o 576->576", 576, 576],
  ["smol kv 576->192", 192, 576],
  ["smol head 576->49152", 49152, 576],
  ["qwen up/gate 896->4864", 4864, 896],
  ["qwen down 4864->896", 896, 4864],
  ["qwen head 896->151936", 151936, 896],
  ["llama up/gate 2048->8192", 8192, 2048],
  ["llama down 8192->2048", 2048, 8192],
  ["llama head 2048->128256", 128256, 2048],
];

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
const lcm = (a: number, b: number) => (a / gcd(a, b)) * b;

/** Row chunks [n0, n) of W that fit one storage binding, each starting on a 256-byte boundary in W and in y. */
function chunks(rt: GpuRuntime, N: number, K: number, dtype: DType): [number, number][] {
  const eb = dtype === "f32" ? 4 : 2;
  const align = lcm(256 / gcd(K * eb, 256), 64);
  let rows = Math.floor(rt.caps.limits.maxStorageBufferBindingSize / (K * eb));
  rows = Math.max(align, Math.floor(rows / align) * align);
  const out: [number, number][] = [];
  for (let n0 = 0; n0 < N; n0 += rows) out.push([n0, Math.min(rows, N - n0)]);
  return out;
}

function record(rec: Recorder, kind: "gemv" | "matmul", x: Tensor, w: Tensor, y: Tensor, M: number, N: number, K: number,
  parts: [number, number][], cfg?: GemvConfig) {
  const eb = w.dtype === "f32" ? 4 : 2;
  for (const [n0, n] of parts) {
    const b = parts.length === 1 ? w : new Tensor(w.buffer, w.dtype, [n, K], w.byteOffset + n0 * K * eb, w.label);
    const c = parts.length === 1 ? y : new Tensor(y.buffer, "f32", [M * N - n0], y.byteOffset + n0 * 4, y.label);
    const args = { a: x, b, c, M, N: n, K, transB: true, ldc: N };
    if (kind === "gemv") gemv(rec, args, cfg);
    else matmul(rec, args);
  }
}

function weights(dtype: DType, n: number): ArrayBufferView {
  const w = randn(n, 0.02);
  return dtype === "f16" ? toF16Bits(w) : dtype === "bf16" ? toBf16Bits(w) : w;
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const opt = (name: string, dflt: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1]! : dflt;
  };
  const rt = await getRuntime();
  const soft = rt.caps.isSoftware;
  const quick = argv.includes("--quick") || soft;
  const Ms = opt("--M", soft ? "1" : "1,4,16").split(",").map(Number);
  const dtypes = opt("--dtype", "f16,bf16,f32").split(",") as DType[];
  const rowsList = argv.includes("--rows") ? opt("--rows", "").split(",").map((r) => ({ rows: Number(r) as 1 | 2 | 4 })) : [undefined];
  const shapes = quick ? SHAPES.slice(0, 5) : SHAPES;
  const targetMs = soft ? 100 : 200;
  for (const [name, N, K] of shapes) {
    for (const dtype of dtypes) {
      const eb = dtype === "f32" ? 4 : 2;
      const wBytes = N * K * eb;
      const w = rt.upload(dtype, [N, K], weights(dtype, N * K));
      const parts = chunks(rt, N, K, dtype);
      for (const M of Ms) {
        const x = rt.upload("f32", [M, K], randn(M * K));
        const yg = rt.empty("f32", [M, N]), ym = rt.empty("f32", [M, N]);
        const matmulMs = await timeGpuAdaptive(rt, (rec) => record(rec, "matmul", x, w, ym, M, N, K, parts), targetMs, 200);
        const ref = await rt.read(ym);
        for (const cfg of rowsList) {
          const ms = await timeGpuAdaptive(rt, (rec) => record(rec, "gemv", x, w, yg, M, N, K, parts, cfg), targetMs, 2000);
          const relErr = relError(await rt.read(yg), ref);
          console.log(JSON.stringify({
            op: "gemv", shape: name, N, K, dtype, M, rows: cfg?.rows ?? "auto", chunks: parts.length,
            ms: +ms.toFixed(5), gbs: +(wBytes / ms / 1e6).toFixed(1), matmul_ms: +matmulMs.toFixed(5), relErr: +relErr.toExponential(2),
          }));
        }
        rt.release(x, yg, ym);
      }
      rt.release(w);
    }
  }
  rt.trimPool();
}
