// Recorder.prepare(): a recording's command buffer encoded ahead of its submit (decode encodes its
// next step while the GPU runs the current one). A prepared buffer must run exactly the recording
// as it is at submit time: one that went stale (more recorded, flushed, released, or already
// submitted) is dropped and the work encoded again.
import { afterAll, describe, expect, test } from "bun:test";
import { axpby, getRuntime } from "../src/index.ts";
import { randn } from "../src/testing.ts";

const rt = await getRuntime();
afterAll(() => rt.trimPool());

const N = 64;
/** y ← 0.5·x + 0.5·y applied `times` times, in float64. */
function expectAfter(x: Float32Array, y0: Float32Array, times: number): Float64Array {
  const y = Float64Array.from(y0);
  for (let t = 0; t < times; t++) for (let i = 0; i < N; i++) y[i] = 0.5 * x[i]! + 0.5 * y[i]!;
  return y;
}
function close(got: Float32Array, want: Float64Array) {
  for (let i = 0; i < N; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThan(1e-5 * (1 + Math.abs(want[i]!)));
}

describe("Recorder.prepare", () => {
  test("a prepared buffer runs the recording once more; a second use of it encodes afresh", async () => {
    const x = randn(N), y0 = randn(N);
    const tx = rt.upload("f32", [N], x), ty = rt.upload("f32", [N], y0);
    const rec = rt.recorder("prepare");
    axpby(rec, tx, ty, 0.5, 0.5);
    expect(rec.prepare()).toBeNull(); // its uniforms are not on the GPU before the first submit
    rec.submit();
    const prepared = rec.prepare();
    expect(prepared).not.toBeNull();
    rec.submit(prepared); // second application
    rec.submit(prepared); // used already: encoded again, a third application
    close(await rt.read(ty), expectAfter(x, y0, 3));
    rec.release();
    rt.release(tx, ty);
  });

  test("stale after more is recorded: the submit runs what the recording holds now", async () => {
    const x = randn(N), y0 = randn(N);
    const tx = rt.upload("f32", [N], x), ty = rt.upload("f32", [N], y0);
    const rec = rt.recorder("prepare-stale");
    axpby(rec, tx, ty, 0.5, 0.5);
    rec.submit(); // 1
    const prepared = rec.prepare();
    axpby(rec, tx, ty, 0.5, 0.5); // the recording now holds two dispatches (its uniforms staged)
    rec.submit(prepared); // stale: both run, with the new uniforms uploaded → 3
    close(await rt.read(ty), expectAfter(x, y0, 3));
    rec.release();
    rt.release(tx, ty);
  });

  test("a prepared buffer of another recording is not submitted by this one", async () => {
    const x = randn(N), y0 = randn(N), z0 = randn(N);
    const tx = rt.upload("f32", [N], x), ty = rt.upload("f32", [N], y0), tz = rt.upload("f32", [N], z0);
    const a = rt.recorder("prepare-a"), b = rt.recorder("prepare-b");
    axpby(a, tx, ty, 0.5, 0.5);
    axpby(b, tx, tz, 0.5, 0.5);
    a.submit();
    b.submit();
    b.submit(a.prepare()); // b's own work again, not a's
    close(await rt.read(ty), expectAfter(x, y0, 1));
    close(await rt.read(tz), expectAfter(x, z0, 2));
    a.release();
    b.release();
    rt.release(tx, ty, tz);
  });
});
