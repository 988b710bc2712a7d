/**
 * Grouped GEMVs (decode): two or three products that read the same x (a layer's q/k/v, gate/up) in
 * ONE dispatch of the aligned kernel (gemv-rows.ts), optionally with the RMSNorm in front (each
 * workgroup sums x² itself) or, for gate/up, SwiGLU as the epilogue (act written, gate and up not).
 * Each dispatch costs ~10 µs of wall time whatever it does (CPU encoding and GPU together; session
 * 16's dispatch-floor bench, H100), so a decode layer's norm + q/k/v and norm + gate/up (+ SwiGLU)
 * become one dispatch each.
 */
import { cdiv, Params } from "./params.ts";
import type { GpuRuntime, KernelSource, Recorder } from "./runtime.ts";
import type { Tensor } from "./tensor.ts";
import { type GemvConfig, type GemvNorm, G, MAX_M, WG, defaultRows, depthTag, mSplit, normDecl, vecParts } from "./gemv-rows.ts";

/** One projection of a grouped GEMV: y (M, N) = x·wᵀ (+ bias), y contiguous (row stride N). */
export interface GemvPart {
  w: Tensor;
  y: Tensor;
  bias?: Tensor;
}

const groupSources = new Map<string, KernelSource>();

/**
 * gemvGroup (session 9): on by default since session 16's call (H100, 2026-12-08T01:35Z, same call):
 * Llama-3.2-1B batch-1 decode 272.3 → 368.8 tok/s (its k and v GEMVs of 512 rows ran on 128
 * workgroups, and each dispatch costs ~10 µs of wall time whatever it does: the
 * dispatch-floor bench), Llama-3.1-8B 87.5 → 98.4 (session 11 had measured 8B neutral at depth 4).
 * `TUNELOOM_GEMV_GROUP=0` turns it off. Tests flip `enabled`.
 */
export const gemvGrouping = { enabled: process.env.TUNELOOM_GEMV_GROUP !== "0" };

/**
 * The grouped aligned kernel: `n` parts, each a vecParts row function over its own w, bias and y;
 * with `norm`, every part reads x through the RMSNorm (GemvNorm, bound after the outputs): each workgroup
 * sums x² over the chunks it reads anyway, as the single fused GEMV does.
 *
 * `swiglu` (two parts, gate and up, of one N): one output, act = silu(gate)·up, and no gate or up
 * written. Each workgroup makes the same block of columns of both: gate's into workgroup memory,
 * then up's, whose stores read them back (the thread that stores up's (m, n) stored gate's: the
 * two row functions share one thread layout) and write swigluForward's value.
 */
function groupSource(MS: number, RT: number, n: number, norm = false, swiglu = false): KernelSource {
  if (swiglu && n !== 2) throw new Error("gemv group: the SwiGLU epilogue takes two parts (gate, up)");
  const key = `${MS}x${RT}x${n}${depthTag()}${norm ? "_norm" : ""}${swiglu ? "_swiglu" : ""}`;
  let s = groupSources.get(key);
  if (s) return s;
  const parts = vecParts(MS, RT, norm ? "norm" : "");
  const js = Array.from({ length: n }, (_, j) => j);
  const outs = swiglu ? 1 : n; // output bindings
  const store = (j: number) => !swiglu
    ? `fn store${j}(m: u32, n: u32, s: f32) {
  var v = s;
  if ((p.flags & ${1 << j}u) != 0u) { v += bias${j}[n]; }
  y${j}[m * p.n${j} + n] = v;
}`
    : j === 0
    ? `fn store0(m: u32, n: u32, s: f32) {
  var v = s;
  if ((p.flags & 1u) != 0u) { v += bias0[n]; }
  gateW[m * ${G * RT}u + n % ((${G}u / p.S) * RT)] = v;
}`
    : `fn store1(m: u32, n: u32, s: f32) {
  var u = s;
  if ((p.flags & 2u) != 0u) { u += bias1[n]; }
  let g = gateW[m * ${G * RT}u + n % ((${G}u / p.S) * RT)];
  y0[m * p.n0 + n] = g * sigmoid(g) * u;
}`;
  const code = `// gemv group: ${swiglu ? "act (M, N) = silu(gate)·up, gate|up" : "y_j (M, N_j)"} = ${norm ? "rmsnorm(x)" : "x"} (M, K) · W_jᵀ (+ bias_j) for ${n} weights read with one x; MS rows of x, RT rows of W per thread.
struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, wkind: u32, flags: u32,
  beta: f32, nc: u32, gridX: u32, S: u32,
  n0: u32, n1: u32, n2: u32, b1: u32, // N_j; b1, b2: each part's first workgroup
  b2: u32, eps: f32, _b: u32, _c: u32, // eps: the fused RMSNorm's
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
${js.map((j) => `@group(0) @binding(${2 + j}) var<storage, read> w${j}: array<vec4<u32>>;
@group(0) @binding(${2 + n + j}) var<storage, read> bias${j}: array<f32>;`).join("\n")}
${js.slice(0, outs).map((j) => `@group(0) @binding(${2 + 2 * n + j}) var<storage, read_write> y${j}: array<f32>;`).join("\n")}
${norm ? normDecl(2 + 2 * n + outs) : ""}
${parts.decls}
${swiglu ? `var<workgroup> gateW: array<f32, ${MAX_M * G * RT}>; // gate's block, [m][column in the block]

// swigluForward's σ (swiglu.wgsl): exp of a non-positive argument only
fn sigmoid(g: f32) -> f32 {
  if (g >= 0.0) { return 1.0 / (1.0 + exp(-g)); }
  let e = exp(g);
  return e / (1.0 + e);
}` : ""}

${js.map((j) => `${store(j)}

${parts.rows(`rows${j}`, `w${j}`, `p.n${j}`, `store${j}`)}`).join("\n\n")}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wg.y * p.gridX + wg.x; // this workgroup's block of output columns${swiglu ? "" : " across the parts"}
  let perWg = (${G}u / p.S) * RT;
  ${swiglu ? "rows0(b * perWg, tid);\n  rows1(b * perWg, tid);" : js.map((j) => {
    const first = j === 0 ? "0u" : `p.b${j}`;
    const call = `rows${j}((b - ${first}) * perWg, tid);`;
    if (j === n - 1) return j === 0 ? call : `{ ${call} }`;
    return `if (b < p.b${j + 1}) { ${call} } else `;
  }).join("")}
}
`;
  s = { name: `gemv_group${n}_m${MS}_r${RT}${depthTag()}${norm ? "_norm" : ""}${swiglu ? "_swiglu" : ""}`, code };
  groupSources.set(key, s);
  return s;
}

/**
 * y_j = x·W_jᵀ (+ bias_j) for two or three weights that read the same x (decode's q/k/v and
 * gate/up) in ONE dispatch of the aligned GPU kernel: the parts' workgroups side by side in one
 * grid, so the narrow k and v products (1024 rows for an 8B model: 256 workgroups each, too few to
 * keep an H100's memory busy) run beside q instead of after it, and one launch replaces three.
 * x (M, K) f32 with row stride K, 1 ≤ M ≤ 16; every W (N_j, K) of one dtype. Returns false and
 * records nothing where this does not apply (rows not 16-byte aligned, the CPU form, too many
 * storage buffers for the device): the caller then runs gemv per part. With `norm`, every part
 * reads rmsnorm(x) (GemvNorm: the decode layer's norm and its q/k/v or gate/up products, one
 * dispatch); a norm weight that is not f32 of K elements at a 16-byte offset declines too.
 */
export function gemvGroup(rec: Recorder, x: Tensor, M: number, K: number, parts: readonly GemvPart[], cfg?: GemvConfig, norm?: GemvNorm): boolean {
  return recordGroup(rec, x, M, K, parts, parts.map((p) => p.y), cfg, norm, false);
}

/**
 * act (M, N) = silu(x·W_gateᵀ (+ b)) · (x·W_upᵀ (+ b)) in ONE dispatch of the grouped kernel (decode's
 * gate/up products and SwiGLU; gate and up are never written), with `norm` rmsnorm(x) for x: a decode
 * layer's norm, gate/up and SwiGLU, three dispatches, become one. Same conditions as gemvGroup (and
 * gemvGrouping on), gate and up of one shape and dtype, act f32 with M·N elements or more; returns
 * false and records nothing otherwise.
 */
export function gemvGateUpSwiglu(
  rec: Recorder, x: Tensor, M: number, K: number, gate: Omit<GemvPart, "y">, up: Omit<GemvPart, "y">, act: Tensor, cfg?: GemvConfig, norm?: GemvNorm,
): boolean {
  return gemvGateUpSwigluSupported(rec.rt, x, M, K, gate, up, act, cfg, norm) && recordGroup(rec, x, M, K, [gate, up], [act], cfg, norm, true);
}

/** Whether gemvGateUpSwiglu records with these arguments (for callers that must decide before recording what it reads). */
export function gemvGateUpSwigluSupported(
  rt: GpuRuntime, x: Tensor, M: number, K: number, gate: Omit<GemvPart, "y">, up: Omit<GemvPart, "y">, act: Tensor, cfg?: GemvConfig, norm?: GemvNorm,
): boolean {
  return gate.w.shape.join() === up.w.shape.join() && groupApplies(rt, x, M, K, [gate, up], [act], cfg, norm);
}

/** The conditions of gemvGroup and gemvGateUpSwiglu (recordGroup's arguments). */
function groupApplies(
  rt: GpuRuntime, x: Tensor, M: number, K: number, parts: readonly Omit<GemvPart, "y">[], outs: readonly Tensor[],
  cfg: GemvConfig | undefined, norm: GemvNorm | undefined,
): boolean {
  const n = parts.length;
  if (!gemvGrouping.enabled || n < 2 || n > 3 || M < 1 || M > MAX_M || K <= 0) return false;
  if (norm && (norm.weight.dtype !== "f32" || norm.weight.numel !== K || norm.weight.byteOffset % 16 !== 0)) return false;
  const dtype = parts[0]!.w.dtype;
  const per = dtype === "f32" ? 4 : 8;
  if ((cfg?.form ?? (rt.caps.isSoftware ? "row" : "lanes")) !== "lanes") return false;
  if (x.dtype !== "f32" || K % per !== 0 || K % 4 !== 0 || x.byteOffset % 16 !== 0 || M * K > x.numel) return false;
  if (rt.caps.limits.maxStorageBuffersPerShaderStage < 1 + 2 * n + outs.length + (norm ? 1 : 0)) return false;
  for (const { w, bias } of parts) {
    const N = w.shape[0]!;
    if (w.dtype !== dtype || !["f32", "f16", "bf16"].includes(dtype) || w.shape.length !== 2 || w.shape[1] !== K || w.byteOffset % 16 !== 0) return false;
    if (bias && (bias.dtype !== "f32" || bias.numel !== N)) return false;
  }
  const Ns = parts.map((p) => p.w.shape[0]!);
  if (outs.some((y, j) => y.dtype !== "f32" || y.numel < M * Ns[j]!)) return false;
  // Each y is a read_write binding: two views of one buffer would be aliased writable bindings.
  return new Set(outs.map((y) => y.buffer)).size === outs.length;
}

/** gemvGroup and gemvGateUpSwiglu: `parts` (their y unread) and the output tensors the kernel writes. */
function recordGroup(
  rec: Recorder, x: Tensor, M: number, K: number, parts: readonly Omit<GemvPart, "y">[], outs: readonly Tensor[],
  cfg: GemvConfig | undefined, norm: GemvNorm | undefined, swiglu: boolean,
): boolean {
  const rt = rec.rt;
  if (!groupApplies(rt, x, M, K, parts, outs, cfg, norm)) return false;
  const n = parts.length;
  const dtype = parts[0]!.w.dtype;
  const per = dtype === "f32" ? 4 : 8;
  const Ns = parts.map((p) => p.w.shape[0]!);
  const { MS, S } = mSplit(M);
  const RT = cfg?.rows ?? defaultRows(Ns.reduce((a, b) => a + b, 0), G / S);
  const perWg = (G / S) * RT;
  // swiglu: each workgroup makes one block of columns of both parts; else the parts' blocks side by side
  const blocks = swiglu ? [cdiv(Ns[0]!, perWg)] : Ns.map((N) => cdiv(N, perWg));
  const firsts = blocks.map((_, j) => blocks.slice(0, j).reduce((a, b) => a + b, 0)); // each part's first block
  const groups = blocks.reduce((a, b) => a + b, 0);
  const gridX = Math.min(groups, rt.caps.limits.maxComputeWorkgroupsPerDimension);
  const gridY = cdiv(groups, gridX);
  const flags = parts.reduce((f, p, j) => f | (p.bias ? 1 << j : 0), 0);
  const params = new Params(20)
    .u32(M).u32(0).u32(K).u32(K)
    .u32(K / per).u32(0).u32(dtype === "f32" ? 0 : dtype === "f16" ? 1 : 2).u32(flags)
    .f32(0).u32(K / per).u32(gridX).u32(S)
    .u32(Ns[0]!).u32(Ns[1]!).u32(Ns[2] ?? 0).u32(firsts[1] ?? groups)
    .u32(firsts[2] ?? groups).f32(norm?.eps ?? 0).u32(0).u32(0);
  const ph = rt.placeholder;
  const label = `gemv group ${M}x(${Ns.join(swiglu ? "|" : "+")})x${K} ${dtype} r${RT}${norm ? " +rmsnorm" : ""}${swiglu ? " +swiglu" : ""}`;
  rec.dispatch(label, rt.pipeline(groupSource(MS, RT, n, !!norm, swiglu)), params.buffer,
    [x, ...parts.map((p) => p.w), ...parts.map((p) => p.bias ?? ph), ...outs, ...(norm ? [norm.weight] : [])], [gridX, gridY, 1]);
  return true;
}
