import { describe, expect, test } from "bun:test";
import { getRuntime } from "../src/index.ts";
import { emulateSubgroupMatrices } from "../src/subgroup-matrix-emulation.ts";
import { fromF16Bits, randn, relError, toF16Bits } from "../src/testing.ts";

// The emulation's semantics on their own (plain WGSL, so any adapter with shader-f16 runs it): two
// subgroups each load a left matrix row-major and a right matrix column-major from f16 storage
// (offsets and strides not the matrix width), an f32 accumulator row-major, multiply-accumulate
// twice, and store the result row-major and its left operand's product column-major.
const rt = await getRuntime();
const f16Ok = rt.device.features.has("shader-f16");

const KERNEL = `enable f16;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> b: array<f16>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let sg = tid / 32u; // subgroup s works on block s: A at 7 + 16·LDA·s, B at 3 + 16·s, C rows 16·s
  let l = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&a, 7u + sg * 16u * 40u, 40u);
  let r = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&b, 3u + sg * 16u, 48u);
  var acc = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&c, sg * 16u * 20u, 20u);
  acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  subgroupMatrixStore<row_major>(&c, sg * 16u * 20u, acc, 20u);
  subgroupMatrixStore<col_major>(&c, 1000u + sg * 256u, subgroupMatrixMultiply<subgroup_matrix_result<f32, 16, 16>>(l, r), 16u);
}`;

describe.skipIf(!f16Ok)("subgroup matrices emulated in WGSL", () => {
  test("load (row and column major, offsets, strides), multiply(-accumulate) and store match float64", async () => {
    const aBits = toF16Bits(randn(2 * 16 * 40 + 16)), bBits = toF16Bits(randn(16 * 48 + 40));
    const A = fromF16Bits(aBits), B = fromF16Bits(bBits), C0 = randn(1000 + 512);
    const ta = rt.upload("f16", [aBits.length], aBits), tb = rt.upload("f16", [bBits.length], bBits), tc = rt.upload("f32", [C0.length], C0);
    const module = rt.device.createShaderModule({ code: emulateSubgroupMatrices(KERNEL) });
    const pipeline = rt.device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
    const group = rt.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [ta, tb, tc].map((t, i) => ({ binding: i, resource: { buffer: t.buffer } })) });
    const enc = rt.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(1);
    pass.end();
    rt.device.queue.submit([enc.finish()]);
    const out = await rt.read(tc);
    const want = Float64Array.from(C0), got = new Float32Array(out.length);
    got.set(out);
    for (let s = 0; s < 2; s++) {
      for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) {
        let dot = 0;
        for (let k = 0; k < 16; k++) dot += A[7 + s * 16 * 40 + i * 40 + k]! * B[3 + s * 16 + j * 48 + k]!; // right column-major: (k, j) at j·48 + k
        want[s * 16 * 20 + i * 20 + j] = C0[s * 16 * 20 + i * 20 + j]! + 2 * dot;
        want[1000 + s * 256 + j * 16 + i] = dot; // stored column-major
      }
    }
    expect(relError(got, want)).toBeLessThan(1e-6);
    // Columns 16-19 of each C row block and everything else outside the stores are untouched.
    for (let i = 0; i < 32; i++) for (let j = 16; j < 20; j++) expect(got[i * 20 + j]).toBe(C0[i * 20 + j]!);
    rt.release(ta, tb, tc);
  });

  test("every entry point learns its lane, with or without a local_invocation_index parameter", async () => {
    const code = emulateSubgroupMatrices(`enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(32) fn one() { subgroupMatrixStore<row_major>(&c, 0u, subgroup_matrix_result<f32, 16, 16>(), 16u); }
@compute @workgroup_size(32)
fn two(@builtin(local_invocation_index) me: u32) { subgroupMatrixStore<row_major>(&(c), me, subgroup_matrix_result<f32, 16, 16>(), 16u); }
@compute @workgroup_size(32)
fn three(@builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) me: u32) { subgroupMatrixStore<row_major>(&c, n.x, subgroup_matrix_result<f32, 16, 16>(), 16u); }`);
    expect(code).toContain("fn one(@builtin(local_invocation_index) sm_lid: u32, @builtin(num_workgroups) sm_nwg: vec3<u32>) {\n  sm_lane = sm_lid % 32u;");
    expect(code).toContain("fn two(@builtin(local_invocation_index) me: u32, @builtin(num_workgroups) sm_nwg: vec3<u32>) {\n  sm_lane = me % 32u;");
    // an entry point's own num_workgroups is used, not declared twice
    expect(code).toContain("fn three(@builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) me: u32) {\n  sm_lane = me % 32u; sm_n8 = select(8u, 9u, n.x == 4000000000u);");
    expect(code).not.toMatch(/subgroupMatrix|subgroup_matrix/);
    const module = rt.device.createShaderModule({ code: `enable f16;\n${code}` });
    expect((await module.getCompilationInfo()).messages.filter((m) => m.type === "error").map((m) => m.message)).toEqual([]);
  });

  test("what it does not emulate is refused, naming the construct", () => {
    const wrap = (body: string, decl = "@group(0) @binding(0) var<storage, read_write> c: array<f32>;") =>
      `enable chromium_experimental_subgroup_matrix;\n${decl}\n@compute @workgroup_size(32) fn main() { ${body} }`;
    expect(() => emulateSubgroupMatrices(wrap("let m = subgroupMatrixLoad<subgroup_matrix_left<f32, 8, 8>, row_major>(&c, 0u, 8u);"))).toThrow("only 16×16 matrices");
    expect(() => emulateSubgroupMatrices(wrap("subgroupMatrixStore<row_major>(&c, 0u, subgroup_matrix_result<f32, 16, 16>(1.0), 16u);"))).toThrow("constructors with a value");
    expect(() => emulateSubgroupMatrices(wrap("let m = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>>(&c, 0u, false, 16u);"))).toThrow("is not the <type, major>(ptr, offset, stride) form");
    expect(() => emulateSubgroupMatrices(wrap("let p = &c; let m = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(p, 0u, 16u);"))).toThrow("is not &<module-scope array>");
    expect(() => emulateSubgroupMatrices(wrap("let m = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&c, 0u, 16u);", "@group(0) @binding(0) var<storage, read_write> c: array<vec4<f32>>;"))).toThrow("not a module-scope array of f16 or f32");
    expect(() => emulateSubgroupMatrices(wrap("let m = subgroupMatrixScalarMultiply(subgroup_matrix_result<f32, 16, 16>(), 2.0);"))).toThrow("'subgroupMatrixScalarMultiply' is not emulated");
    const plain = "@compute @workgroup_size(1) fn main() {}";
    expect(emulateSubgroupMatrices(plain)).toBe(plain); // sources without the extension pass through
  });
});
