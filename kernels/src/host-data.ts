/**
 * Host-side data for kernels, used by production code (benchmarks, sampling draws, the tiny
 * model's weights) and by tests alike: the mulberry32 PRNG, normal samples over it, the raw
 * u16 bit patterns of f16/bf16 values that GPU buffers hold, and the relative error every kernel
 * result is judged by.
 */

/** mulberry32: a tiny seeded 32-bit PRNG; uniform floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Seeded draws over mulberry32: uniform, standard normal (Box-Muller) and integers in [lo, hi). */
export function rng(seed: number) {
  const next = mulberry32(seed);
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
