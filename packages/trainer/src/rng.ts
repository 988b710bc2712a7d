/**
 * A seedable PRNG whose whole state is four uint32 words (state()/fromState() save and restore
 * it). Training needs no saved stream: every draw (LoRA init, the shuffle of each epoch, the eval
 * split) comes from a stream derived from the seed and its purpose, so resume recomputes it.
 *
 * Algorithm: xoshiro128** (Blackman & Vigna), seeded through splitmix32 so that nearby seeds
 * give unrelated streams. Independent streams for different purposes (LoRA init, the shuffle
 * of epoch 3) come from `Rng.derive(seed, "shuffle", 3)`, which hashes the labels
 * into the seed: changing how many numbers one purpose draws never shifts another's stream.
 */

export interface RngState {
  algorithm: "xoshiro128**";
  /** The four state words, as unsigned 32-bit integers. */
  state: [number, number, number, number];
}

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** FNV-1a over the UTF-8 text of the labels; folds a 53-bit seed in both halves. */
function hashSeed(seed: number, labels: readonly (string | number)[]): number {
  if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
  let h = 0x811c9dc5;
  const mix = (byte: number) => {
    h ^= byte & 0xff;
    h = Math.imul(h, 0x01000193) >>> 0;
  };
  const hi = Math.floor(Math.abs(seed) / 2 ** 32);
  const lo = Math.abs(seed) >>> 0;
  for (const word of [lo, hi, seed < 0 ? 1 : 0]) for (let i = 0; i < 4; i++) mix(word >>> (8 * i));
  for (const label of labels) {
    for (const byte of new TextEncoder().encode(`\u0000${typeof label}:${label}`)) mix(byte);
  }
  return h >>> 0;
}

const rotl = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** A generator seeded from any safe integer. */
  constructor(seed: number) {
    const next = splitmix32(hashSeed(seed, []));
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the all-zero state is a fixed point
  }

  /** An independent stream for one purpose: `Rng.derive(seed, "shuffle", epoch)`. */
  static derive(seed: number, ...labels: (string | number)[]): Rng {
    return new Rng(hashSeed(seed, labels));
  }

  static fromState(state: RngState): Rng {
    const rng = new Rng(0);
    rng.setState(state);
    return rng;
  }

  state(): RngState {
    return { algorithm: "xoshiro128**", state: [this.s0, this.s1, this.s2, this.s3] };
  }

  setState(state: RngState): void {
    const words = state?.state;
    if (
      state?.algorithm !== "xoshiro128**" ||
      !Array.isArray(words) ||
      words.length !== 4 ||
      !words.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffffffff) ||
      words.every((w) => w === 0)
    ) {
      throw new Error(`invalid RNG state ${JSON.stringify(state)}: expected {algorithm:"xoshiro128**", state:[4 non-zero uint32]}`);
    }
    [this.s0, this.s1, this.s2, this.s3] = words;
  }

  /** Next uniform uint32. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform in [low, high). */
  uniform(low: number, high: number): number {
    return low + (high - low) * this.nextFloat();
  }

  /** Uniform integer in [0, n), without modulo bias. */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 2 ** 32) throw new Error(`nextInt: n must be an integer in [1, 2^32], got ${n}`);
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return x % n;
    }
  }

  /** Standard normal (Box–Muller; no cached spare, so the state alone says what comes next). */
  normal(): number {
    const u1 = 1 - this.nextFloat(); // (0, 1]
    const u2 = this.nextFloat();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** Fisher–Yates shuffle in place. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      const tmp = items[i]!;
      items[i] = items[j]!;
      items[j] = tmp;
    }
    return items;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): number[] {
    return this.shuffle(Array.from({ length: n }, (_, i) => i));
  }

  /** Fills `out` with uniform values in [low, high). */
  fillUniform(out: Float32Array, low: number, high: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.uniform(low, high);
    return out;
  }
}
