/**
 * LoRA on the q/k/v group (SmolLM2-135M shapes, r = 16), forward + backward: stacked A's (one
 * product for h, dA and dx) against A's apart (one product per module), and the frozen products
 * alone for the difference. One JSON line per case: `{"op":"lora_group","case","T","ms"}`, wall
 * ms per recorded+submitted iteration (median of 7).
 *   bun apps/cli/src/bench/lora-group.ts [T]
 */
import { getRuntime, Tensor } from "@tuneloom/kernels";
import { randn } from "@tuneloom/kernels/host-data.ts";
import { linearsLoraBackward, linearsLoraForward, type LoraModule } from "@tuneloom/model";

const rt = await getRuntime();
const T = Number(process.argv[2] ?? 512), inF = 576, outs = [576, 192, 192], r = 16;
const x = rt.upload("f32", [T, inF], randn(T * inF)), dx = rt.empty("f32", [T, inF]);
const h = rt.empty("f32", [T, 3 * r]), dh = rt.empty("f32", [T, 3 * r]);
const aBuf = rt.upload("f32", [3 * r * inF], randn(3 * r * inF)), dABuf = rt.zeros("f32", [3 * r * inF]);
const projections = (stacked: boolean) => outs.map((o, i) => {
  const view = (buf: Tensor, label: string) => new Tensor(buf.buffer, "f32", [r, inF], i * r * inF * 4, label);
  const lora: LoraModule = {
    A: stacked ? view(aBuf, "A") : rt.upload("f32", [r, inF], randn(r * inF)),
    dA: stacked ? view(dABuf, "dA") : rt.zeros("f32", [r, inF]),
    B: rt.upload("f32", [o, r], randn(o * r)), dB: rt.zeros("f32", [o, r]), scaling: 2,
  };
  return { w: rt.upload("f32", [o, inF], randn(o * inF)), y: rt.empty("f32", [T, o]), dy: rt.upload("f32", [T, o], randn(T * o)), lora };
});
const cases = [
  ["stacked", projections(true)],
  ["apart", projections(false)],
  ["frozen only", projections(false).map((p) => ({ ...p, lora: undefined }))],
] as const;
for (const [name, projs] of cases) {
  const run = async () => {
    const rec = rt.recorder(name);
    linearsLoraForward(rec, x, projs, h);
    linearsLoraBackward(rec, x, projs, dx, 0, h, dh);
    rec.submit();
    await rt.sync();
    rec.release();
  };
  await run(); // compile
  const ms: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    await run();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  console.log(JSON.stringify({ op: "lora_group", case: name, T, ms: +ms[3]!.toFixed(2), device: rt.caps.description }));
}
