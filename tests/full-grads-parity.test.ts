// Full fine-tuning's loss and gradients (FullTrainer.step(..., update = false), f32 weights) against
// a PyTorch full fine-tune's, from tests/fixtures/hf/<arch>.json's `full` section (made by
// tests/fixtures/hf/make_fixtures.py): the same tiny model (regenerated, checked by sha256), the same
// batch of 2 as the LoRA parity test (prompt tokens and pads labelled −100), the same loss (mean
// cross-entropy over the batch's targets), every parameter trainable. Every weight's gradient
// (embedding, norms, projections and biases, the final norm, the head unless tied; a tied head's
// contribution is in the embedding's gradient, as PyTorch sums them) must match within 1e-4
// relative (max |ours − torch| / max |torch| per tensor, as trainer-grads-parity.test.ts), and the
// loss too. Run right-padded and packed, with and without gradient checkpointing, and once with the
// flat buffers split into many chunks (FullTrainer's maxChunkBytes).
import { describe, expect, test } from "bun:test";
import { FullTrainer } from "@tuneloom/trainer";
import { ARCHS, decodeF32Base64, type Fixture, fixturePath, fixturePresent, loadF32Model, loadFixture, relError, toBatch } from "./grads-parity-fixtures.ts";

const TOL = 1e-4;

/** The settings each trainer is built with; each gets its own model (FullTrainer takes the model's weights over). */
const SETTINGS = [
  { name: "checkpointing on", gradientCheckpointing: true },
  { name: "checkpointing off", gradientCheckpointing: false },
  { name: "checkpointing on, buffers in 128 KiB chunks", gradientCheckpointing: true, maxChunkBytes: 128 * 1024 },
] as const;

for (const arch of ARCHS) {
  const path = fixturePath(arch);
  const present = fixturePresent(arch, "full-grads-parity");

  describe.skipIf(!present)(present ? `full fine-tuning gradients vs PyTorch (${arch})` : `full fine-tuning gradients vs PyTorch (${arch}) — SKIPPED: ${path} absent`, () => {
    let fixture: ReturnType<typeof loadFixture> | undefined;
    const load = () => {
      fixture ??= loadFixture(arch);
      if (!fixture.fx.full) throw new Error(`${path} has no full section (format ${fixture.fx.format}): remake it with tests/fixtures/hf/make_fixtures.py`);
      return fixture as { fx: Fixture & { full: NonNullable<Fixture["full"]> }; modelDir: string };
    };

    for (const setting of SETTINGS)
      test(`loss and every weight's gradient within ${TOL} relative (${setting.name}; right-padded and packed batch)`, async () => {
        const { fx, modelDir } = load();
        const trainer = new FullTrainer(await loadF32Model(modelDir), {
          gradientCheckpointing: setting.gradientCheckpointing, weightDecay: 0, maxGradNorm: 0,
          ...("maxChunkBytes" in setting ? { maxChunkBytes: setting.maxChunkBytes } : {}),
        });
        if ("maxChunkBytes" in setting) expect(trainer.chunks.length).toBeGreaterThanOrEqual(4);
        // The same tensors as torch's named_parameters(): a tied head is neither there nor ours.
        expect([...trainer.names].sort()).toEqual(Object.keys(fx.full.grads).sort());
        expect(trainer.names.includes("lm_head.weight")).toBe(!fx.full.tied_embeddings);
        expect(trainer.parameterCount).toBe(fx.full.num_parameters);
        const before = await trainer.getWeights();
        for (const layout of ["right-padded", "packed"] as const) {
          const batch = toBatch(fx.lora.batch, fx.pad_token_id, layout);
          expect(batch.numTargets).toBe(fx.full.num_targets);
          const r = await trainer.step([batch], 1e-3, 1, false);
          expect(r.nonFinite).toBe(false);
          const lossErr = Math.abs(r.loss - fx.full.loss) / Math.abs(fx.full.loss);
          const grads = await trainer.getGradients();
          const errors: Record<string, number> = {};
          for (const [name, ref] of Object.entries(fx.full.grads)) {
            const ours = grads.get(name);
            if (!ours) throw new Error(`FullTrainer has no gradient for ${name}`);
            errors[name] = relError(ours, decodeF32Base64(ref.f32_base64));
          }
          const worst = Math.max(...Object.values(errors));
          if (process.env.HF_PARITY_VERBOSE)
            console.log(`${arch} ${layout} ${setting.name}: loss rel err ${lossErr.toExponential(2)}, max grad rel err ${worst.toExponential(2)} over ${Object.keys(errors).length} tensors`);
          expect(lossErr).toBeLessThan(TOL);
          expect(Object.entries(errors).filter(([, e]) => !(e < TOL))).toEqual([]);
        }
        // update = false changed no weight.
        const after = await trainer.getWeights();
        for (const [name, w] of before) expect(after.get(name)!.every((x, i) => x === w[i])).toBe(true);
      }, 120_000);
  });
}
