/**
 * SwiGLU of the Llama-family MLP: h = silu(gate) · up, where gate = x·W_gateᵀ and
 * up = x·W_upᵀ are (T, I) f32 and h feeds down_proj. Backward recomputes silu from the saved
 * gate and up, so the forward stores nothing extra.
 */
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import swigluWgsl from "./swiglu.wgsl" with { type: "text" };

const source: KernelSource = { name: "swiglu", code: swigluWgsl };

function check(kernel: string, named: [string, Tensor][]) {
  const [firstName, first] = named[0]!;
  for (const [name, t] of named) {
    expectTensor(kernel, name, t, "f32");
    if (t.numel !== first.numel) throw new Error(`${kernel}: ${name} has ${t.numel} elements, ${firstName} has ${first.numel}`);
  }
}

/** h (T, I) = silu(gate) · up. */
export function swigluForward(rec: Recorder, gate: Tensor, up: Tensor, h: Tensor) {
  check("swigluForward", [["gate", gate], ["up", up], ["h", h]]);
  const n = gate.numel, v = n % 4 === 0 ? 4 : 1; // four per thread where n allows
  rec.dispatch(`swigluForward ${n}`, rec.rt.pipeline(source, {}, v === 4 ? "swiglu_forward4" : "swiglu_forward"),
    new Params(4).u32(n).f32(0).u32(0).u32(0).buffer, [gate, up, h], flatGrid(n / v));
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
 */
export function swigluBackwardInPlace(rec: Recorder, gate: Tensor, up: Tensor, dh: Tensor) {
  check("swigluBackwardInPlace", [["gate", gate], ["up", up], ["dh", dh]]);
  if (gate.buffer === up.buffer && gate.byteOffset === up.byteOffset) throw new Error("swigluBackwardInPlace: gate and up are the same tensor");
  const n = gate.numel, v = n % 4 === 0 ? 4 : 1;
  rec.dispatch(`swigluBackward ${n} in place`, rec.rt.pipeline(source, {}, v === 4 ? "swiglu_backward_inplace4" : "swiglu_backward_inplace"),
    new Params(4).u32(n).f32(0).u32(0).u32(0).buffer, [gate, up, dh], flatGrid(n / v));
}
