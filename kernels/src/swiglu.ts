/**
 * SwiGLU of the Llama-family MLP: h = silu(gate) · up, where gate = x·W_gateᵀ and
 * up = x·W_upᵀ are (T, I) f32 and h feeds down_proj. Backward recomputes silu from the saved
 * gate and up, so the forward stores nothing extra.
 */
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import { convertTensor } from "./convert.ts";
import swigluWgsl from "./swiglu.wgsl" with { type: "text" };
import f16BitsWgsl from "./f16-bits.wgsl" with { type: "text" };

const source: KernelSource = { name: "swiglu", code: `${swigluWgsl}\n${f16BitsWgsl}` };

/** A 16-bit copy's tensor: f16 with the f32 output's element count. */
function check16(kernel: string, name: string, t: Tensor, like: Tensor) {
  expectTensor(kernel, name, t, "f16");
  if (t.numel !== like.numel) throw new Error(`${kernel}: ${name} has ${t.numel} elements, want ${like.numel}`);
}

function check(kernel: string, named: [string, Tensor][]) {
  const [firstName, first] = named[0]!;
  for (const [name, t] of named) {
    expectTensor(kernel, name, t, "f32");
    if (t.numel !== first.numel) throw new Error(`${kernel}: ${name} has ${t.numel} elements, ${firstName} has ${first.numel}`);
  }
}

/**
 * h (T, I) = silu(gate) · up, and with `h16` also h rounded to f16 (the bits of toF16(h)) in the
 * same pass, for a tensor-core product that reads it.
 */
export function swigluForward(rec: Recorder, gate: Tensor, up: Tensor, h: Tensor, h16?: Tensor) {
  check("swigluForward", [["gate", gate], ["up", up], ["h", h]]);
  if (h16) check16("swigluForward", "h16", h16, h);
  const n = gate.numel, v = n % 4 === 0 ? 4 : 1; // four per thread where n allows
  if (h16 && v === 4) {
    rec.dispatch(`swigluForward ${n} +f16`, rec.rt.pipeline(source, {}, "swiglu_forward4_f16"),
      new Params(4).u32(n).f32(0).u32(0).u32(0).buffer, [gate, up, h, h16], flatGrid(n / v));
    return;
  }
  rec.dispatch(`swigluForward ${n}`, rec.rt.pipeline(source, {}, v === 4 ? "swiglu_forward4" : "swiglu_forward"),
    new Params(4).u32(n).f32(0).u32(0).u32(0).buffer, [gate, up, h], flatGrid(n / v));
  if (h16) convertTensor(rec, h, h16);
}

/**
 * dgate, dup (T, I) from dh (T, I) and the forward's gate and up. `beta = 1` adds into
 * dgate/dup instead of overwriting them. Outputs must not alias inputs.
 */
export function swigluBackward(rec: Recorder, gate: Tensor, up: Tensor, dh: Tensor, dgate: Tensor, dup: Tensor, beta = 0) {
  check("swigluBackward", [["gate", gate], ["up", up], ["dh", dh], ["dgate", dgate], ["dup", dup]]);
  const n = gate.numel, v = n % 4 === 0 ? 4 : 1;
  rec.dispatch(`swigluBackward ${n}`, rec.rt.pipeline(source, {}, v === 4 ? "swiglu_backward4" : "swiglu_backward"),
    new Params(4).u32(n).f32(beta).u32(0).u32(0).buffer, [gate, up, dh, dgate, dup], flatGrid(n / v));
}

/**
 * swigluBackward in place: gate becomes dgate and up becomes dup (T, I), from dh (T, I). For the
 * MLP backward, where gate and up are dead once their gradients exist: no (T, I) gradient buffers.
 * With `out16` also dgate and dup rounded to f16 (the bits of toF16) in the same pass.
 */
export function swigluBackwardInPlace(rec: Recorder, gate: Tensor, up: Tensor, dh: Tensor, out16?: { dgate: Tensor; dup: Tensor }) {
  check("swigluBackwardInPlace", [["gate", gate], ["up", up], ["dh", dh]]);
  if (gate.buffer === up.buffer && gate.byteOffset === up.byteOffset) throw new Error("swigluBackwardInPlace: gate and up are the same tensor");
  if (out16) { check16("swigluBackwardInPlace", "dgate16", out16.dgate, gate); check16("swigluBackwardInPlace", "dup16", out16.dup, up); }
  const n = gate.numel, v = n % 4 === 0 ? 4 : 1;
  if (out16 && v === 4) {
    rec.dispatch(`swigluBackward ${n} in place +f16`, rec.rt.pipeline(source, {}, "swiglu_backward_inplace4_f16"),
      new Params(4).u32(n).f32(0).u32(0).u32(0).buffer, [gate, up, dh, out16.dgate, out16.dup], flatGrid(n / v));
    return;
  }
  rec.dispatch(`swigluBackward ${n} in place`, rec.rt.pipeline(source, {}, v === 4 ? "swiglu_backward_inplace4" : "swiglu_backward_inplace"),
    new Params(4).u32(n).f32(0).u32(0).u32(0).buffer, [gate, up, dh], flatGrid(n / v));
  if (out16) { convertTensor(rec, gate, out16.dgate); convertTensor(rec, up, out16.dup); }
}
