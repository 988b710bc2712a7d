import type { DType } from "./dtype.ts";

/**
 * WGSL snippet that declares storage `name` at `binding` holding `dtype` elements and a
 * function `load_<name>(i: u32) -> f32`. 16-bit types are read from packed u32 words, so no
 * kernel needs the shader-f16 feature to consume f16/bf16 weights.
 */
export function wgslLoader(name: string, binding: number, dtype: DType, access: "read" | "read_write" = "read"): string {
  switch (dtype) {
    case "f32":
      return `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<f32>;
fn load_${name}(i: u32) -> f32 { return ${name}[i]; }`;
    case "f16":
      return `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<u32>;
fn load_${name}(i: u32) -> f32 { return unpack2x16float(${name}[i >> 1u])[i & 1u]; }`;
    case "bf16":
      return `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<u32>;
fn load_${name}(i: u32) -> f32 {
  let w = ${name}[i >> 1u];
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}`;
    default:
      throw new Error(`no float loader for dtype ${dtype}`);
  }
}
