// vLLM-style request parameters through the official `openai` client on the CPU reference engine:
// repetition/presence/frequency penalties and min_tokens checked against a float64 loop of their
// own (reference forward + applyLogitPenaltiesRef + argmax), min_p, /v1/completions with a list of
// prompts (stream and not), and x-request-id on every response.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { applyLogitPenaltiesRef, argmaxRef } from "@tuneloom/kernels";
import { cpuReferenceForward } from "@tuneloom/model/cpu-reference.ts";
import { loadCpuReferenceEngine, type LoadedModel } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, startServer, type RunningServer, startTinyOpenAIServer, stopTinyOpenAIServer, type TinyOpenAIServer } from "./helpers.ts";

let { model, loaded, running, client } = {} as TinyOpenAIServer;
beforeAll(() => void ({ model, loaded, running, client } = startTinyOpenAIServer()));
afterAll(() => stopTinyOpenAIServer({ model, running }));

/** Greedy continuation with the penalties applied by hand, in float64. */
function penalisedGreedy(promptIds: number[], n: number, p: { repetition?: number; presence?: number; frequency?: number; minTokens?: number; stopIds: number[] }): number[] {
  const { config, engine } = loaded;
  const weights = (engine as any).weights;
  const V = Math.min(config.vocabSize, engine.tokenizer.vocabSize);
  const ids = [...promptIds], out: number[] = [];
  const generated = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const all = cpuReferenceForward(config, weights, ids);
    const row = all.slice((ids.length - 1) * config.vocabSize, (ids.length - 1) * config.vocabSize + V);
    applyLogitPenaltiesRef(row, {
      repetition: p.repetition ?? 1, presence: p.presence ?? 0, frequency: p.frequency ?? 0,
      promptTokens: new Set(promptIds), generated, masked: out.length < (p.minTokens ?? 0) ? p.stopIds : [],
    });
    const t = argmaxRef(row);
    out.push(t);
    ids.push(t);
    generated.set(t, (generated.get(t) ?? 0) + 1);
    if (p.stopIds.includes(t)) break;
  }
  return out;
}

const prompt = "the cat sat on the mat and the cat";

async function completionIds(body: Record<string, unknown>): Promise<{ ids: number[]; text: string; finish: string }> {
  const res = await fetch(`${running.url}/v1/completions`, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ model: "tiny", prompt, temperature: 0, logprobs: 0, ...body }) });
  const json = (await res.json()) as any;
  expect(res.status).toBe(200);
  const choice = json.choices[0];
  return { ids: loaded.engine.tokenizer.encode(choice.text, { addSpecialTokens: false }).ids, text: choice.text, finish: choice.finish_reason };
}

describe("sampling parameters", () => {
  const promptIds = () => loaded.engine.tokenizer.encode(prompt, { addSpecialTokens: true }).ids;
  const settings = [
    { repetition_penalty: 1.8 },
    { repetition_penalty: 0.5 },
    { presence_penalty: 1.5, frequency_penalty: 0.8 },
    { repetition_penalty: 1.3, presence_penalty: -0.5, frequency_penalty: 2 },
    { repetition_penalty: 100 },
    { presence_penalty: -2, frequency_penalty: -2 },
    { repetition_penalty: 0.01 },
  ];
  for (const s of settings)
    test(`${JSON.stringify(s)}: the server's greedy tokens equal the float64 reference's`, async () => {
      const res = await client.completions.create({ model: "tiny", prompt, max_tokens: 10, temperature: 0, ...s } as any);
      const want = penalisedGreedy(promptIds(), 10, {
        repetition: s.repetition_penalty, presence: s.presence_penalty, frequency: s.frequency_penalty, stopIds: [...loaded.engine.tokenizer.eosTokenIds],
      });
      const eos = new Set(loaded.engine.tokenizer.eosTokenIds);
      const text = loaded.engine.tokenizer.decode(want.filter((t) => !eos.has(t)), { skipSpecialTokens: true });
      expect(res.choices[0]!.text).toBe(text);
    });

  test("a strong penalty changes the output, so the comparisons above are not vacuous", async () => {
    const plain = await client.completions.create({ model: "tiny", prompt, max_tokens: 10, temperature: 0 });
    for (const s of [{ presence_penalty: -2, frequency_penalty: -2 }, { repetition_penalty: 0.01 }]) {
      const penalised = await client.completions.create({ model: "tiny", prompt, max_tokens: 10, temperature: 0, ...s } as any);
      expect(penalised.choices[0]!.text).not.toBe(plain.choices[0]!.text);
    }
  });

  test("min_tokens: a stop token cannot end the output early", async () => {
    const plain = await completionIds({ max_tokens: 6 });
    const first = plain.ids[0]!;
    const stopped = await completionIds({ max_tokens: 6, stop_token_ids: [first] });
    expect([stopped.text, stopped.finish]).toEqual(["", "stop"]);
    const held = await completionIds({ max_tokens: 6, stop_token_ids: [first], min_tokens: 3 });
    const want = penalisedGreedy(promptIds(), 6, { minTokens: 3, stopIds: [...loaded.engine.tokenizer.eosTokenIds, first] });
    expect(want.length).toBeGreaterThanOrEqual(3);
    expect(want.slice(0, 3)).not.toContain(first);
    const text = loaded.engine.tokenizer.decode(want.filter((t) => !loaded.engine.tokenizer.eosTokenIds.includes(t) && t !== first), { skipSpecialTokens: true });
    expect(held.text).toBe(text);
  });

  test("min_p 1 at any temperature keeps only the most likely token: equals greedy", async () => {
    const greedy = await client.completions.create({ model: "tiny", prompt, max_tokens: 8, temperature: 0 });
    for (const seed of [1, 2, 3]) {
      const minP = await client.completions.create({ model: "tiny", prompt, max_tokens: 8, temperature: 1.5, seed, min_p: 1 } as any);
      expect(minP.choices[0]!.text).toBe(greedy.choices[0]!.text);
    }
  });
});

describe("/v1/completions with a list of prompts", () => {
  const prompts = ["the cat", "a dog ran", "once upon"];
  test("one choice per prompt with its index, each equal to the prompt alone; usage summed", async () => {
    const batch = await client.completions.create({ model: "tiny", prompt: prompts, max_tokens: 6, temperature: 0 });
    expect(batch.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    let promptTokens = 0, completionTokens = 0;
    for (const [i, p] of prompts.entries()) {
      const alone = await client.completions.create({ model: "tiny", prompt: p, max_tokens: 6, temperature: 0 });
      expect(batch.choices[i]!.text).toBe(alone.choices[0]!.text);
      expect(batch.choices[i]!.finish_reason).toBe(alone.choices[0]!.finish_reason);
      promptTokens += alone.usage!.prompt_tokens;
      completionTokens += alone.usage!.completion_tokens;
    }
    expect(batch.usage).toEqual({ prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens });

    const ids = prompts.map((p) => loaded.engine.tokenizer.encode(p, { addSpecialTokens: true }).ids);
    const byIds = await client.completions.create({ model: "tiny", prompt: ids, max_tokens: 6, temperature: 0 });
    expect(byIds.choices.map((c) => c.text)).toEqual(batch.choices.map((c) => c.text));
  });

  test("streamed: chunks carry their choice index; per-index text equals the non-streamed choices; usage at the end", async () => {
    const batch = await client.completions.create({ model: "tiny", prompt: prompts, max_tokens: 6, temperature: 0 });
    const stream = await client.completions.create({ model: "tiny", prompt: prompts, max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const texts = ["", "", ""], finish: (string | null)[] = [null, null, null];
    let usage: OpenAI.CompletionUsage | null | undefined = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        texts[c.index] += c.text;
        finish[c.index] = c.finish_reason ?? finish[c.index]!;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(texts).toEqual(batch.choices.map((c) => c.text));
    expect(finish).toEqual(batch.choices.map((c) => c.finish_reason));
    expect(usage).toEqual(batch.usage!);
  });
});

describe("x-request-id", () => {
  test("echoed when sent, generated when not, on successes and errors alike", async () => {
    const sent = await fetch(`${running.url}/health`, { headers: { "x-request-id": "my-trace-123" } });
    expect(sent.headers.get("x-request-id")).toBe("my-trace-123");
    const fresh = await fetch(`${running.url}/v1/models`);
    expect(fresh.headers.get("x-request-id")).toMatch(/^[0-9a-f]{32}$/);
    const bad = await fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: { ...JSON_HEADERS, "x-request-id": "err-1" }, body: JSON.stringify({ bogus_field: 1 }) });
    expect(bad.status).toBe(400);
    expect(bad.headers.get("x-request-id")).toBe("err-1");
    const missing = await fetch(`${running.url}/nope`, { headers: { "x-request-id": "x".repeat(500) } });
    expect(missing.status).toBe(404);
    expect(missing.headers.get("x-request-id")).toMatch(/^[0-9a-f]{32}$/); // not a sane id: replaced
    const streamed = await fetch(`${running.url}/v1/completions`, { method: "POST", headers: { ...JSON_HEADERS, "x-request-id": "s-1" }, body: JSON.stringify({ prompt: "a", max_tokens: 2, stream: true }) });
    expect(streamed.headers.get("x-request-id")).toBe("s-1");
    await streamed.text();
  });

  test("the openai client sees it, and an unknown field is its BadRequestError naming the field", async () => {
    const { response } = await client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "hi" }], max_tokens: 2 }).withResponse();
    expect(response.headers.get("x-request-id")).toBeTruthy();
    const err = await client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "hi" }], bogus_field: 1 } as any).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.param).toBe("bogus_field");
    expect(err.message).toContain("bogus_field");
  });
});
