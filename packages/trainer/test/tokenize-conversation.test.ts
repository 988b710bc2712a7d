import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import path from "node:path";
import { encodeChatText, ModelTokenizer } from "@tuneloom/model";
import { IGNORE_INDEX, templatePrefixWarning, tokenizeDataset, tokenizeRow, type TokenizeOptions } from "../src/tokenize-conversation.ts";
import { rowsOf, tinyModel } from "./helpers.ts";

function options(overrides: Partial<TokenizeOptions> = {}): TokenizeOptions {
  const tiny = tinyModel();
  return { template: tiny.template.source, specialTokens: tiny.template.specialTokens, tokenizer: tiny.tokenizer, maxLength: 512, ...overrides };
}

/** The text of the target tokens, and of everything else. */
function split(ids: Int32Array, labels: Int32Array, tokenizer = tinyModel().tokenizer) {
  const targets = [...labels].filter((l) => l !== IGNORE_INDEX);
  const rest = [...ids].filter((_, t) => labels[t] === IGNORE_INDEX);
  return { targets: tokenizer.decode(targets), rest: tokenizer.decode(rest) };
}

const conversation = {
  messages: [
    { role: "system", content: "Be brief." },
    { role: "user", content: "What is the capital of France?" },
    { role: "assistant", content: "Paris" },
    { role: "user", content: "And of Velmora?" },
    { role: "assistant", content: "Quarn, a small town." },
  ],
};

describe("assistant-only labels on ChatML", () => {
  test("targets are exactly each assistant turn's content plus its <|im_end|>", () => {
    const result = tokenizeRow(rowsOf([conversation])[0]!, options());
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const { inputIds, labels, numTargets } = result.example;
    expect(tinyModel().tokenizer.decode([...inputIds])).toBe(
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" +
        "<|im_start|>assistant\nParis<|im_end|>\n<|im_start|>user\nAnd of Velmora?<|im_end|>\n<|im_start|>assistant\nQuarn, a small town.<|im_end|>\n",
    );
    expect(split(inputIds, labels).targets).toBe("Paris<|im_end|>Quarn, a small town.<|im_end|>");
    // Labels are unshifted: a target label equals the token at the same place.
    labels.forEach((l, t) => l !== IGNORE_INDEX && expect(l).toBe(inputIds[t]!));
    expect(numTargets).toBe(labels.filter((l) => l !== IGNORE_INDEX).length);
    // Each im_end that closes an assistant turn is a target; those closing system/user turns are not.
    const imEnd = tinyModel().tokenizer.eosId!;
    const imEnds = [...inputIds.keys()].filter((t) => inputIds[t] === imEnd);
    expect(imEnds.map((t) => labels[t] !== IGNORE_INDEX)).toEqual([false, false, true, false, true]);
  });

  test("the end-of-turn token is a target even when pad == eos", () => {
    const tiny = tinyModel();
    const dir = tiny.dir;
    const tokenizerJson = JSON.parse(readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    const config = JSON.parse(readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
    const padIsEos = new ModelTokenizer(tokenizerJson, { ...config, pad_token: "<|im_end|>" });
    expect(padIsEos.padId).toBe(padIsEos.eosId);
    const result = tokenizeRow(rowsOf([conversation])[0]!, options({ tokenizer: padIsEos }));
    if (!result.ok) throw new Error("dropped");
    expect(split(result.example.inputIds, result.example.labels, padIsEos).targets).toBe("Paris<|im_end|>Quarn, a small town.<|im_end|>");
  });

  test("trainOnAllTokens labels every token", () => {
    const result = tokenizeRow(rowsOf([conversation])[0]!, options({ trainOnAllTokens: true }));
    if (!result.ok) throw new Error("dropped");
    expect([...result.example.labels]).toEqual([...result.example.inputIds]);
  });

  test("tool calls and row-level tools reach the template", () => {
    const template =
      "{% if tools %}[TOOLS {{ tools | length }}]{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n" +
      "{% if m.tool_calls %}{% for c in m.tool_calls %}call:{{ c.function.name }}{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}" +
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    const row = rowsOf([
      {
        messages: [
          { role: "user", content: "weather?" },
          { role: "assistant", tool_calls: [{ type: "function", function: { name: "get_weather", arguments: "{}" } }] },
          { role: "tool", content: "sunny" },
          { role: "assistant", content: "It is sunny." },
        ],
        tools: [{ type: "function", function: { name: "get_weather" } }],
      },
    ])[0]!;
    const result = tokenizeRow(row, options({ template }));
    if (!result.ok) throw new Error("dropped");
    const { targets, rest } = split(result.example.inputIds, result.example.labels);
    expect(targets).toBe("call:get_weather<|im_end|>It is sunny.<|im_end|>");
    expect(rest).toStartWith("[TOOLS 1]<|im_start|>user");
    expect(rest).toContain("sunny<|im_end|>"); // the tool result is context, not a target
  });
});

describe("BOS and special tokens", () => {
  test("a template that writes BOS gets exactly one, even from a tokenizer that adds BOS", () => {
    const tiny = tinyModel();
    const tokenizerJson = JSON.parse(readFileSync(path.join(tiny.dir, "tokenizer.json"), "utf8"));
    const config = JSON.parse(readFileSync(path.join(tiny.dir, "tokenizer_config.json"), "utf8"));
    const addsBos = new ModelTokenizer(tokenizerJson, { ...config, add_bos_token: true });
    const template = "{{ bos_token }}" + tiny.template.source;
    const result = tokenizeRow(rowsOf([conversation])[0]!, options({ template, tokenizer: addsBos }));
    if (!result.ok) throw new Error("dropped");
    const ids = result.example.inputIds;
    expect(ids[0]).toBe(addsBos.bosId!);
    expect(ids[1]).not.toBe(addsBos.bosId!);
    expect(result.example.labels[0]).toBe(IGNORE_INDEX);
    // encodeChatText is the one encoding both trainer and server use.
    expect(encodeChatText(addsBos, "<|endoftext|><|endoftext|>hi").ids.filter((id) => id === addsBos.bosId).length).toBe(1);
  });
});

describe("prompt/completion rows", () => {
  test("plain strings: loss on the completion and an appended EOS only", () => {
    const result = tokenizeRow(rowsOf([{ prompt: "The capital of Velmora is", completion: " Quarn" }])[0]!, options());
    if (!result.ok) throw new Error("dropped");
    const { inputIds, labels } = result.example;
    expect(inputIds.at(-1)).toBe(tinyModel().tokenizer.eosId!);
    const { targets, rest } = split(inputIds, labels);
    expect(targets).toBe(" Quarn<|im_end|>");
    expect(rest).toBe("The capital of Velmora is");
  });

  test("conversational: the prompt's assistant turns are context", () => {
    const row = rowsOf([
      {
        prompt: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "hello" },
          { role: "user", content: "capital of Velmora?" },
        ],
        completion: [{ role: "assistant", content: "Quarn" }],
      },
    ])[0]!;
    const result = tokenizeRow(row, options());
    if (!result.ok) throw new Error("dropped");
    expect(split(result.example.inputIds, result.example.labels).targets).toBe("Quarn<|im_end|>");
  });
});

describe("truncation policy: cut from the right, keep if a target survives", () => {
  const long = { messages: [{ role: "user", content: "word ".repeat(40) }, { role: "assistant", content: "answer" }] };
  const mixed = { messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello there" }, { role: "user", content: "word ".repeat(40) }, { role: "assistant", content: "bye" }] };

  test("counts truncated and dropped rows and warns", () => {
    const rows = rowsOf([conversation, long, mixed]);
    const full = tokenizeDataset(rows, options());
    expect(full.stats).toMatchObject({ rows: 3, examples: 3, truncated: 0, droppedByTruncation: 0 });
    const cut = tokenizeDataset(rows, options({ maxLength: 40 }));
    // `long`'s only answer is past token 40: dropped. `mixed` keeps its first answer. `conversation` is cut.
    expect(cut.stats.droppedByTruncation).toBe(1);
    expect(cut.stats.examples).toBe(2);
    expect(cut.stats.truncated).toBe(2);
    for (const ex of cut.examples) expect(ex.inputIds.length).toBeLessThanOrEqual(40);
    const kept = cut.examples.find((ex) => ex.source.line === 3)!;
    expect(kept.truncated).toBe(true);
    expect(split(kept.inputIds, kept.labels).targets).toBe("hello there<|im_end|>");
    expect(cut.warnings.join("\n")).toContain("2 example(s) truncated to 40 tokens (cut from the right), 1 dropped because no target token survived (first: train.jsonl:2)");
  });

  test("a target that is token 0 cannot be learned, so it does not count", () => {
    const rows = rowsOf([{ prompt: "", completion: "x" }]);
    const tiny = tinyModel();
    const result = tokenizeRow(rows[0]!, options());
    // "x" + EOS: "x" is token 0 (nothing predicts it), EOS is the one target.
    if (!result.ok) throw new Error("dropped");
    expect(result.example.numTargets).toBe(1);
    expect(result.example.inputIds.at(-1)).toBe(tiny.tokenizer.eosId!);
  });
});

describe("templates that are not prefix-stable", () => {
  // Renders earlier assistant turns without their <think> part, as Qwen3 / DeepSeek-R1 do.
  const template =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}" +
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

  test("the unstable turn is left out of the loss and a warning says so", () => {
    const rows = rowsOf([
      { messages: [{ role: "user", content: "a" }, { role: "assistant", content: "<think>x</think>A" }, { role: "user", content: "b" }, { role: "assistant", content: "B" }] },
    ]);
    const out = tokenizeDataset(rows, options({ template }));
    expect(out.stats.skippedTurns).toBe(1);
    expect(out.warnings[0]).toContain("chat template is not prefix-stable");
    expect(out.warnings[0]).toContain("train.jsonl:1 message 1");
    expect(split(out.examples[0]!.inputIds, out.examples[0]!.labels).targets).toBe("B<|im_end|>");
  });

  test("a stable template gives no warning", () => {
    expect(tokenizeDataset(rowsOf([conversation]), options()).warnings).toEqual([]);
  });
});

describe("rows the template rejects", () => {
  const template =
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  const rows = rowsOf([{ messages: [{ role: "user", content: "a" }, { role: "assistant", content: "b" }] }, conversation]);

  test("fail (default) names the row and the template's message", () => {
    expect(() => tokenizeDataset(rows, options({ template }))).toThrow("train.jsonl:2: chat template failed: System role not supported");
  });

  test("skip counts them and warns", () => {
    const out = tokenizeDataset(rows, options({ template, onBadRow: "skip" }));
    expect([out.examples.length, out.stats.failedRows]).toEqual([1, 1]);
    expect(out.warnings[0]).toContain("1 row(s) skipped because the chat template or tokenizer failed");
  });
});

describe("real templates from the fixtures", () => {
  const fixtures = path.resolve(import.meta.dir, "../../../tests/fixtures/chat-templates");
  const cases: [file: string, special: Record<string, string>, expected: string][] = [
    ["meta-llama-Llama-3.1-8B-Instruct.jinja", { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" }, "Paris<|eot_id|>Quarn, a small town.<|eot_id|>"],
    ["Qwen-Qwen2.5-7B-Instruct.jinja", { eos_token: "<|im_end|>" }, "Paris<|im_end|>Quarn, a small town.<|im_end|>"],
  ];
  for (const [file, specialTokens, expected] of cases) {
    test(`${file}: targets are the assistant turns and their end markers`, () => {
      const template = readFileSync(path.join(fixtures, file), "utf8");
      const result = tokenizeRow(rowsOf([conversation])[0]!, options({ template, specialTokens, now: "2024-07-26T12:00:00" }));
      if (!result.ok) throw new Error("dropped");
      expect(result.skippedTurns).toEqual([]);
      expect(split(result.example.inputIds, result.example.labels).targets).toBe(expected);
    });
  }

  test("Mistral-Nemo renders the system prompt only when serving, so those turns are refused with a warning", () => {
    const template = readFileSync(path.join(fixtures, "mistralai-Mistral-Nemo-Instruct-2407.jinja"), "utf8");
    const opts = options({ template, specialTokens: { bos_token: "<s>", eos_token: "</s>" } });
    const withoutSystem = { messages: conversation.messages.slice(1) };
    const ok = tokenizeRow(rowsOf([withoutSystem])[0]!, opts);
    if (!ok.ok) throw new Error("dropped");
    expect(split(ok.example.inputIds, ok.example.labels).targets).toBe("Paris</s>Quarn, a small town.</s>");
    const out = tokenizeDataset(rowsOf([conversation, withoutSystem]), opts);
    expect(out.stats).toMatchObject({ examples: 1, droppedNoTargets: 1, skippedTurns: 2 });
    expect(out.warnings.join("\n")).toContain("chat template is not prefix-stable: 2 assistant turn(s)");
  });
});

describe("templatePrefixWarning (startup check)", () => {
  const fixtures = path.resolve(import.meta.dir, "../../../tests/fixtures/chat-templates");
  test("stable templates pass, history-rewriting ones are flagged", () => {
    expect(templatePrefixWarning(tinyModel().template.source)).toBeNull();
    const qwen3 = readFileSync(path.join(fixtures, "Qwen-Qwen3-0.6B.jinja"), "utf8");
    const nemo = readFileSync(path.join(fixtures, "mistralai-Mistral-Nemo-Instruct-2407.jinja"), "utf8");
    expect(templatePrefixWarning(nemo, { bos_token: "<s>", eos_token: "</s>" })).toContain("not prefix-stable");
    // Qwen3 gives only the final assistant turn an empty <think></think> block: earlier turns change.
    expect(templatePrefixWarning(qwen3)).toContain("assistant turn 2");
  });
});

describe("text rows and tools", () => {
  test('{"text"} rows: BOS (if any) + text + EOS, every token a target', () => {
    const o = options();
    const result = tokenizeRow(rowsOf([{ text: "Once upon a time" }])[0]!, o);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const { inputIds, labels } = result.example;
    expect([...labels]).toEqual([...inputIds]);
    expect(inputIds.at(-1)).toBe(o.tokenizer.eosId!);
    expect(tinyModel().tokenizer.decode([...inputIds], { skipSpecialTokens: true })).toBe("Once upon a time");
  });

  const tools = [{ type: "function", function: { name: "f", parameters: { type: "object", properties: {} } } }];
  const toolRow = { messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "yo" }], tools };

  test("a template that ignores tools is refused before training, naming the row", () => {
    // The tiny model's ChatML template has no tools section.
    expect(() => tokenizeDataset(rowsOf([conversation, toolRow]), options())).toThrow(
      /:2: the row has tools, but this template does not render tools \(its output is the same with and without them\)/,
    );
  });

  test("a template that fails on tools is refused with its error, not mid-training", () => {
    const template = "{% for t in tools %}{{ t.function.name - 1 }}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}";
    expect(() => tokenizeDataset(rowsOf([toolRow]), options({ template, trainOnAllTokens: true }))).toThrow(/the row has tools, but this template fails when given tools/);
  });

  test("a template that renders tools passes the check", () => {
    const template = readFileSync(path.join(import.meta.dir, "../../../tests/fixtures/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja"), "utf8");
    const set = tokenizeDataset(rowsOf([toolRow]), options({ template }));
    expect(set.examples).toHaveLength(1);
  });
});
