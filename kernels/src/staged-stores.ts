/**
 * Stores of 16-byte chunks (8 halves, one vec4<u32> from a global load) into f16 workgroup tiles,
 * shared by the staged GEMM (matmul-tc-staged.ts) and attention's staged tiles (attention-tc.ts).
 * WGSL's subgroup-matrix loads read array<f16>, so a chunk is stored one half at a time.
 *
 * Session 11 measured (H100) the two other store patterns this file once held, and both lost: a
 * per-lane word rotation that leaves no two lanes of a subgroup in one bank (the in-order stores hit
 * 8 of 32 banks) ran the u tiles at 0.905× (geometric mean of 12 GEMMs) and attention unchanged;
 * W stored transposed ([k][n] for x·Wᵀ, conflict-free) at 0.746×. Bank conflicts of these stores
 * are not what bounds the staged kernels (docs/kernels.md, session 11).
 */

/** WGSL statements: the 8 halves of `w` (vec4<u32>) into arr[at …], in order. */
export function chunkStore(arr: string, at: string, w: string): string {
  return `${arr}[${at}] = bitcast<vec2<f16>>(${w}.x).x; ${arr}[${at} + 1u] = bitcast<vec2<f16>>(${w}.x).y; ` +
    `${arr}[${at} + 2u] = bitcast<vec2<f16>>(${w}.y).x; ${arr}[${at} + 3u] = bitcast<vec2<f16>>(${w}.y).y; ` +
    `${arr}[${at} + 4u] = bitcast<vec2<f16>>(${w}.z).x; ${arr}[${at} + 5u] = bitcast<vec2<f16>>(${w}.z).y; ` +
    `${arr}[${at} + 6u] = bitcast<vec2<f16>>(${w}.w).x; ${arr}[${at} + 7u] = bitcast<vec2<f16>>(${w}.w).y;`;
}
