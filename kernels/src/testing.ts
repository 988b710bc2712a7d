/**
 * Helpers for kernel tests: seeded random inputs (never zeros), float64 references and the
 * relative-error metric every kernel is judged by: ‖out − ref‖ / ‖ref‖, NaN never passes.
 */

/** Deterministic PRNG (mulberry32); each test draws fresh inputs from its own seed. */
export function rng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    uniform: next,
    /** Standard normal (Box-Muller). */
    normal(): number {
      let u = next();
      while (u === 0) u = next();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * next());
    },
    int(lo: number, hi: number) {
      return lo + Math.floor(next() * (hi - lo));
    },
  };
}

/** A Float32Array of normal(0, scale) values from a random seed unless one is given. */
export function randn(n: number, scale = 1, seed = (Math.random() * 2 ** 32) >>> 0): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = r.normal() * scale;
  return out;
}

/** ‖out − ref‖ / ‖ref‖ in float64; NaN/Infinity in `out` gives Infinity. */
export function relError(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new Error(`relError: length ${out.length} vs reference ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const o = out[i]!;
    if (!Number.isFinite(o)) return Infinity;
    const d = o - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  if (den === 0) throw new Error("relError: reference is all zeros; use inputs that give a non-zero result");
  return Math.sqrt(num / den);
}

/** float64 C = op(A)·op(B): A (M,K) or (K,M) when transA; B (K,N) or (N,K) when transB. */
export function matmulRef(
  a: ArrayLike<number>, b: ArrayLike<number>, M: number, N: number, K: number,
  transA = false, transB = false,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        s += a[transA ? k * M + m : m * K + k]! * b[transB ? n * K + k : k * N + n]!;
      }
      c[m * N + n] = s;
    }
  }
  return c;
}

/** Rounds f32 values to bf16 (nearest even) and returns the raw u16 bits. */
export function toBf16Bits(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = u[i]!;
    if ((v & 0x7fffffff) > 0x7f800000) out[i] = (v >>> 16) | 0x40; // quiet NaN
    else out[i] = (v + 0x7fff + ((v >>> 16) & 1)) >>> 16;
  }
  return out;
}

export function fromBf16Bits(bits: Uint16Array): Float32Array {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  return new Float32Array(u.buffer);
}

/** Rounds f32 values to f16 and returns the raw u16 bits (never hand a Float16Array to writeBuffer). */
export function toF16Bits(x: Float32Array): Uint16Array {
  const h = Float16Array.from(x);
  return new Uint16Array(h.buffer);
}

export function fromF16Bits(bits: Uint16Array): Float32Array {
  return Float32Array.from(new Float16Array(bits.buffer, bits.byteOffset, bits.length));
}
