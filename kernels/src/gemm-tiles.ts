/**
 * Which tensor-core GEMM tile configuration runs a (M, N, K) product: a table measured by the
 * sweep (`bun apps/cli/src/bench/gemm.ts --write-table kernels/src/gemm-tiles.json`, on the
 * GPU machine), looked up by (N, K, form); shapes the sweep did not cover take the rule below,
 * which follows the same sweep. M does not enter: every training product has M = tokens of a
 * micro-batch (thousands), and decode-sized M (≤ 16) runs on GEMV, not here.
 *
 * Config names: TMxTN_SGMxSGN, then `s` for operands staged through workgroup memory (with `kBK`
 * for the K slice and `d` for double buffering, `gG` grouped raster, `u` the unrolled copy, then `w` conflict-free stores, `i` the
 * interleaved pipeline, `t` W staged transposed) or `c` for the global kernel with constant
 * strides. TM×TN result matrices of 16×16 per subgroup, SGM×SGN subgroups per workgroup.
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
   * Global only: leading dimensions as override constants (LDA, LDB, LDC) instead of uniforms,
   * so the driver sees constant strides in every subgroup-matrix load and store (one pipeline
   * per distinct stride triple).
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
   * Staged, double-buffered and unrolled only (name suffix `i` after `u`): a two-slice-deep
   * pipeline. Slice s + 2 is loaded into registers while slice s's products run, and slice s + 1
   * (loaded one slice earlier, so its latency is already hidden) is stored into the other buffer in
   * chunks between the products' 16-deep steps; the loop is unrolled by two so both buffers'
   * offsets are constants. One barrier per slice. (Session 10, measured by the variants step.)
   */
  interleaved?: boolean;
  /**
   * Unrolled only (name suffix `w` after `u`): bank-conflict-free workgroup stores. WGSL stores the
   * f16 tiles one half at a time, and with each thread writing its 16-byte chunk in order the 32
   * lanes of a subgroup land in 8 banks (4-way conflicts on every store). Here each lane starts at
   * a different word of its chunk (a rotation by its rank among the lanes that share banks), so
   * every store instruction touches 32 distinct banks. (Session 10, measured by the variants step.)
   */
  conflictFree?: boolean;
  /**
   * Unrolled only (name suffix `t` after `u`, `w`, `i`), x·Wᵀ (transB) only: W's slice is staged
   * transposed, [k][n] like dy·W's, so the products read their right matrices row-major as dy·W's
   * do (session 9: the 8-warp u tile ran dy·W at 203-221 TFLOP/s and x·Wᵀ at 160-168, the staged
   * layout being the one difference). Each subgroup copies 16×16 blocks, storing every chunk of 8 k
   * down a column (staged-stores.ts transposedChunkStore, conflict-free). A no-op for dy·W.
   * (Session 11, measured by the variants step.)
   */
  transposeB?: boolean;
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
  const m = /^(\d+)x(\d+)_(\d+)x(\d+)(?:(s)(?:k(\d+))?(d?)(?:g(\d+))?(u?)(w?)(i?)(t?)(?:-(no-loads|no-stores|no-products|no-barriers))?|(c))?$/.exec(s);
  if (!m) throw new Error(`bad tensor-core config '${s}' (want TMxTN_SGMxSGN[s[kBK][d][gG][u[w][i][t]] | c], e.g. 4x4_2x4s, 4x4_1x1c, 4x4_2x2sg8, 4x4_2x2sk64g8, 4x4_2x2sk64g8u, 2x4_4x2sdg8ui or 4x4_2x2sk64d)`);
  if (m[11] === "i" && !(m[7] === "d" && m[9] === "u")) throw new Error(`bad tensor-core config '${s}': the interleaved pipeline (i) needs double buffering (d) and the unrolled copy (u)`);
  if (m[12] === "t" && m[9] !== "u") throw new Error(`bad tensor-core config '${s}': the transposed staging of W (t) is a form of the unrolled copy (u)`);
  if (m[10] === "w" && m[9] !== "u") throw new Error(`bad tensor-core config '${s}': conflict-free stores (w) are a form of the unrolled copy (u)`);
  const staged = m[5] === "s";
  const group = m[8] ? +m[8] : undefined;
  if (group !== undefined && !(group >= 1 && group <= 64)) throw new Error(`bad tensor-core config '${s}': group must be 1..64`);
  return {
    tm: +m[1]!, tn: +m[2]!, sgm: +m[3]!, sgn: +m[4]!, staged,
    ...(staged ? { bk: m[6] ? +m[6] : 32, double: m[7] === "d" } : {}),
    ...(group ? { group } : {}),
    ...(m[9] === "u" ? { unrolled: true } : {}),
    ...(m[10] === "w" ? { conflictFree: true } : {}),
    ...(m[11] === "i" ? { interleaved: true } : {}),
    ...(m[12] === "t" ? { transposeB: true } : {}),
    ...(m[13] ? { diag: m[13] as TcConfig["diag"] } : {}),
    ...(m[14] === "c" ? { constStrides: true } : {}),
  };
}

export const tcConfigName = (c: TcConfig) =>
  `${c.tm}x${c.tn}_${c.sgm}x${c.sgn}${c.staged ? `s${(c.bk ?? 32) !== 32 ? `k${c.bk}` : ""}${c.double ? "d" : ""}${c.group ? `g${c.group}` : ""}${c.unrolled ? "u" : ""}${c.conflictFree ? "w" : ""}${c.interleaved ? "i" : ""}${c.transposeB ? "t" : ""}${c.diag ? `-${c.diag}` : ""}` : c.constStrides ? "c" : ""}`;

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
 * Session 10's conflict-free stores for every staged product (`TUNELOOM_GEMM_CONFLICT_FREE=1`, set
 * by the device script when its variants step measures the `w` tiles ahead of the `u` ones): every
 * staged pick unrolled with conflict-free stores where the tile allows. The one owner of that switch.
 */
export const conflictFreeStaging = { enabled: process.env.TUNELOOM_GEMM_CONFLICT_FREE === "1" };

/**
 * Session 11's transposed staging of W for every staged x·Wᵀ pick (`TUNELOOM_GEMM_TRANSPOSED_B=1`,
 * set by the device script when its variants step measures the `t` tiles ahead of their `u` forms
 * on x·Wᵀ): unrolled with W staged [k][n] where the tile allows. The one owner of that switch.
 */
export const transposedBStaging = { enabled: process.env.TUNELOOM_GEMM_TRANSPOSED_B === "1" };

/** Whether the tile's staged rows allow conflict-free stores (staged-stores.ts: chunks per row dividing 32). */
function conflictFreeFits(cfg: TcConfig, transB: boolean): boolean {
  const BK = cfg.bk ?? 32, BN = cfg.sgn * cfg.tn * 16;
  return 32 % (BK / 8) === 0 && (transB || 32 % (BN / 8) === 0);
}

/**
 * cfg in the staged form currently chosen: unrolled where unrolledStaging is on, unrolled with
 * conflict-free stores where conflictFreeStaging is, x·Wᵀ unrolled with W staged transposed where
 * transposedBStaging is; only where the tile allows.
 */
export function stagedForm(cfg: TcConfig, transB: boolean): TcConfig {
  if (!cfg.staged || cfg.diag || !unrolledCopyFits(cfg, transB)) return cfg;
  const t = transB && transposedBStaging.enabled ? { unrolled: true, transposeB: true } : {};
  if (conflictFreeStaging.enabled && conflictFreeFits(cfg, transB)) return { ...cfg, unrolled: true, conflictFree: true, ...t };
  return unrolledStaging.enabled ? { ...cfg, unrolled: true, ...t } : { ...cfg, ...t };
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
