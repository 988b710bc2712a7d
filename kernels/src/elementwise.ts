/**
 * Elementwise f32 helpers: residual add (out-of-place and in place), scale, axpy. All
 * tensors are f32 and flat: only element counts must agree, shapes are the caller's.
 */
import { flatGrid, Params } from "./params.ts";
import type { KernelSource, Recorder } from "./runtime.ts";
import { expectTensor, type Tensor } from "./tensor.ts";
import elementwiseWgsl from "./elementwise.wgsl" with { type: "text" };

const source: KernelSource = { name: "elementwise", code: elementwiseWgsl };

function sameNumel(kernel: string, names: string[], ts: Tensor[]) {
  for (let i = 1; i < ts.length; i++) {
    if (ts[i]!.numel !== ts[0]!.numel) {
      throw new Error(`${kernel}: ${names[i]} has ${ts[i]!.numel} elements, ${names[0]} has ${ts[0]!.numel}`);
    }
  }
}

/** out = a + b (f32, same element count; out must not alias a or b). */
export function add(rec: Recorder, a: Tensor, b: Tensor, out: Tensor) {
  for (const [n, t] of [["a", a], ["b", b], ["out", out]] as const) expectTensor("add", n, t, "f32");
  sameNumel("add", ["a", "b", "out"], [a, b, out]);
  const n = a.numel;
  rec.dispatch(`add ${n}`, rec.rt.pipeline(source, {}, "add"), new Params(4).u32(n).f32(0).f32(0).u32(0).buffer,
    [a, b, out], flatGrid(n));
}

/** y = s·x + beta·y. beta = 0 never reads y. x must not alias y. */
export function axpby(rec: Recorder, x: Tensor, y: Tensor, s: number, beta: number) {
  expectTensor("axpby", "x", x, "f32");
  expectTensor("axpby", "y", y, "f32");
  sameNumel("axpby", ["x", "y"], [x, y]);
  const n = x.numel;
  rec.dispatch(`axpby ${n}`, rec.rt.pipeline(source, {}, "axpby"), new Params(4).u32(n).f32(s).f32(beta).u32(0).buffer,
    [x, y], flatGrid(n));
}

/** a += b (residual stream in place). */
export function addInPlace(rec: Recorder, a: Tensor, b: Tensor) {
  axpby(rec, b, a, 1, 1);
}

/** y += s·x (gradient accumulation, weight-decay-free updates). */
export function axpy(rec: Recorder, s: number, x: Tensor, y: Tensor) {
  axpby(rec, x, y, s, 1);
}

/** y = s·x out of place (y is overwritten, never read). */
export function scale(rec: Recorder, s: number, x: Tensor, y: Tensor) {
  axpby(rec, x, y, s, 0);
}

/** x = s·x in place. */
export function scaleInPlace(rec: Recorder, s: number, x: Tensor) {
  expectTensor("scaleInPlace", "x", x, "f32");
  const n = x.numel;
  rec.dispatch(`scaleInPlace ${n}`, rec.rt.pipeline(source, {}, "scale_inplace"),
    new Params(4).u32(n).f32(s).f32(0).u32(0).buffer, [x], flatGrid(n));
}
