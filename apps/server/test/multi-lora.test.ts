// Several adapters in one server (issue #16): the base and two random adapters served side by
// side, each request's `model` picking one; requests for different adapters in ONE continuous
// batch give each exactly its solo tokens; /v1/models lists them vLLM's way; adapters loaded and
// unloaded at runtime (403 without the flag); --max-loras refuses past the cap. A mixed batch is
// ONE forward: each decode step one submit, the newcomers' prefill one step (adapter slots, bgmv).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join, resolve } from "node:path";
import OpenAI from "openai";
import { gaussianSampler, loadModelConfig, loraLayerSpecs, normalizeTargetModules, writeAdapterDir } from "@tuneloom/model";
import type { GenerationRequest, InferenceEngine, TokenEvent } from "../src/engine.ts";
import { type GpuEngine, loadGpuEngine } from "../src/gpu-engine.ts";
import { adapterNameOf, loadCpuReferenceEngine } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, readUntil, type RunningServer, startServer } from "./helpers.ts";

const MAIN = resolve(import.meta.dir, "../../cli/src/main.ts");

const TEMPLATE_B =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' (B)\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant (B)\\n' }}{% endif %}";

let model: { dir: string; cleanup: () => void };
let dirA: string, dirB: string, dirC: string, dirBig: string;
let gpu: GpuEngine;

/** A random adapter written by the project's writer (PEFT layout, template hash in training_args.json). */
function writeRandomAdapter(dir: string, seed: number, template: string, rank = 4, targets = "q,v,up,down") {
  const config = loadModelConfig(model.dir);
  const lora = { rank, alpha: 2 * rank, dropout: 0, targetModules: normalizeTargetModules(targets), rslora: false };
  const gauss = gaussianSampler(seed);
  const weights = loraLayerSpecs(config, lora).map((spec) => ({
    spec,
    A: Float32Array.from({ length: lora.rank * spec.inFeatures }, () => 0.5 * gauss()),
    B: Float32Array.from({ length: spec.outFeatures * lora.rank }, () => 0.5 * gauss()),
  }));
  writeAdapterDir(dir, { baseModel: model.dir, lora, weights, chatTemplate: template, trainingArgs: { learning_rate: 1e-4 } });
}

beforeAll(async () => {
  model = makeTinyModelDir();
  const root = join(model.dir, "..");
  const baseTemplate = loadCpuReferenceEngine({ modelDir: model.dir }).engine.chatTemplate.source;
  dirA = join(root, "run-a", "adapter");
  dirB = join(root, "run-b", "adapter");
  dirC = join(root, "run-c", "adapter");
  writeRandomAdapter(dirA, 1, baseTemplate);
  writeRandomAdapter(dirB, 2, TEMPLATE_B);
  writeRandomAdapter(dirC, 3, baseTemplate, 8, "q,k,v,o,gate,up,down"); // another rank, every projection
  dirBig = join(root, "run-big", "adapter");
  writeRandomAdapter(dirBig, 4, baseTemplate, 32, "q"); // above the default --max-lora-rank (16)
  gpu = (await loadGpuEngine(model.dir, [{ name: "alpha", dir: dirA }, { name: "beta", dir: dirB }], { modelId: "tiny", maxBatchSize: 8, maxContext: 128, maxLoras: 3 })).engine;
}, 120_000);
afterAll(async () => {
  await gpu?.close();
  model?.cleanup();
});

function request(over: Partial<GenerationRequest> = {}): GenerationRequest {
  return { promptIds: [5, 9, 2, 7], maxTokens: 10, temperature: 0, topP: 1, topK: 0, seed: 0, stopTokenIds: [], logprobs: false, topLogprobs: 0, ...over };
}

async function collect(engine: InferenceEngine, req: GenerationRequest): Promise<number[]> {
  const out: number[] = [];
  for await (const e of engine.submit(req, new AbortController().signal) as AsyncIterable<TokenEvent>) out.push(e.tokenId);
  return out;
}

describe("several adapters on one GPU engine", () => {
  test("A, B and the base in ONE batch: each gives exactly its solo tokens, and the adapters change them", async () => {
    const kinds = ["alpha", "beta", null] as const;
    const prompts = [[5, 9, 2, 7], [3, 8, 1]];
    const cases = prompts.flatMap((promptIds) => kinds.map((adapter) => request({ adapter, promptIds })));
    const solo: number[][] = [];
    for (const r of cases) solo.push(await collect(gpu, r));
    expect(solo[0]).not.toEqual(solo[2]);
    expect(solo[1]).not.toEqual(solo[2]);
    expect(solo[0]).not.toEqual(solo[1]);
    const stepsBefore = gpu.counters.steps, submitsBefore = gpu.decodeStats.submits, prefillsBefore = gpu.prefillStats.steps;
    // Submitted in one turn: admitted and prefilled together, then decoded in the same steps.
    const batched = await Promise.all(cases.map((r) => collect(gpu, r)));
    expect(batched).toEqual(solo);
    expect(gpu.counters.steps - stepsBefore).toBe(request().maxTokens - 1); // one loop step per token for all six
    // ONE forward per step for the three models (per-adapter forwards would make 3 submits a step),
    // and the six prompts of three models in one prefill step.
    expect(gpu.decodeStats.submits - submitsBefore).toBe(request().maxTokens - 1);
    expect(gpu.prefillStats.steps - prefillsBefore).toBe(1);
  }, 120_000);

  test("an adapter's tokens are the CPU reference's with that adapter folded in", async () => {
    const cpuA = loadCpuReferenceEngine({ modelDir: model.dir, adapterDir: dirA }).engine;
    expect(cpuA.modelId).toBe("run-a"); // the one-adapter form is named after its run directory
    expect(await collect(gpu, request({ adapter: "alpha" }))).toEqual(await collect(cpuA, request()));
    await cpuA.close();
  }, 120_000);

  test("--adapter DIR is named after the run directory, not 'adapter'", () => {
    expect(adapterNameOf(dirA)).toBe("run-a");
    expect(adapterNameOf(join(model.dir, "..", "my-lora"))).toBe("my-lora");
  });

  test("--max-loras: more adapters than the cap are refused at startup", async () => {
    await expect(loadGpuEngine(model.dir, [{ name: "a", dir: dirA }, { name: "b", dir: dirB }], { maxLoras: 1, maxBatchSize: 2, maxContext: 32 })).rejects.toThrow(
      /2 adapters would be loaded, more than --max-loras 1/,
    );
  });
});

describe("the HTTP server with several adapters", () => {
  let srv: RunningServer;
  let locked: RunningServer;
  beforeAll(() => {
    srv = startServer({ engine: gpu, enableLoraRuntimeUpdates: true });
    locked = startServer({ engine: gpu });
  });
  afterAll(async () => {
    await srv.stop();
    await locked.stop();
  });
  const post = (s: RunningServer, path: string, body: unknown) => fetch(`${s.url}${path}`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(body) });

  test("/v1/models lists the base and the adapters, parent = the base's id (openai client)", async () => {
    const client = new OpenAI({ baseURL: srv.baseURL, apiKey: "unused" });
    const list = [];
    for await (const m of client.models.list()) list.push(m as unknown as Record<string, unknown>);
    expect(list.map((m) => [m.id, m.parent])).toEqual([["tiny", null], ["alpha", "tiny"], ["beta", "tiny"]]);
    expect(list[1]!.root).toBe(dirA);
    expect(list[0]!.max_model_len).toBe(128);
    const one = (await client.models.retrieve("beta")) as unknown as Record<string, unknown>;
    expect(one.parent).toBe("tiny");
  });

  test("a request's model picks base or adapter (openai client); each answers as the engine does", async () => {
    const client = new OpenAI({ baseURL: srv.baseURL, apiKey: "unused" });
    const run = (m: string) => client.completions.create({ model: m, prompt: [5, 9, 2, 7], max_tokens: 10, temperature: 0 });
    const [a, b, base] = await Promise.all([run("alpha"), run("beta"), run("tiny")]);
    expect([a.model, b.model, base.model]).toEqual(["alpha", "beta", "tiny"]);
    const text = async (adapter: string | null) => gpu.tokenizer.decode(await collect(gpu, request({ adapter })));
    expect(a.choices[0]!.text).toBe(await text("alpha"));
    expect(b.choices[0]!.text).toBe(await text("beta"));
    expect(base.choices[0]!.text).toBe(await text(null));
  }, 120_000);

  test("each adapter renders with its own training template", async () => {
    const messages = [{ role: "user", content: "hi" }];
    const b = (await (await post(srv, "/apply-template", { model: "beta", messages })).json()) as { prompt: string };
    const base = (await (await post(srv, "/apply-template", { model: "tiny", messages })).json()) as { prompt: string };
    expect(b.prompt).toBe("<|im_start|>user (B)\nhi<|im_end|>\n<|im_start|>assistant (B)\n");
    expect(base.prompt).not.toBe(b.prompt);
  });

  test("an unknown model is a 404 that lists the served names", async () => {
    const res = await post(srv, "/v1/completions", { model: "gamma", prompt: "hi", max_tokens: 2 });
    expect(res.status).toBe(404);
    const body = (await res.json()) as { error: { message: string; code: string } };
    expect(body.error.code).toBe("model_not_found");
    expect(body.error.message).toContain("'tiny', 'alpha', 'beta'");
  });

  test("an adapter above --max-lora-rank is refused with 400 and takes no slot", async () => {
    const used = gpu.loraSlotsUsed.used;
    const res = await post(srv, "/v1/load_lora_adapter", { lora_name: "big", lora_path: dirBig });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("lora_rank_too_high");
    expect(body.error.message).toContain("adapter 'big' has rank 32, above --max-lora-rank 16");
    expect(gpu.loraSlotsUsed.used).toBe(used);
    expect(gpu.loraSlotsUsed.total).toBe(3); // --max-loras slots
  });

  test("runtime updates are refused with 403 without the flag", async () => {
    const load = await post(locked, "/v1/load_lora_adapter", { lora_name: "gamma", lora_path: dirC });
    expect(load.status).toBe(403);
    expect(((await load.json()) as { error: { code: string } }).error.code).toBe("lora_runtime_updates_disabled");
    expect((await post(locked, "/v1/unload_lora_adapter", { lora_name: "alpha" })).status).toBe(403);
  });

  test("load → use → unload (waits for running requests) → 404; the cap refuses a load past it", async () => {
    const load = await post(srv, "/v1/load_lora_adapter", { lora_name: "gamma", lora_path: dirC });
    expect(load.status).toBe(200);
    expect(await load.text()).toContain("gamma");
    const again = await post(srv, "/v1/load_lora_adapter", { lora_name: "gamma", lora_path: dirC });
    expect(again.status).toBe(400);
    // alpha, beta, gamma: the cap (3) is reached.
    const over = await post(srv, "/v1/load_lora_adapter", { lora_name: "delta", lora_path: dirC });
    expect(over.status).toBe(400);
    const overBody = (await over.json()) as { error: { code: string; message: string } };
    expect(overBody.error.code).toBe("max_loras_reached");
    expect(overBody.error.message).toContain("--max-loras 3");

    const res = await post(srv, "/v1/completions", { model: "gamma", prompt: [5, 9, 2, 7], max_tokens: 10, temperature: 0 });
    expect(res.status).toBe(200);
    const gammaText = ((await res.json()) as { choices: { text: string }[] }).choices[0]!.text;
    expect(gammaText).toBe(gpu.tokenizer.decode(await collect(gpu, request({ adapter: "gamma" }))));

    // A running request for gamma finishes whole; the unload answers only after it.
    const order: string[] = [];
    const running = collect(gpu, request({ adapter: "gamma", maxTokens: 30 })).then((t) => (order.push("request"), t));
    await new Promise((r) => setTimeout(r, 50));
    const unload = post(srv, "/v1/unload_lora_adapter", { lora_name: "gamma" }).then((r) => (order.push("unload"), r));
    const [tokens, unloaded] = await Promise.all([running, unload]);
    expect(tokens.length).toBe(30);
    expect(unloaded.status).toBe(200);
    expect(order).toEqual(["request", "unload"]);

    const gone = await post(srv, "/v1/completions", { model: "gamma", prompt: "hi", max_tokens: 2 });
    expect(gone.status).toBe(404);
    expect((await post(srv, "/v1/unload_lora_adapter", { lora_name: "gamma" })).status).toBe(404);
    const models = (await (await fetch(`${srv.baseURL}/models`)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toEqual(["tiny", "alpha", "beta"]);
    // A bad directory is a 400 naming it; the slot under the cap is free again.
    const bad = await post(srv, "/v1/load_lora_adapter", { lora_name: "delta", lora_path: join(dirC, "nope") });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("invalid_adapter");
  }, 180_000);
});

describe("serve --lora-modules", () => {
  test("vLLM's spelling: --lora-modules a=DIR b=DIR serves the base and both; --adapter names its run directory", async () => {
    const proc = Bun.spawn(["bun", MAIN, "serve", "--model", model.dir, "--port", "0", "--lora-modules", `a=${dirA}`, `b=${dirB}`, "--max-context", "64", "--max-running", "2"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      const out = { text: "" };
      await readUntil(proc.stdout.getReader(), /listening on (http:\/\/127\.0\.0\.1:\d+)/, out);
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out.text)![1]!;
      const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string; parent: string | null }[] };
      expect(models.data.map((m) => [m.id, m.parent])).toEqual([["tiny-model", null], ["a", "tiny-model"], ["b", "tiny-model"]]);
      expect(out.text).toContain("serving 'b' (adapter of 'tiny-model'");
      const load = await fetch(`${url}/v1/load_lora_adapter`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ lora_name: "c", lora_path: dirC }) });
      expect(load.status).toBe(403); // no --enable-lora-runtime-updates
    } finally {
      proc.kill("SIGKILL");
      await proc.exited;
    }
  }, 60_000);

  test("past --max-loras, or beside --adapter, it refuses to start", async () => {
    const over = Bun.spawn(["bun", MAIN, "serve", "--model", model.dir, "--port", "0", "--lora-modules", `a=${dirA}`, `b=${dirB}`, "--max-loras", "1"], { stdout: "pipe", stderr: "pipe" });
    expect(await over.exited).toBe(1);
    expect(await new Response(over.stderr).text()).toContain("--lora-modules names 2 adapters, more than --max-loras 1");
    const both = Bun.spawn(["bun", MAIN, "serve", "--model", model.dir, "--adapter", dirA, "--lora-modules", `b=${dirB}`], { stdout: "pipe", stderr: "pipe" });
    expect(await both.exited).toBe(1);
    expect(await new Response(both.stderr).text()).toContain("--adapter and --lora-modules do not go together");
  }, 60_000);
});
