import { describe, expect, test } from "bun:test";
import { getRuntime, parseTcConfig, unrolledCopyFits } from "../src/index.ts";
import { prefetch2Loop, stagedGeometry, TC_PREAMBLE, unrolledCopy } from "../src/matmul-tc-staged.ts";
import { Params } from "../src/params.ts";
import { fromF16Bits, randn, toF16Bits } from "../src/testing.ts";

// The unrolled staged copy (TcConfig.unrolled) is plain WGSL: global 16-byte loads into registers
// and f16 stores into workgroup memory. Its products need subgroup matrices (GPUs only), but its
// copy runs anywhere: here the generated copy code fills As/Bs for one K slice of every tile, and
// a harness dumps them, to compare with where each element of A and B belongs (edges zeroed).
const rt = await getRuntime();
const f16Ok = rt.device.features.has("shader-f16");

/** Params of the tensor-core kernels (TC_PREAMBLE's struct and binding, without its enables). */
const PARAMS = TC_PREAMBLE.slice(TC_PREAMBLE.indexOf("struct Params"));

/** A harness's main() up to the kernel's copy code: the tile origin and operand bases the copy reads. */
function mainOpening(g: ReturnType<typeof stagedGeometry>): string {
  return `@compute @workgroup_size(${g.threads})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row0 = wg.y * ${g.BM}u;
  let col0 = wg.x * ${g.BN}u;
  let aBase = p.offA;
  let bBase = p.offB;`;
}

function harness(transB: boolean, name: string) {
  const cfg = parseTcConfig(name);
  const g = stagedGeometry(transB, cfg);
  const copy = unrolledCopy(transB, g);
  const aHalves = g.BM * g.AS, bHalves = transB ? g.BN * g.BS : g.BK * g.BS;
  const code = `enable f16;
${PARAMS}
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> slice: array<u32>; // [k0 − BK, first slice?]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
var<workgroup> As: array<f16, ${aHalves}>;
var<workgroup> Bs: array<f16, ${bHalves}>;
${mainOpening(g)}
${copy.setup}
  let k0 = slice[0];
  if (slice[1] == 1u) {
${copy.first}
  } else {
${copy.next}
  }
  let aOff = 0u; let bOff = 0u;
${copy.store("aOff", "bOff")}
  workgroupBarrier();
  let base = (wg.y * nwg.x + wg.x) * ${aHalves + bHalves}u;
  for (var i = tid; i < ${aHalves}u; i += ${g.threads}u) { out[base + i] = f32(As[i]); }
  for (var i = tid; i < ${bHalves}u; i += ${g.threads}u) { out[base + ${aHalves}u + i] = f32(Bs[i]); }
}`;
  return { g, code, aHalves, bHalves };
}

describe.skipIf(!f16Ok)("unrolled staged copy: every tile's slice lands where the products read it", () => {
  // Tiles over the edges of M and N, K tails inside a slice, row strides and offsets that are not
  // the matrix widths; a first slice (the prologue's loads) and a later one (the loop's).
  const cases: [string, number, number, number][] = [
    ["4x4_2x2sk64g8u", 144, 272, 96], // 36 KB: GPUs only (lavapipe allows 32 KB)
    ["4x4_2x1sk64u", 144, 80, 96],
    ["4x4_2x2sg8u", 272, 144, 80],
    ["4x4_2x4sk16g8u", 144, 272, 48],
    ["2x4_4x2sg8u", 144, 160, 80],
    ["1x4_1x4sk16u", 48, 272, 48],
    ["1x4_1x4sk64u", 48, 272, 80],
    ["2x4_4x1sk64u", 272, 64, 96],
    ["4x2_2x4sk64g8u", 144, 272, 80], // the sweep's dy·W pick (session 11): 36 KB, GPUs only
    ["4x2_2x2sg8u", 144, 80, 80],
    ["4x2_4x4sg8u", 272, 144, 80], // 16 subgroups, 256×128 (session 12)
    ["2x4_4x4sg8u", 144, 272, 80], // 16 subgroups, 128×256 (session 12)
    ["4x2_4x4sk16g8u", 272, 144, 48], // 16 subgroups, 16-deep slices: fewer 16-byte vectors than threads (session 12)
    // Guard-free loads in interior tiles (session 17): K whole slices, so the tiles inside M and N
    // take them and the edge tiles the guarded copy; partial passes; K with a tail (all guarded).
    ["4x4_2x2sg8uf", 272, 144, 96],
    ["4x2_2x2sk64g8uf", 144, 272, 128],
    ["4x2_4x4sk16g8uf", 272, 144, 48],
    ["4x4_2x2sg8ulf", 272, 144, 80],
  ];
  for (const [name, M, N, K] of cases) {
    for (const transB of [true, false]) {
      const cfg = parseTcConfig(name);
      if (!unrolledCopyFits(cfg, transB)) continue;
      const g = stagedGeometry(transB, cfg);
      const bytes = 2 * (g.BM * g.AS + (transB ? g.BN * g.BS : g.BK * g.BS));
      if (bytes > rt.caps.limits.maxComputeWorkgroupStorageSize) continue;
      test(`${name} transB=${transB} M=${M} N=${N} K=${K}`, async () => {
        const { code, aHalves, bHalves } = harness(transB, name);
        const lda = K + 8, ldb = (transB ? K : N) + 8, offA = 16, offB = 8;
        const aRows = M, bRows = transB ? N : K;
        const aBits = toF16Bits(randn(offA + aRows * lda)), bBits = toF16Bits(randn(offB + bRows * ldb + 8));
        const a = fromF16Bits(aBits), b = fromF16Bits(bBits);
        const pad8 = (bits: Uint16Array) => { const o = new Uint16Array(Math.ceil(bits.length / 8) * 8); o.set(bits); return o; };
        const ta = rt.upload("f16", [pad8(aBits).length], pad8(aBits)), tb = rt.upload("f16", [pad8(bBits).length], pad8(bBits));
        const gx = Math.ceil(N / g.BN), gy = Math.ceil(M / g.BM);
        const pipeline = rt.pipeline({ name: `test_unrolled_copy_${name}_${transB}`, code }, {});
        for (const k0 of [0, g.BK]) {
          if (k0 >= K) continue;
          const slice = rt.upload("u32", [2], Uint32Array.from([k0 - g.BK >>> 0, k0 === 0 ? 1 : 0]));
          const out = rt.empty("f32", [gx * gy * (aHalves + bHalves)]);
          const params = new Params(16).u32(M).u32(N).u32(K).u32(lda).u32(ldb).u32(N).u32(0).u32(0)
            .u32(0).u32(offA).u32(offB).u32(0).u32(0).u32(0).u32(0).u32(0);
          const rec = rt.recorder();
          rec.dispatch("unrolled copy", pipeline, params.buffer, [ta, tb, slice, out], [gx, gy, 1]);
          rec.submit();
          const got = await rt.read(out);
          rec.release();
          let checked = 0;
          for (let ty = 0; ty < gy; ty++) for (let tx = 0; tx < gx; tx++) {
            const base = (ty * gx + tx) * (aHalves + bHalves), row0 = ty * g.BM, col0 = tx * g.BN;
            for (let r = 0; r < g.BM; r++) for (let kk = 0; kk < g.AS; kk++) {
              const k = k0 + kk, inside = kk < g.BK && row0 + r < M && k < K;
              const want = inside ? a[offA + (row0 + r) * lda + k]! : 0;
              checked++;
              if (got[base + r * g.AS + kk] !== want) throw new Error(`A tile (${ty}, ${tx}) k0=${k0}: As[${r}][${kk}] = ${got[base + r * g.AS + kk]}, want ${want}`);
            }
            const bRowsStaged = transB ? g.BN : g.BK;
            for (let r = 0; r < bRowsStaged; r++) for (let c = 0; c < g.BS; c++) {
              // transB: staged [n][k] from B (N, K); else [k][n] from B (K, N).
              const [n, kk] = transB ? [r, c] : [c, r];
              const inside = (transB ? c < g.BK : c < g.BN) && col0 + n < N && k0 + kk < K;
              const want = inside ? b[offB + (transB ? (col0 + n) * ldb + k0 + kk : (k0 + kk) * ldb + col0 + n)]! : 0;
              checked++;
              if (got[base + aHalves + r * g.BS + c] !== want) throw new Error(`B tile (${ty}, ${tx}) k0=${k0}: Bs[${r}][${c}] = ${got[base + aHalves + r * g.BS + c]}, want ${want}`);
            }
          }
          expect(checked).toBe(got.length); // every staged half of every tile compared
          rt.release(slice, out);
        }
        rt.release(ta, tb);
      }, 30_000); // a new pipeline compiles in seconds on lavapipe
    }
  }
});

// The two-deep prefetch (TcConfig.prefetch2) on lavapipe: its loop (prefetch2Loop, the kernel's
// own) with the products replaced by a checksum of the staged buffer, weighted by the slice. If a
// slice were stored from the wrong register set, stored twice or skipped, or a load went past the
// slice it belongs to, the weighted sums differ. Small integers keep every sum exact.
describe.skipIf(!f16Ok)("two-deep prefetch: every slice's products read that slice, fully stored", () => {
  const cases: [string, number, number, number][] = [
    ["2x2_2x2sg8ul", 144, 80, 80], // 3 slices (the last loads nothing)
    ["2x2_2x2sg8ul", 80, 144, 16], // less than one slice: the second set is never loaded
    ["2x2_2x2sg8ul", 80, 144, 64], // exactly two slices
    ["1x2_2x2sk64g8ul", 80, 144, 208], // 64-deep slices, a K tail
    ["4x2_4x4sg8ul", 272, 144, 80], // 16 subgroups (session 12)
  ];
  for (const [name, M, N, K] of cases) {
    for (const transB of [true, false]) {
      test(`${name} transB=${transB} M=${M} N=${N} K=${K}`, async () => {
        const cfg = parseTcConfig(name);
        const g = stagedGeometry(transB, cfg);
        const aHalves = g.BM * g.AS, bHalves = transB ? g.BN * g.BS : g.BK * g.BS;
        const copy = unrolledCopy(transB, g);
        const products = `    { let wgt = f32(k0 / ${g.BK}u + 1u);
      for (var e = tid; e < ${aHalves}u; e += ${g.threads}u) { chk += wgt * f32(As[aOff + e]); }
      for (var e = tid; e < ${bHalves}u; e += ${g.threads}u) { chk += 0.5 * wgt * f32(Bs[bOff + e]); } }`;
        const code = `enable f16;
${PARAMS}
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
var<workgroup> As: array<f16, ${aHalves}>;
var<workgroup> Bs: array<f16, ${bHalves}>;
${mainOpening(g)}
  var chk = 0.0;
${prefetch2Loop({ ...copy, products }, g.BK)}
  out[(wg.y * nwg.x + wg.x) * ${g.threads}u + tid] = chk;
}`;
        const lda = K + 8, ldb = (transB ? K : N) + 8, offA = 8, offB = 16;
        const ints = (n: number) => Float32Array.from({ length: n }, () => Math.floor(Math.random() * 7) - 3);
        const a = ints(offA + M * lda), b = ints(offB + (transB ? N : K) * ldb + 8);
        const pad8 = (bits: Uint16Array) => { const o = new Uint16Array(Math.ceil(bits.length / 8) * 8); o.set(bits); return o; };
        const ta = rt.upload("f16", [pad8(toF16Bits(a)).length], pad8(toF16Bits(a))), tb = rt.upload("f16", [pad8(toF16Bits(b)).length], pad8(toF16Bits(b)));
        const gx = Math.ceil(N / g.BN), gy = Math.ceil(M / g.BM);
        const out = rt.empty("f32", [gx * gy * g.threads]);
        const params = new Params(16).u32(M).u32(N).u32(K).u32(lda).u32(ldb).u32(N).u32(0).u32(0)
          .u32(0).u32(offA).u32(offB).u32(0).u32(0).u32(0).u32(0).u32(0);
        const rec = rt.recorder();
        rec.dispatch("prefetch2 checksum", rt.pipeline({ name: `test_prefetch2_${name}_${transB}`, code }, {}), params.buffer, [ta, tb, out], [gx, gy, 1]);
        rec.submit();
        const got = await rt.read(out);
        rec.release();
        rt.release(ta, tb, out);
        for (let ty = 0; ty < gy; ty++) for (let tx = 0; tx < gx; tx++) {
          const row0 = ty * g.BM, col0 = tx * g.BN;
          let want = 0;
          for (let s = 0; s * g.BK < K; s++) {
            let sa = 0, sb = 0;
            for (let r = 0; r < g.BM; r++) for (let kk = 0; kk < g.BK; kk++) {
              const k = s * g.BK + kk;
              if (row0 + r < M && k < K) sa += a[offA + (row0 + r) * lda + k]!;
            }
            for (let n = 0; n < g.BN; n++) for (let kk = 0; kk < g.BK; kk++) {
              const k = s * g.BK + kk;
              if (col0 + n < N && k < K) sb += b[offB + (transB ? (col0 + n) * ldb + k : k * ldb + col0 + n)]!;
            }
            want += (s + 1) * (sa + 0.5 * sb);
          }
          let sum = 0;
          for (let t = 0; t < g.threads; t++) sum += got[(ty * gx + tx) * g.threads + t]!;
          if (sum !== want) throw new Error(`tile (${ty}, ${tx}): checksum ${sum}, want ${want}`);
        }
      }, 30_000);
    }
  }
});
