/**
 * Which tensor-core GEMM tile configuration runs a (M, N, K) product: a table measured by the
 * sweep (`bun apps/cli/src/bench/gemm.ts --write-table kernels/src/gemm-tiles.json`, on the
 * GPU machine), looked up by (N, K, form); shapes the sweep did not cover take the rule below,
 * which follows the same sweep. M does not enter: every training product has M = tokens of a
 * micro-batch (thousands), and decode-sized M (≤ 16) runs on GEMV, not here.
 *
 * Config names: TMxTN_SGMxSGN, then `s` for operands staged through workgroup memory (with `kBK`
 * for the K slice and `d` for double buffering, `gG` grouped raster, `u` the unrolled copy, `l` its two-deep prefetch) or `c`
 * for the global kernel with constant strides. TM×TN result matrices of 16×16 per subgroup, SGM×SGN subgroups per workgroup.
 */
import table from "./gemm-tiles.json";

/** Tile configuration of the tensor-core kernel (matmul-subgroup.ts, matmul-tc-staged.ts). */
export interface TcConfig {
  /** Result matrices per subgroup along M and N. */
  tm: number;
  tn: number;
  /** Subgroups per workgroup along M and N. */
  sgm: number;
  sgn: number;
  /** Stage A and B through workgroup memory (matmul-tc-staged.ts) instead of loading from global memory. */
  staged?: boolean;
  /** Staged only: K slice per stage (16, 32 or 64 halves; default 32). */
  bk?: number;
  /** Staged only: two workgroup-memory buffers, one barrier per slice (default false). */
  double?: boolean;
  /**
   * Leading dimensions as override constants instead of uniforms (name suffix `c`), so the driver
   * sees constant strides: global kernel LDA, LDB, LDC in every subgroup-matrix load and store;
   * staged kernel (after `u`/`l`/`f`, session 17) K, lda and ldb in its copy and K loop, so the
   * loads' offsets and the loop's trip count are constants (jeffbolznv's coopmat GEMM uses
   * specialisation constants the same way). One pipeline per distinct set of values.
   */
  constStrides?: boolean;
  /**
   * Staged only, for measurements (results are wrong): leave one stage of the main loop out to
   * see what it costs: "no-loads" (global → registers), "no-stores" (registers → workgroup
   * memory), "no-products" (the subgroup-matrix loads and products), "no-barriers" (the two
   * workgroup barriers per slice: what the synchronisation itself costs).
   */
  diag?: "no-loads" | "no-stores" | "no-products" | "no-barriers";
  /**
   * Staged only: grouped raster (name suffix `gG`). Consecutive workgroups walk G rows of tiles
   * down one column of tiles before moving right, so a wave of workgroups shares G row panels of A
   * and a few column panels of B in L2 instead of streaming all of B (Triton's GROUP_M order).
   */
  group?: number;
  /**
   * Staged only: the unrolled copy and product stages (name suffix `u`, matmul-tc-staged.ts
   * unrolledCopy): per-thread base addresses plus constants, named registers, one right matrix
   * live at a time.
   */
  unrolled?: boolean;
  /**
   * Unrolled and single-buffered only (name suffix `l` after `u`): a two-deep register prefetch,
   * slice s + 2 loaded while slice s's products run (matmul-tc-staged.ts prefetch2Loop). Session 11,
   * measured by the variants step.
   */
  prefetch2?: boolean;
  /**
   * Unrolled and single-buffered only (name suffix `n` after `u`): no register prefetch; each slice
   * is loaded, stored and multiplied in turn, so the copy's registers are dead during the products
   * (llama.cpp's coopmat copy does this). Fewer registers a thread may let two 256-thread
   * workgroups share an SM, each hiding the other's copy under its products (session 17's research:
   * the pick 4x2_2x4sk64g8u holds ~130 registers, 32 of them the prefetch). Off until measured.
   */
  noPrefetch?: boolean;
  /**
   * Unrolled only (name suffix `f` after `u`/`ul`): workgroups whose tile lies inside M and N, with
   * K a multiple of the slice, load their slices with no bounds test between the loads (one
   * uniform branch per slice picks the guarded copy for edge tiles). Session 17, after NVIDIA's
   * note that a test around each load keeps their compiler from batching the loads
   * (llama.cpp PR #25483) and session 15's SPIR-V showing one per 16-byte load here.
   */
  guardFree?: boolean;
  /**
   * Also add the aux slice A2·op(B2) (matmul-tc-staged.ts auxSliceCode) into the tile: set by
   * matmulTensorCore when the call passes `aux`, never by the table.
   */
  aux?: boolean;
}


export interface GemmTileEntry {
  n: number;
  k: number;
  transB: boolean;
  cfg: string;
  tflops?: number;
}

export interface GemmTileTable {
  /** Where and when the sweep ran (GPU name, date, commit). */
  measured: string;
  entries: GemmTileEntry[];
}

export function parseTcConfig(s: string): TcConfig {
  const m = /^(\d+)x(\d+)_(\d+)x(\d+)(?:(s)(?:k(\d+))?(d?)(?:g(\d+))?(u?)(l?)(n?)(f?)(c?)(?:-(no-loads|no-stores|no-products|no-barriers))?|(c))?$/.exec(s);
  if (!m) throw new Error(`bad tensor-core config '${s}' (want TMxTN_SGMxSGN[s[kBK][d][gG][u[l|n][f]][c] | c], e.g. 4x4_2x4s, 4x4_1x1c, 4x4_2x2sg8, 4x4_2x2sk64g8, 4x4_2x2sk64g8u, 4x2_2x4sdg8u or 4x4_2x2sk64d)`);
  // m[11] no prefetch; m[12] guard-free; m[13] staged c; m[14] diag; m[15] global c
  if (m[12] === "f" && m[9] !== "u") throw new Error(`bad tensor-core config '${s}': guard-free loads (f) are a form of the unrolled copy (u)`);
  if (m[13] === "c" && m[14]) throw new Error(`bad tensor-core config '${s}': constant strides (c) do not combine with diags`);
  if (m[11] === "n" && (m[9] !== "u" || m[10] || m[7] === "d" || m[14])) throw new Error(`bad tensor-core config '${s}': no prefetch (n) is a single-buffered form of the unrolled copy (u), without l or diags`);
  if (m[10] === "l" && (m[9] !== "u" || m[7] === "d" || m[14])) throw new Error(`bad tensor-core config '${s}': the two-deep prefetch (l) is a single-buffered form of the unrolled copy (u), without diags`);
  const staged = m[5] === "s";
  const group = m[8] ? +m[8] : undefined;
  if (group !== undefined && !(group >= 1 && group <= 64)) throw new Error(`bad tensor-core config '${s}': group must be 1..64`);
  return {
    tm: +m[1]!, tn: +m[2]!, sgm: +m[3]!, sgn: +m[4]!, staged,
    ...(staged ? { bk: m[6] ? +m[6] : 32, double: m[7] === "d" } : {}),
    ...(group ? { group } : {}),
    ...(m[9] === "u" ? { unrolled: true } : {}),
    ...(m[10] === "l" ? { prefetch2: true } : {}),
    ...(m[11] === "n" ? { noPrefetch: true } : {}),
    ...(m[12] === "f" ? { guardFree: true } : {}),
    ...(m[14] ? { diag: m[14] as TcConfig["diag"] } : {}),
    ...(m[13] === "c" || m[15] === "c" ? { constStrides: true } : {}),
  };
}

export const tcConfigName = (c: TcConfig) =>
  `${c.tm}x${c.tn}_${c.sgm}x${c.sgn}${c.staged ? `s${(c.bk ?? 32) !== 32 ? `k${c.bk}` : ""}${c.double ? "d" : ""}${c.group ? `g${c.group}` : ""}${c.unrolled ? "u" : ""}${c.prefetch2 ? "l" : ""}${c.noPrefetch ? "n" : ""}${c.guardFree ? "f" : ""}${c.constStrides ? "c" : ""}${c.diag ? `-${c.diag}` : ""}` : c.constStrides ? "c" : ""}`;

/**
 * Session 7's staged forms for small products (the rule for narrow outputs below, thin LoRA
 * products and split-K weight gradients in matmul-subgroup.ts): `TUNELOOM_SMALL_STAGED=0` restores
 * session 6's (global kernel, no split) for A/B measurements.
 */
export const stagedSmallProducts = { enabled: process.env.TUNELOOM_SMALL_STAGED !== "0" };

/**
 * Whether the unrolled copy (TcConfig.unrolled) fits a tile: every staged row must be covered by a
 * whole number of threads (threads a multiple of the 16-byte vectors per row).
 */
export function unrolledCopyFits(cfg: TcConfig, transB: boolean): boolean {
  const threads = 32 * cfg.sgm * cfg.sgn, BK = cfg.bk ?? 32, BN = cfg.sgn * cfg.tn * 16;
  const ok = (cols: number) => cols / 8 <= threads && threads % (cols / 8) === 0;
  return ok(BK) && (transB || ok(BN));
}

/**
 * Session 8's unrolled copy for every staged product the tables, rules and plans pick
 * (`TUNELOOM_GEMM_UNROLLED=1`, set by the device script when its variants step measures the
 * unrolled forms ahead): the one owner of that switch.
 */
export const unrolledStaging = { enabled: process.env.TUNELOOM_GEMM_UNROLLED === "1" };

/**
 * Session 17's guard-free loads (TcConfig.guardFree) for every unrolled staged pick
 * (`TUNELOOM_GEMM_GUARD_FREE=1`, set by the device script's variants step when both picks gain):
 * off until a GPU call measures them.
 */
export const guardFreeLoads = { enabled: process.env.TUNELOOM_GEMM_GUARD_FREE === "1" };

/**
 * Session 17's constant strides (TcConfig.constStrides) for every staged pick
 * (`TUNELOOM_GEMM_CONST_STRIDES=1`, set by the device script's variants step when both picks
 * gain): off until a GPU call measures them.
 */
export const constStrideStaging = { enabled: process.env.TUNELOOM_GEMM_CONST_STRIDES === "1" };

/**
 * Session 17's staged copy without a register prefetch (TcConfig.noPrefetch) for every unrolled,
 * single-buffered pick without `l` (`TUNELOOM_GEMM_NO_PREFETCH=1`, set by the device script's
 * variants step when both picks gain): off until a GPU call measures it.
 */
export const noPrefetchStaging = { enabled: process.env.TUNELOOM_GEMM_NO_PREFETCH === "1" };

/**
 * cfg in the staged form currently chosen: unrolled where unrolledStaging is on and the tile
 * allows, with guard-free loads where guardFreeLoads is on and the copy is unrolled, without the
 * register prefetch where noPrefetchStaging is on (unrolled, single-buffered, no `l`), with constant
 * strides where constStrideStaging is on.
 */
export function stagedForm(cfg: TcConfig, transB: boolean): TcConfig {
  if (!cfg.staged || cfg.diag || !unrolledCopyFits(cfg, transB)) return cfg;
  let form = unrolledStaging.enabled ? { ...cfg, unrolled: true } : cfg;
  if (guardFreeLoads.enabled && form.unrolled) form = { ...form, guardFree: true };
  if (noPrefetchStaging.enabled && form.unrolled && !form.double && !form.prefetch2) form = { ...form, noPrefetch: true };
  return constStrideStaging.enabled ? { ...form, constStrides: true } : form;
}

const measured = new Map<string, TcConfig>();
for (const e of (table as GemmTileTable).entries) measured.set(`${e.n}:${e.k}:${e.transB}`, parseTcConfig(e.cfg));

/** The tile configuration for C (M×N) = A (M×K) · op(B): measured where the sweep covered the shape. */
export function tcConfigFor(M: number, N: number, K: number, transB = true): TcConfig {
  return stagedForm(pickedConfig(N, K, transB), transB);
}

function pickedConfig(N: number, K: number, transB: boolean): TcConfig {
  const hit = measured.get(`${N}:${K}:${transB}`);
  if (hit) return hit;
  // Narrow outputs (k/v projections): the staged 128×128 tile the sweep picked for every narrow
  // shape it measured (the global kernel's subgroup-matrix loads from storage are slow on NVIDIA).
  if (N <= 256) return stagedSmallProducts.enabled ? { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 64, group: 8 } : { tm: 4, tn: 4, sgm: 1, sgn: 1 };
  // Otherwise the configs that won most measured shapes in session 6's sweep (4x4_2x4s, the rule
  // before, won none there; the LM head chunks ran on it at 141 TFLOP/s against ~178 measured for
  // 4x4_2x2sk64g8 on similar shapes): a K slice of 64 for x·Wᵀ, 32 for dy·W, grouped raster.
  // Session 11's sweep (H100, 29 shapes): for dy·W, 4x2_2x4sk64g8u (eight warps of 4×2 matrices on a
  // 128×128 tile, K slices of 64, the unrolled copy) won 28 of 29 shapes (205-229 TFLOP/s on the
  // large ones, 2x4_4x2sk64g8u 200-224); for x·Wᵀ, 4x4_2x2sg8u won 16 (175-191), 4x4_2x2sk64g8 8.
  return transB ? { tm: 4, tn: 4, sgm: 2, sgn: 2, staged: true, bk: 32, group: 8, unrolled: true } : { tm: 4, tn: 2, sgm: 2, sgn: 4, staged: true, bk: 64, group: 8, unrolled: true };
}
