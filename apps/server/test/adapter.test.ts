// Loading with --adapter: LoRA merged as W + s·B·A, the adapter's template served, and a
// template that differs from the one training recorded refused.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { templateSha256 } from "@tuneloom/chat-template";
import { gaussianSampler, openCheckpoint, openSafetensors, resolveServingTemplate, TemplateMismatchError, writeSafetensors } from "@tuneloom/model";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, startServer } from "./helpers.ts";

const ADAPTER_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' says\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant says\\n' }}{% endif %}";

let model: { dir: string; cleanup: () => void };
beforeAll(() => {
  model = makeTinyModelDir();
});
afterAll(() => model.cleanup());

interface AdapterSpec {
  r: number;
  alpha: number;
  rslora?: boolean;
  template?: string | null;
  recordedSha?: string | null;
  modules?: string[];
}

/** A PEFT adapter for the tiny model (hidden 64; q 64×64, v 32×64) with random A and B. */
function writeAdapter(name: string, spec: AdapterSpec): string {
  const dir = join(model.dir, "..", name);
  mkdirSync(dir, { recursive: true });
  const modules = spec.modules ?? ["self_attn.q_proj", "self_attn.v_proj"];
  const shapes: Record<string, [number, number]> = { "self_attn.q_proj": [64, 64], "self_attn.v_proj": [32, 64], "mlp.down_proj": [64, 128] };
  const gauss = gaussianSampler(7);
  const tensors = [];
  for (let layer = 0; layer < 2; layer++) {
    for (const m of modules) {
      const [out, inF] = shapes[m]!;
      const base = `base_model.model.model.layers.${layer}.${m}`;
      tensors.push({ name: `${base}.lora_A.weight`, dtype: "F32" as const, shape: [spec.r, inF], data: Float32Array.from({ length: spec.r * inF }, () => 0.3 * gauss()) });
      tensors.push({ name: `${base}.lora_B.weight`, dtype: "F32" as const, shape: [out, spec.r], data: Float32Array.from({ length: out * spec.r }, () => 0.3 * gauss()) });
    }
  }
  writeSafetensors(join(dir, "adapter_model.safetensors"), tensors, { format: "pt" });
  writeFileSync(
    join(dir, "adapter_config.json"),
    JSON.stringify({ peft_type: "LORA", r: spec.r, lora_alpha: spec.alpha, use_rslora: spec.rslora ?? false, bias: "none", target_modules: ["q_proj", "v_proj"] }),
  );
  if (spec.template) writeFileSync(join(dir, "chat_template.jinja"), spec.template);
  if (spec.recordedSha !== null) {
    const sha = spec.recordedSha ?? (spec.template ? templateSha256(spec.template) : undefined);
    writeFileSync(join(dir, "training_args.json"), JSON.stringify({ learning_rate: 1e-4, chat_template_sha256: sha }));
  }
  return dir;
}

describe("adapter loading", () => {
  test("merge: every targeted weight becomes W + (α/r)·B·A; untouched weights stay", () => {
    const dir = writeAdapter("plain", { r: 4, alpha: 8, template: ADAPTER_TEMPLATE });
    const { engine, adapter } = loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dir });
    expect(adapter!.scale).toBe(2);
    expect(adapter!.modules).toEqual([
      "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
    ]);
    const base = openCheckpoint(model.dir);
    const file = openSafetensors(join(dir, "adapter_model.safetensors"));
    const f32 = (name: string) => { const b = file.bytes(name).slice(); return new Float32Array(b.buffer, 0, b.length / 4); };
    const weights = (engine as any).weights;
    const name = "model.layers.1.self_attn.v_proj.weight";
    const W = base.toFloat32(name);
    const A = f32("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight");
    const B = f32("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
    const merged = weights.toFloat32(name) as Float32Array;
    let maxErr = 0;
    for (let o = 0; o < 32; o++)
      for (let i = 0; i < 64; i++) {
        let acc = 0;
        for (let k = 0; k < 4; k++) acc += B[o * 4 + k]! * A[k * 64 + i]!;
        maxErr = Math.max(maxErr, Math.abs(merged[o * 64 + i]! - (W[o * 64 + i]! + 2 * acc)));
      }
    expect(maxErr).toBeLessThan(1e-5);
    expect(weights.toFloat32("model.layers.0.self_attn.k_proj.weight")).toEqual(base.toFloat32("model.layers.0.self_attn.k_proj.weight"));
  });

  test("rsLoRA scales by α/√r", () => {
    const dir = writeAdapter("rslora", { r: 4, alpha: 8, rslora: true, template: ADAPTER_TEMPLATE });
    const { adapter } = loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dir });
    expect(adapter!.scale).toBe(4);
  });

  test("the adapter's chat_template.jinja is served, and the adapter changes the output", async () => {
    const dir = writeAdapter("served", { r: 8, alpha: 64, template: ADAPTER_TEMPLATE });
    const tuned = loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dir });
    expect(tuned.engine.chatTemplate.source).toBe(ADAPTER_TEMPLATE);
    expect(tuned.engine.chatTemplate.sha256).toBe(templateSha256(ADAPTER_TEMPLATE));
    expect(tuned.engine.modelId).toBe("served");
    const running = startServer({ engine: tuned.engine });
    const baseRunning = startServer({ engine: loadCpuReferenceEngine({ modelDir: model.dir }).engine });
    try {
      const messages = [{ role: "user", content: "Hello" }];
      const res = await fetch(`${running.url}/apply-template`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ messages }) });
      expect((await res.json() as any).prompt).toBe("<|im_start|>user says\nHello<|im_end|>\n<|im_start|>assistant says\n");
      const body = JSON.stringify({ prompt: "The quick brown fox", max_tokens: 8, temperature: 0 });
      const a = await (await fetch(`${running.url}/v1/completions`, { method: "POST", headers: JSON_HEADERS, body })).json() as any;
      const b = await (await fetch(`${baseRunning.url}/v1/completions`, { method: "POST", headers: JSON_HEADERS, body })).json() as any;
      expect(a.choices[0].text).not.toBe(b.choices[0].text);
    } finally {
      await running.stop();
      await baseRunning.stop();
    }
  });

  test("no chat_template.jinja in the adapter: the model's template", () => {
    const dir = writeAdapter("no-template", { r: 2, alpha: 2, template: null, recordedSha: null });
    expect(resolveServingTemplate(model.dir, dir).source).toBe(resolveServingTemplate(model.dir).source);
  });

  test("training_args.json recording another template's sha256 refuses to start, saying why", () => {
    const dir = writeAdapter("mismatch", { r: 2, alpha: 2, template: ADAPTER_TEMPLATE, recordedSha: "0".repeat(64) });
    expect(() => resolveServingTemplate(model.dir, dir)).toThrow(TemplateMismatchError);
    expect(() => loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dir })).toThrow(/chat_template_sha256 0{64}.*different chat template/s);
    // Same when the adapter has no template file and the model's differs from the recorded one.
    const bare = writeAdapter("bare-mismatch", { r: 2, alpha: 2, template: null, recordedSha: templateSha256(ADAPTER_TEMPLATE) });
    expect(() => resolveServingTemplate(model.dir, bare)).toThrow(TemplateMismatchError);
  });

  test("a malformed adapter is refused with the reason", () => {
    const dir = writeAdapter("bad-module", { r: 2, alpha: 2, template: ADAPTER_TEMPLATE, modules: ["self_attn.q_proj"] });
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r: 3, lora_alpha: 2, target_modules: ["q_proj"] }));
    expect(() => loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dir })).toThrow(/expected \[3, 64\]/);
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r: 2, lora_alpha: 2, target_modules: ["q_proj"], use_dora: true }));
    expect(() => loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dir })).toThrow(/DoRA/);
  });
});
