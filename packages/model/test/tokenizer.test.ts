import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadChatTemplate } from "../src/chat-template-file.ts";
import { IncrementalDetokenizer, loadTokenizer, ModelTokenizer } from "../src/tokenizer.ts";
import { buildTinyTokenizer, CHATML_TEMPLATE, writeTinyModel } from "../src/tiny-model.ts";

const tiny = buildTinyTokenizer();
const eot = tiny.specialIds["<|endoftext|>"];
const tinyConfig = { bos_token: "<|endoftext|>", eos_token: { content: "<|im_end|>", special: true }, pad_token: "<|endoftext|>", add_bos_token: false, clean_up_tokenization_spaces: false };
const tok = new ModelTokenizer(tiny.tokenizerJson, tinyConfig);

const samples = [
  "Hello, world!",
  "  leading and trailing spaces  ",
  "line one\nline two\n\n\ttabbed",
  "héllo naïve café — “quotes” ½",
  "日本語のテキスト と 中文",
  "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
  "combining e\u0301 and Å",
  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>",
  "",
];

describe("ModelTokenizer (byte-level BPE)", () => {
  test("special tokens from strings or AddedToken objects; vocab size counts added tokens", () => {
    expect(tok.vocabSize).toBe(tiny.vocabSize);
    expect(tok.bosId).toBe(eot);
    expect(tok.eosId).toBe(tiny.specialIds["<|im_end|>"]);
    expect(tok.padId).toBe(eot);
    expect(tok.unkId).toBeNull();
    expect(tok.tokenToId("<|im_start|>")).toBe(tiny.specialIds["<|im_start|>"]);
    expect(tok.idToToken(eot)).toBe("<|endoftext|>");
    expect(tok.isSpecialId(eot)).toBe(true);
    expect(tok.isSpecialId(0)).toBe(false);
  });

  for (const text of samples)
    test(`round trip and offsets: ${JSON.stringify(text).slice(0, 40)}`, () => {
      const { ids, offsets } = tok.encode(text);
      expect(tok.decode(ids)).toBe(text);
      expect(offsets).toBeDefined();
      expect(offsets!.length).toBe(ids.length);
      // spans are ordered, disjoint and tile the text
      expect(offsets!.map(([s, e]) => text.slice(s, e)).join("")).toBe(text);
      let prev = 0;
      for (const [s, e] of offsets!) {
        expect(s).toBe(prev);
        expect(e).toBeGreaterThanOrEqual(s);
        prev = e;
      }
    });

  test("special tokens are single ids and can be skipped when decoding", () => {
    const text = "<|im_start|>user\nhi<|im_end|>";
    const { ids, offsets } = tok.encode(text);
    expect(ids[0]).toBe(tiny.specialIds["<|im_start|>"]);
    expect(ids.at(-1)).toBe(tiny.specialIds["<|im_end|>"]);
    expect(offsets![0]).toEqual([0, "<|im_start|>".length]);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("user\nhi");
    expect(tok.decode([])).toBe("");
    expect(() => tok.decode([tiny.vocabSize])).toThrow(`token id ${tiny.vocabSize} is outside the vocabulary`);
  });

  test("add_bos_token: BOS added once, never twice when the text already starts with it", () => {
    const withBos = new ModelTokenizer(tiny.tokenizerJson, { ...tinyConfig, add_bos_token: true });
    const plain = withBos.encode("hi there");
    expect(plain.ids[0]).toBe(eot);
    expect(plain.offsets![0]).toEqual([0, 0]);
    expect(withBos.decode(plain.ids)).toBe("<|endoftext|>hi there");
    const rendered = withBos.encode("<|endoftext|>hi there");
    expect(rendered.ids).toEqual(plain.ids);
    expect(rendered.offsets![0]).toEqual([0, "<|endoftext|>".length]);
    expect(withBos.encode("hi", { addSpecialTokens: false }).ids[0]).not.toBe(eot);
  });

  test("a post-processor that adds BOS (Llama 3 style) does not double it either", () => {
    const json = structuredClone(tiny.tokenizerJson);
    json.post_processor = {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<|endoftext|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ SpecialToken: { id: "<|endoftext|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { "<|endoftext|>": { id: "<|endoftext|>", ids: [eot], tokens: ["<|endoftext|>"] } },
    };
    const llama3ish = new ModelTokenizer(json, { bos_token: "<|endoftext|>" });
    const a = llama3ish.encode("hello");
    expect(a.ids[0]).toBe(eot);
    expect(a.ids.filter((i) => i === eot)).toHaveLength(1);
    expect(a.offsets![0]).toEqual([0, 0]);
    const b = llama3ish.encode("<|endoftext|>hello");
    expect(b.ids).toEqual(a.ids);
    expect(llama3ish.encode("hello", { addSpecialTokens: false }).ids).toEqual(a.ids.slice(1));
  });

  test("incremental detokenizer emits only complete characters and reassembles the text", () => {
    for (const text of samples) {
      const { ids } = tok.encode(text);
      const detok = new IncrementalDetokenizer(tok);
      const pieces = ids.map((id) => detok.push(id));
      pieces.push(detok.flush());
      for (const p of pieces) expect(p.includes("\uFFFD")).toBe(false);
      expect(pieces.join("")).toBe(text);
      expect(detok.text).toBe(text);
    }
    // An emoji spans several byte tokens: nothing comes out until it is complete.
    const emojiIds = tok.encode("🙂").ids;
    expect(emojiIds.length).toBeGreaterThan(1);
    const d = new IncrementalDetokenizer(tok);
    expect(emojiIds.slice(0, -1).map((id) => d.push(id)).join("")).toBe("");
    expect(d.push(emojiIds.at(-1)!)).toBe("🙂");
    // Stream cut mid-character: flush hands out the replacement character.
    const cut = new IncrementalDetokenizer(tok);
    cut.push(emojiIds[0]!);
    expect(cut.flush()).toContain("\uFFFD");
    // Context ids (the prompt) are not re-emitted; skipSpecialTokens drops the stop token.
    const prompt = tok.encode("<|im_start|>assistant\n").ids;
    const answer = tok.encode("Bonjour, ça va?<|im_end|>").ids;
    const s = new IncrementalDetokenizer(tok, { contextIds: prompt, skipSpecialTokens: true });
    expect(answer.map((id) => s.push(id)).join("") + s.flush()).toBe("Bonjour, ça va?");
  });
});

describe("non-byte-level tokenizers: offsets from incremental decoding", () => {
  // A SentencePiece-style (Metaspace) BPE: "▁" marks a word start.
  const chars = ["<unk>", "▁", "h", "i", "t", "e", "r", "▁h", "▁hi", "▁t", "▁th", "er", "e▁"];
  const vocab = Object.fromEntries(chars.map((c, i) => [c, i]));
  const spJson = {
    version: "1.0", truncation: null, padding: null,
    added_tokens: [{ id: 0, content: "<unk>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
    post_processor: null,
    decoder: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
    model: { type: "BPE", dropout: null, unk_token: "<unk>", continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: false, vocab, merges: ["▁ h", "▁h i", "▁ t", "▁t h", "e r"] },
  };
  test("offsets tile the text", () => {
    const sp = new ModelTokenizer(spJson, { unk_token: "<unk>" });
    const text = "hi there hi";
    const { ids, offsets } = sp.encode(text);
    expect(sp.decode(ids)).toBe(text);
    expect(offsets).toBeDefined();
    expect(offsets!.map(([s, e]) => text.slice(s, e)).join("")).toBe(text);
    expect(sp.unkId).toBe(0);
  });
});

describe("loadTokenizer", () => {
  test("reads the directory; chat_template.jinja wins over tokenizer_config (one template reader); errors name the file and field", () => {
    const dir = mkdtempSync(join(tmpdir(), "tok-"));
    writeTinyModel(dir, { arch: "qwen2" });
    const t = loadTokenizer(dir);
    expect(loadChatTemplate(dir).source).toBe(CHATML_TEMPLATE);
    expect(t.eosToken).toBe("<|im_end|>");
    // Qwen2.5's config: no BOS token, no add_bos_token key.
    expect(t.bosToken).toBeNull();
    expect(t.addBosToken).toBeNull();
    expect(t.modelMaxLength).toBe(2048);
    writeFileSync(join(dir, "chat_template.jinja"), "{{ messages }}");
    expect(loadChatTemplate(dir).source).toBe("{{ messages }}");
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ eos_token: "<missing>" }));
    expect(() => loadTokenizer(dir)).toThrow(`${join(dir, "tokenizer_config.json")}: field 'eos_token': token '<missing>' is not in the vocabulary`);
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ chat_template: [{ name: "tool_use", template: "T" }, { name: "default", template: "D" }] }));
    rmSync(join(dir, "chat_template.jinja"));
    expect(loadChatTemplate(dir).source).toBe("D");
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0" }));
    expect(() => loadTokenizer(dir)).toThrow("tokenizer.json: field 'model': missing");
    const empty = mkdtempSync(join(tmpdir(), "tok-"));
    expect(() => loadTokenizer(empty)).toThrow("tokenizer.json: not found");
  });
});
