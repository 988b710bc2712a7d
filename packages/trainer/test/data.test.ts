import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { DataError, loadJsonl, loadTrainingData, parseJsonl, splitEval } from "../src/data.ts";
import { tempDir } from "./helpers.ts";

const good = JSON.stringify({ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] });

function errorOf(text: string, file = "train.jsonl"): DataError {
  try {
    parseJsonl(text, file);
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    return e as DataError;
  }
  throw new Error("expected a DataError");
}

describe("row validation names file, line and field", () => {
  test("wrong role", () => {
    const bad = JSON.stringify({ messages: [{ role: "user", content: "a" }, { role: "assistant", content: "b" }, { role: "bot", content: "c" }] });
    const lines = Array.from({ length: 16 }, () => good).concat(bad).join("\n");
    const e = errorOf(lines);
    expect(e.message).toBe('train.jsonl:17: messages[2].role: expected one of system|developer|user|assistant|tool, got "bot"');
    expect([e.file, e.line, e.field]).toEqual(["train.jsonl", 17, "messages[2].role"]);
  });

  test("broken JSON line", () => {
    const e = errorOf(`${good}\n{"messages": [{"role": "user",`);
    expect(e.line).toBe(2);
    expect(e.message).toStartWith("train.jsonl:2: invalid JSON");
  });

  test("empty messages", () => {
    expect(errorOf(`{"messages": []}`).message).toBe("train.jsonl:1: messages: must not be empty");
  });

  test("no assistant turn", () => {
    const e = errorOf(JSON.stringify({ messages: [{ role: "system", content: "s" }, { role: "user", content: "u" }] }));
    expect(e.field).toBe("messages");
    expect(e.message).toContain("no assistant message");
  });

  test("content parts: only text, with the bad part named", () => {
    const row = (content: unknown) => JSON.stringify({ messages: [{ role: "user", content }, { role: "assistant", content: "x" }] });
    expect(errorOf(row([{ type: "text", text: "a" }, { type: "image_url", image_url: "u" }])).message).toBe(
      'train.jsonl:1: messages[0].content[1].type: expected "text", got "image_url"',
    );
    expect(errorOf(row(5)).field).toBe("messages[0].content");
    expect(parseJsonl(row([{ type: "text", text: "a" }]), "f").goodRows).toBe(1);
  });

  test("missing content is allowed only for assistant tool calls", () => {
    const toolCall = { type: "function", function: { name: "f", arguments: { x: 1 } } };
    const ok = { messages: [{ role: "user", content: "u" }, { role: "assistant", tool_calls: [toolCall] }, { role: "tool", content: "1" }, { role: "assistant", content: "done" }], tools: [{ type: "function" }] };
    const parsed = parseJsonl(JSON.stringify(ok), "f");
    expect(parsed.rows[0]!.kind).toBe("messages");
    expect(parsed.rows[0]!.tools).toEqual([{ type: "function" }]);
    expect(errorOf(JSON.stringify({ messages: [{ role: "user" }, { role: "assistant", content: "a" }] })).field).toBe("messages[0].content");
    expect(errorOf(JSON.stringify({ messages: [{ role: "user", content: "u", tool_calls: [toolCall] }, { role: "assistant", content: "a" }] })).field).toBe("messages[0].tool_calls");
  });

  test("prompt/completion rows", () => {
    const rows = parseJsonl(
      [
        JSON.stringify({ prompt: "2+2=", completion: "4" }),
        JSON.stringify({ prompt: [{ role: "user", content: "2+2?" }], completion: [{ role: "assistant", content: "4" }] }),
      ].join("\n"),
      "pc.jsonl",
    ).rows;
    expect(rows.map((r) => r.kind)).toEqual(["prompt-completion", "prompt-completion"]);
    expect(rows[1]!.source).toEqual({ file: "pc.jsonl", line: 2 });
    expect(errorOf(JSON.stringify({ prompt: "a" })).field).toBe("completion");
    expect(errorOf(JSON.stringify({ prompt: "a", completion: [{ role: "assistant", content: "b" }] })).message).toContain("must both be strings or both message lists");
    expect(errorOf(JSON.stringify({ prompt: [{ role: "user", content: "a" }], completion: [{ role: "user", content: "b" }] })).message).toContain("completion: no assistant message");
    expect(errorOf(JSON.stringify({ question: "x" })).message).toContain(`expected a "messages" field, "prompt" and "completion" fields, or a "text" field`);
    expect(errorOf(`[1, 2]`).message).toBe("train.jsonl:1: expected a JSON object, got number 1"); // a JSON array of rows
    expect(errorOf(`{"text": "a"}\n[1]`).message).toBe("train.jsonl:2: expected a JSON object, got a list");
  });

  test("text rows (TRL language modelling)", () => {
    const rows = parseJsonl(`{"text": "Once upon a time"}\n{"text": "The end."}`, "lm.jsonl").rows;
    expect(rows).toEqual([
      { kind: "text", text: "Once upon a time", source: { file: "lm.jsonl", line: 1 } },
      { kind: "text", text: "The end.", source: { file: "lm.jsonl", line: 2 } },
    ]);
    expect(errorOf(`{"text": ""}`).message).toBe("train.jsonl:1: text: empty: nothing to train on");
    expect(errorOf(`{"text": 3}`).message).toBe("train.jsonl:1: text: expected string, got number 3");
  });

  test("a JSON array of rows, each reported by the line it starts on", () => {
    const text = `[\n  {"text": "a"},\n  {"messages": [\n    {"role": "user", "content": "hi"},\n    {"role": "assistant", "content": "yo"}]},\n  {"text": "s, [x] {y} \\" ok"}\n]\n`;
    const rows = parseJsonl(text, "d.json").rows;
    expect(rows.map((r) => [r.kind, r.source.line])).toEqual([["text", 2], ["messages", 3], ["text", 6]]);
    const bad = `[\n {"text": "a"},\n {"messages": [{"role": "robot", "content": "x"}]}\n]`;
    expect(errorOf(bad).message).toStartWith("train.jsonl:3: messages[0].role: expected one of");
    expect(errorOf(`[{"text": "a"},`).message).toStartWith("train.jsonl:1: invalid JSON");
  });

  test("preference rows are refused by name, with file and line", () => {
    const e = errorOf(`{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{"prompt": "q", "chosen": "good", "rejected": "bad"}`);
    expect(e.message).toStartWith("train.jsonl:2: preference data (prompt/chosen/rejected) is not supported");
    expect(errorOf(`{"chosen": [{"role": "user", "content": "a"}], "rejected": []}`).message).toContain("preference data (chosen/rejected) is not supported");
  });

  test("blank lines are skipped and line numbers stay true", () => {
    const e = errorOf(`${good}\n\n\r\n{"messages": []}\n`);
    expect(e.line).toBe(4);
    expect(parseJsonl(`\n${good}\n\n${good}\n`, "f").goodRows).toBe(2);
  });
});

describe("bad-row policy", () => {
  const text = [good, "{oops", good, `{"messages": []}`, good].join("\n");

  test("fail (default) stops at the first bad row", () => {
    expect(() => parseJsonl(text, "t.jsonl")).toThrow("t.jsonl:2: invalid JSON");
  });

  test("skip keeps the good rows and counts the bad", () => {
    const d = parseJsonl(text, "t.jsonl", { onBadRow: "skip" });
    expect(d.goodRows).toBe(3);
    expect(d.badRows).toBe(2);
    expect(d.errors.map((e) => e.line)).toEqual([2, 4]);
    expect(d.rows.map((r) => r.source.line)).toEqual([1, 3, 5]);
  });

  test("a file with no good rows is an error either way", () => {
    expect(() => parseJsonl("{bad\n", "t.jsonl", { onBadRow: "skip" })).toThrow("t.jsonl: no usable training rows");
    expect(() => parseJsonl("\n\n", "t.jsonl")).toThrow("no usable training rows");
  });
});

describe("files and eval split", () => {
  test("loadJsonl names the path given; a missing file says so", () => {
    const dir = tempDir();
    const file = path.join(dir, "train.jsonl");
    writeFileSync(file, `${good}\n{"messages": [{"role": "bot", "content": "x"}]}\n`);
    expect(() => loadJsonl(file)).toThrow(`${file}:2: messages[0].role`);
    expect(() => loadJsonl(path.join(dir, "nope.jsonl"))).toThrow("cannot read training data (ENOENT)");
  });

  test("evalFraction split is deterministic by seed, disjoint and complete", () => {
    const rows = Array.from({ length: 50 }, (_, i) => i);
    const a = splitEval(rows, 0.2, 7);
    const b = splitEval(rows, 0.2, 7);
    const c = splitEval(rows, 0.2, 8);
    expect(a).toEqual(b);
    expect(a.eval.length).toBe(10);
    expect([...a.train, ...a.eval].sort((x, y) => x - y)).toEqual(rows);
    expect(a.eval).not.toEqual(c.eval);
    expect(a.train).toEqual([...a.train].sort((x, y) => x - y)); // file order kept
    expect(splitEval([1, 2, 3], 0.01, 0).eval.length).toBe(1);
    expect(() => splitEval([1], 0.5, 0)).toThrow("at least 2 rows");
  });

  test("loadTrainingData: eval file or fraction, with a report", () => {
    const dir = tempDir();
    const train = path.join(dir, "train.jsonl");
    const evalFile = path.join(dir, "eval.jsonl");
    writeFileSync(train, Array.from({ length: 10 }, () => good).join("\n") + "\n{bad\n");
    writeFileSync(evalFile, good + "\n");
    const withFile = loadTrainingData({ trainFile: train, evalFile, seed: 1, onBadRow: "skip" });
    expect([withFile.train.length, withFile.eval.length, withFile.badRows]).toEqual([10, 1, 1]);
    expect(withFile.report[0]).toContain("10 rows (1 bad row skipped");
    const withFraction = loadTrainingData({ trainFile: train, evalFraction: 0.3, seed: 1, onBadRow: "skip" });
    expect([withFraction.train.length, withFraction.eval.length]).toEqual([7, 3]);
    expect(() => loadTrainingData({ trainFile: train, evalFile, evalFraction: 0.1, seed: 1 })).toThrow("not both");
  });
});

describe("UTF-8", () => {
  const utf8Row = (content: string) => JSON.stringify({ messages: [{ role: "user", content }, { role: "assistant", content: "ok" }] });
  // Line 3 holds "café" in Latin-1 (0xE9 alone is not UTF-8); line 2 has valid multi-byte text.
  const latin1 = Buffer.concat([
    Buffer.from(`${good}\n${utf8Row("naïve 日本 🎉")}\n`, "utf8"),
    Buffer.from(utf8Row("caf\u00e9"), "latin1"),
    Buffer.from("\n", "utf8"),
  ]);

  test("invalid UTF-8 is an error naming file:line and the byte, pointing at --allow-replacement", () => {
    const file = path.join(tempDir(), "train.jsonl");
    writeFileSync(file, latin1);
    let error: unknown;
    try {
      loadTrainingData({ trainFile: file, seed: 1 });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(DataError);
    expect((error as DataError).message).toStartWith(`${file}:3: invalid UTF-8 at byte `);
    expect((error as DataError).message).toContain("(0xe9 0x22");
    expect((error as DataError).message).toContain("--allow-replacement");
  });

  test("--allow-replacement reads bad bytes as U+FFFD and says on which lines", () => {
    const file = path.join(tempDir(), "train.jsonl");
    writeFileSync(file, latin1);
    const data = loadTrainingData({ trainFile: file, seed: 1, allowReplacement: true });
    expect(data.train.length).toBe(3);
    const third = data.train[2]!;
    expect(third.kind === "messages" && third.messages[0]!.content).toBe("caf\uFFFD");
    const second = data.train[1]!;
    expect(second.kind === "messages" && second.messages[0]!.content).toBe("naïve 日本 🎉");
    expect(data.report[0]).toContain("invalid UTF-8 read as U+FFFD on 1 line, first: line 3");
  });

  test("the validator refuses overlong forms, surrogates and truncated sequences like TextDecoder does", () => {
    for (const bad of [[0xc0, 0xaf], [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe6, 0x97], [0xff]]) {
      const file = path.join(tempDir(), "t.jsonl");
      writeFileSync(file, Buffer.concat([Buffer.from(`${good}\n"`), Buffer.from(bad), Buffer.from(`"\n`)]));
      expect(() => loadJsonl(file)).toThrow(`${file}:2: invalid UTF-8 at byte 2 of the line`);
    }
    const file = path.join(tempDir(), "bom.jsonl");
    writeFileSync(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`${good}\n`)]));
    expect(loadJsonl(file).goodRows).toBe(1);
  });
});
