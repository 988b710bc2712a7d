/**
 * Stores of 16-byte chunks (8 halves, one vec4<u32> from a global load) into f16 workgroup tiles,
 * shared by the staged GEMM (matmul-tc-staged.ts) and attention's staged tiles (attention-tc.ts).
 * WGSL's subgroup-matrix loads read array<f16>, so a chunk is stored one half at a time; when every
 * lane writes its chunk in the same order, the 32 lanes of a subgroup hit 8 of the 32 banks (4-way
 * conflicts on every store, storeRotation). The rotated form has each lane start at its own word.
 */

/**
 * Word rotation per lane for bank-conflict-free f16 stores (the staged GEMM's
 * TcConfig.conflictFree, attention's staged tiles). Lane l of a subgroup copies the 16-byte chunk
 * at row l / perRow, halves 8·(l % perRow) of a staged tile with row stride `stride` halves; the
 * chunk's 4 words start in bank 4·g, g = (row·stride/8 + l % perRow) mod 8. Lanes of one g collide on every store when they all write word 0, then 1, …; a lane whose
 * rank among the lanes of its g is ρ writes word (s + ρ) mod 4 at step s instead. Returns ρ for the
 * 32 lanes (the same for every subgroup and pass: both shift all lanes' chunks by one offset when
 * perRow divides 32) and the worst number of lanes per bank per store, rotated and not.
 */
export function storeRotation(perRow: number, stride: number): { rho: number[]; conflicts: number; unrotated: number } {
  if (32 % perRow !== 0 || stride % 8 !== 0) throw new Error(`storeRotation: needs perRow dividing 32 (got ${perRow}) and a stride of whole 16-byte chunks (got ${stride} halves)`);
  const group = (l: number) => (Math.floor(l / perRow) * (stride / 8) + (l % perRow)) % 8;
  const seen = new Array<number>(8).fill(0);
  const rho = Array.from({ length: 32 }, (_, l) => seen[group(l)]!++ % 4);
  // The most lanes that hit one bank in one store step, with the rotation r(l).
  const worst = (r: (l: number) => number) => {
    let most = 1;
    for (let step = 0; step < 4; step++) {
      const banks = new Map<number, number>();
      for (let l = 0; l < 32; l++) {
        const bank = 4 * group(l) + ((step + r(l)) % 4);
        banks.set(bank, (banks.get(bank) ?? 0) + 1);
        most = Math.max(most, banks.get(bank)!);
      }
    }
    return most;
  };
  return { rho, conflicts: worst((l) => rho[l]!), unrotated: worst(() => 0) };
}

/** ρ of storeRotation packed 2 bits per lane: [lanes 0-15, lanes 16-31] as WGSL u32 literals. */
function packedRotation(rho: readonly number[]): [string, string] {
  const word = (from: number) => rho.slice(from, from + 16).reduce((w, r, i) => (w | (r << (2 * i))) >>> 0, 0);
  return [`${word(0)}u`, `${word(16)}u`];
}

/**
 * WGSL: this lane's rotation ρ (storeRotation) for chunks of `perRow` per row at `stride` halves,
 * from the invocation index `lid` (lane = lid mod 32), as an expression.
 */
export function laneRotation(perRow: number, stride: number, lid: string): string {
  const { rho, conflicts } = storeRotation(perRow, stride);
  if (conflicts > 1) throw new Error(`laneRotation: no conflict-free rotation for ${perRow} chunks per row at stride ${stride}`);
  const [lo, hi] = packedRotation(rho);
  return `((select(${lo}, ${hi}, (${lid} & 31u) >= 16u) >> (2u * (${lid} & 15u))) & 3u)`;
}

/**
 * WGSL statements: the 8 halves of `w` (vec4<u32>) into arr[at …]; in order, or with `rot` (a WGSL
 * u32 expression, laneRotation) word (s + rot) mod 4 at step s. The rotated words are picked with
 * three vector selects of swizzles, never by indexing the vector with a lane-dependent index:
 * NVIDIA's compiler takes a dynamic vector index through local memory (session 7's rotated stores,
 * which did so, ran 3-9× slower than the plain ones).
 */
export function chunkStore(arr: string, at: string, w: string, rot?: string): string {
  if (!rot) {
    return `${arr}[${at}] = bitcast<vec2<f16>>(${w}.x).x; ${arr}[${at} + 1u] = bitcast<vec2<f16>>(${w}.x).y; ` +
      `${arr}[${at} + 2u] = bitcast<vec2<f16>>(${w}.y).x; ${arr}[${at} + 3u] = bitcast<vec2<f16>>(${w}.y).y; ` +
      `${arr}[${at} + 4u] = bitcast<vec2<f16>>(${w}.z).x; ${arr}[${at} + 5u] = bitcast<vec2<f16>>(${w}.z).y; ` +
      `${arr}[${at} + 6u] = bitcast<vec2<f16>>(${w}.w).x; ${arr}[${at} + 7u] = bitcast<vec2<f16>>(${w}.w).y;`;
  }
  // v[s] = w[(s + ρ) mod 4]: w, w.yzwx, w.zwxy or w.wxyz.
  const words = ["x", "y", "z", "w"].map((c, s) => `{ let wi = (${s}u + r) & 3u; let h = bitcast<vec2<f16>>(v.${c}); ${arr}[${at} + 2u * wi] = h.x; ${arr}[${at} + 2u * wi + 1u] = h.y; }`);
  return `{ let r = ${rot}; let v = select(select(${w}, ${w}.yzwx, r == 1u), select(${w}.zwxy, ${w}.wxyz, r == 3u), r >= 2u); ${words.join(" ")} }`;
}

/**
 * WGSL statements: a 16-byte chunk of 8 consecutive k of one column n (one row of W, which x·Wᵀ
 * reads (N, K)) stored transposed into a [k][n] tile: half e to arr[col + (kRow + e)·stride].
 * The 32 lanes of a subgroup copy a 16 (n) × 16 (k) block: lane l takes column l mod 16 and the
 * chunk of k rows 8·⌊l/16⌋ … +7. At step j the lower 16 lanes write row kRow + j, the upper 16 row
 * kRow + (j + 4) mod 8 (their chunk rotated by two words with one vector select), so the two rows
 * written per step are 12 or 4 rows apart and fall on the other half of the banks when the stride
 * is ≡ 8 (mod 64) halves (transposedStoreBanks). `upper` is the WGSL bool of the lane's half.
 */
export function transposedChunkStore(arr: string, col: string, kRow: string, stride: number, w: string, upper: string): string {
  const steps = Array.from({ length: 8 }, (_, j) => {
    const word = ["x", "y", "z", "w"][j >> 1], half = j & 1 ? "y" : "x";
    return `${arr}[${col} + (${kRow} + ((${j}u + h4) & 7u)) * ${stride}u] = bitcast<vec2<f16>>(v.${word}).${half};`;
  });
  return `{ let h4 = select(0u, 4u, ${upper}); let v = select(${w}, ${w}.zwxy, ${upper}); ${steps.join(" ")} }`;
}

/**
 * The most distinct 32-bit words that one bank serves in one store step of transposedChunkStore,
 * over its 8 steps, for a [k][n] tile of row stride `stride` halves (1: conflict-free; two lanes
 * writing the two halves of one word share that word).
 */
export function transposedStoreBanks(stride: number): number {
  let most = 1;
  for (let j = 0; j < 8; j++) {
    const words = new Map<number, Set<number>>();
    for (let l = 0; l < 32; l++) {
      const upper = l >= 16, n = l % 16, row = (upper ? 8 : 0) + ((j + (upper ? 4 : 0)) & 7);
      const word = Math.floor((row * stride + n) / 2);
      const set = words.get(word % 32) ?? new Set<number>();
      set.add(word);
      words.set(word % 32, set);
      most = Math.max(most, set.size);
    }
  }
  return most;
}
