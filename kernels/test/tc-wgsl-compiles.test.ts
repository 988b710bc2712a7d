import { describe, expect, test } from "bun:test";
import { getRuntime, parseTcConfig, unrolledCopyFits } from "../src/index.ts";
import { attentionTcSource } from "../src/attention-tc.ts";
import { stagedSource } from "../src/matmul-tc-staged.ts";
import { emulateSubgroupMatrices } from "../src/subgroup-matrix-emulation.ts";

// The tensor-core kernels need subgroup matrices, which lavapipe lacks, so their WGSL is otherwise
// first compiled on a GPU call. Here each generated source is compiled with the subgroup-matrix
// types and builtins emulated in plain WGSL (subgroup-matrix-emulation.ts), so everything else
// (indexing, types, scopes, the copy and store code) is checked by Dawn's compiler on every CI
// run, tiles too big for lavapipe's workgroup memory included (a module is compiled, no pipeline made).
const rt = await getRuntime();
const f16Ok = rt.device.features.has("shader-f16");

async function compiles(code: string): Promise<string[]> {
  // In an error scope, so a source that fails stays this test's error, not the device's.
  rt.device.pushErrorScope("validation");
  const module = rt.device.createShaderModule({ code: emulateSubgroupMatrices(code) });
  const info = await module.getCompilationInfo();
  const scoped = await rt.device.popErrorScope();
  const errors = info.messages.filter((m) => m.type === "error").map((m) => `${m.lineNum}: ${m.message}`);
  return errors.length || !scoped ? errors : [scoped.message];
}

describe.skipIf(!f16Ok)("tensor-core WGSL compiles (subgroup matrices emulated)", () => {
  const staged = ["4x4_2x2sk64g8", "4x4_2x2sg8", "4x4_2x2sdg8", "4x4_2x2sk64g8u", "4x4_2x2sg8u", "4x4_2x2sdg8u", "4x4_2x4sk16g8u",
    "4x4_4x2sg8u", "2x4_4x2sk64g8u", "2x4_4x1sk64u", "1x4_1x4sk64u", "4x4_2x2sk64g8u-no-loads", "4x4_2x2sk64g8u-no-stores", "4x4_2x2sk64g8u-no-products", "2x4_4x2sk64g8u-no-barriers",
    // the device script's variants and the sweep's picks (session 11)
    "2x4_4x2sdg8u", "4x2_2x4sk64g8u", "4x2_2x4sg8u", "2x2_4x4sk64g8u", "2x2_4x4sg8u", "2x4_4x2sk64g16u", "2x4_4x2sk64g8u-no-stores",
    "4x4_2x2sg8ul", "4x2_2x4sk64g8ul", "4x2_2x4sg8ul", "2x4_4x2sk16g8ul",
    // guard-free loads in interior tiles (session 17)
    "4x2_2x4sk64g8uf", "4x4_2x2sg8uf", "4x4_4x2sg8uf", "4x4_2x2sg8ulf", "4x2_1x4sk64g8u", "4x2_2x4sk64g8ufc", "4x4_2x2sk64g8c", "4x2_2x4sk64g8un", "4x4_2x2sg8unfc"];
  for (const name of staged) {
    test(`staged ${name}`, async () => {
      for (const transB of [true, false]) {
        const cfg = parseTcConfig(name);
        if (cfg.unrolled && !unrolledCopyFits(cfg, transB)) continue;
        for (const aux of cfg.diag ? [false] : [false, true]) {
          expect(await compiles(stagedSource(transB, { ...cfg, aux }).code)).toEqual([]);
        }
      }
    });
  }
  for (const pass of ["forward", "dq", "dkv"] as const) {
    for (const hd of [64, 128]) {
      test(`attention ${pass} hd=${hd}`, async () => {
        for (const staged of [false, true]) {
          if (staged && hd === 128) continue; // no staged form fits hd 128
          for (const fullTiles of [false, true]) {
            expect(await compiles(attentionTcSource(pass, hd, { padded: true, staged, perHead: pass === "dkv", fullTiles }).code)).toEqual([]);
            // the forward's scores kept in registers (session 17)
            if (pass === "forward") expect(await compiles(attentionTcSource(pass, hd, { padded: true, staged, fullTiles, regScores: true }).code)).toEqual([]);
          }
          // dout staged in the dk/dv pass too (the default since session 14)
          if (staged && pass === "dkv") expect(await compiles(attentionTcSource(pass, hd, { padded: true, staged, perHead: true, fullTiles: true, doutStaged: true }).code)).toEqual([]);
        }
        // the unstaged dk/dv pass with P and dS in one tile (session 17), per head and not
        if (pass === "dkv") for (const perHead of [false, true]) expect(await compiles(attentionTcSource(pass, hd, { padded: true, perHead, fullTiles: true, sharePdS: true }).code)).toEqual([]);
        // the two-sweep forward (its sweep 2 has its own mask test)
        if (pass === "forward") expect(await compiles(attentionTcSource(pass, hd, { padded: true, oneSweep: false, fullTiles: true }).code)).toEqual([]);
      });
    }
  }
  test("a broken source fails (the check is not vacuous)", async () => {
    const code = stagedSource(true, parseTcConfig("4x4_2x2sk64g8u")).code.replace("let aStep", "let aStep = undefinedName; let aStep2");
    expect((await compiles(code)).length).toBeGreaterThan(0);
  });
});
