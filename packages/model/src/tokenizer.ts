// tokenizer.json + tokenizer_config.json → ModelTokenizer, on top of @huggingface/tokenizers.
//
// What this layer adds to the library:
//  - special tokens (bos/eos/pad/unk) from tokenizer_config.json, as strings or AddedToken objects;
//  - `add_bos_token: true` honoured, and never a second BOS when the text (typically a rendered chat
//    template) already starts with the BOS string;
//  - per-token character offsets, which the library does not return (needed for assistant masks):
//    exact for byte-level BPE (Llama 3, SmolLM2, Qwen2), via incremental decoding otherwise;
//  - an incremental detokenizer for streaming that emits only complete UTF-8 text.
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ModelFileError } from "./config.ts";
import { type Json, readJsonObject, readTokenizerConfig, specialTokenContent } from "./tokenizer-config.ts";

export interface EncodeOptions {
  /** Let the tokenizer add its special tokens (BOS, ...). Default true, as in transformers. */
  addSpecialTokens?: boolean;
}

export interface EncodeResult {
  ids: number[];
  /**
   * Per token, [start, end) in UTF-16 code units of the encoded text (`text.slice(start, end)`).
   * Tokens the tokenizer inserted (BOS) are empty spans. Undefined when the tokens do not decode back
   * to exactly the input (a normalizer changed it, or an added token stripped whitespace), since
   * any alignment would then be a guess.
   */
  offsets?: [number, number][];
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

/** GPT-2's reversible byte → printable-unicode map used by byte-level BPE (bytes_to_unicode). */
export function byteToUnicodeTable(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const table = new Array<string>(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.includes(b)) table[b] = String.fromCodePoint(b);
    else table[b] = String.fromCodePoint(256 + next++);
  }
  return table;
}

const BYTE_TO_UNICODE = byteToUnicodeTable();
const UNICODE_TO_BYTE = new Map(BYTE_TO_UNICODE.map((ch, b) => [ch, b]));

function usesByteLevel(component: unknown): boolean {
  if (!component || typeof component !== "object") return false;
  const c = component as Json;
  if (c.type === "ByteLevel") return true;
  const parts = (c.pretokenizers ?? c.decoders) as unknown[] | undefined;
  return c.type === "Sequence" && Array.isArray(parts) && parts.some(usesByteLevel);
}

export class ModelTokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  readonly unkId: number | null;
  /** tokenizer_config `add_bos_token`; null when the config leaves BOS to tokenizer.json's post-processor. */
  readonly addBosToken: boolean | null;
  /** Number of ids, added tokens included (max id + 1). May be smaller than config.json's vocab_size. */
  readonly vocabSize: number;
  readonly modelMaxLength: number | null;
  private readonly hf: HfTokenizer;
  private readonly cleanUpSpaces: boolean;
  private readonly byteLevel: boolean;
  private readonly postProcessorAddsTokens: boolean;
  private readonly addedTokenContent: Map<string, number>;
  private readonly specialIds: Set<number>;

  constructor(tokenizerJson: Json, tokenizerConfig: Json, options: { source?: string } = {}) {
    const source = options.source ?? "tokenizer.json";
    const configSource = source.replace(/tokenizer\.json$/, "tokenizer_config.json");
    if (typeof tokenizerJson !== "object" || tokenizerJson === null || typeof tokenizerJson.model !== "object")
      throw new ModelFileError(`${source}: field 'model': missing (not a Hugging Face tokenizer.json)`);
    try {
      this.hf = new HfTokenizer(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw new ModelFileError(`${source}: cannot load tokenizer: ${(e as Error).message}`);
    }
    this.cleanUpSpaces = tokenizerConfig.clean_up_tokenization_spaces === true;
    this.byteLevel = usesByteLevel(tokenizerJson.pre_tokenizer) && usesByteLevel(tokenizerJson.decoder);
    const pp = tokenizerJson.post_processor as Json | null | undefined;
    this.postProcessorAddsTokens = !!pp && pp.type !== "ByteLevel";
    const added = (tokenizerJson.added_tokens ?? []) as { id: number; content: string; special?: boolean }[];
    this.addedTokenContent = new Map(added.map((t) => [t.content, t.id]));
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));

    let maxId = -1;
    for (const id of this.hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    const idOf = (field: string, token: string | null): number | null => {
      if (token === null) return null;
      const id = this.tokenToId(token);
      if (id === undefined) throw new ModelFileError(`${configSource}: field '${field}': token '${token}' is not in the vocabulary of ${source}`);
      return id;
    };
    this.bosToken = specialTokenContent(tokenizerConfig, "bos_token", configSource);
    this.eosToken = specialTokenContent(tokenizerConfig, "eos_token", configSource);
    this.padToken = specialTokenContent(tokenizerConfig, "pad_token", configSource);
    this.unkToken = specialTokenContent(tokenizerConfig, "unk_token", configSource);
    this.bosId = idOf("bos_token", this.bosToken);
    this.eosId = idOf("eos_token", this.eosToken);
    this.padId = idOf("pad_token", this.padToken);
    this.unkId = idOf("unk_token", this.unkToken);
    const addBos = tokenizerConfig.add_bos_token;
    this.addBosToken = typeof addBos === "boolean" ? addBos : null;
    const maxLen = tokenizerConfig.model_max_length;
    // transformers writes a huge sentinel (1e30) when there is no limit.
    this.modelMaxLength = typeof maxLen === "number" && maxLen < 1e15 ? maxLen : null;
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  encode(text: string, options: EncodeOptions = {}): EncodeResult {
    const addSpecial = options.addSpecialTokens ?? true;
    const core = this.hf.encode(text, { add_special_tokens: false });
    let ids = addSpecial && this.postProcessorAddsTokens ? this.hf.encode(text, { add_special_tokens: true }).ids : core.ids;
    if (addSpecial && this.bosId !== null) {
      if (this.addBosToken === true && ids[0] !== this.bosId) ids = [this.bosId, ...ids];
      // A rendered chat template already carries BOS; a second one shifts the model off distribution.
      if (this.bosToken !== null && text.startsWith(this.bosToken) && ids[0] === this.bosId && ids[1] === this.bosId) ids = ids.slice(1);
    }
    const coreOffsets = this.coreOffsets(text, core.tokens, core.ids);
    if (!coreOffsets) return { ids };
    // Tokens the post-processor added sit around the core sequence: find where the core starts.
    let start = -1;
    for (let s = 0; s + core.ids.length <= ids.length && start < 0; s++)
      if (core.ids.every((id, i) => ids[s + i] === id)) start = s;
    if (start < 0) return { ids };
    const offsets: [number, number][] = ids.map((_, i) =>
      i < start ? [0, 0] : i >= start + core.ids.length ? [text.length, text.length] : coreOffsets[i - start]!,
    );
    return { ids, offsets };
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return "";
    for (const id of ids)
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize)
        throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    return this.hf.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false, clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  private coreOffsets(text: string, tokens: string[], ids: number[]): [number, number][] | null {
    if (this.byteLevel) {
      const exact = byteLevelOffsets(text, tokens, this.addedTokenContent);
      if (exact) return exact;
    }
    return decodedOffsets(this, text, ids);
  }
}

/**
 * Byte-level BPE: each token string maps back to the exact bytes it covers, so offsets are exact.
 * Returns null if the bytes do not reassemble the text (e.g. a normalizer rewrote it).
 */
function byteLevelOffsets(text: string, tokens: string[], added: Map<string, number>): [number, number][] | null {
  const textBytes = new TextEncoder().encode(text);
  const spans: [number, number][] = [];
  let pos = 0;
  const encoder = new TextEncoder();
  for (const token of tokens) {
    const start = pos;
    if (added.has(token)) {
      const bytes = encoder.encode(token);
      for (const b of bytes) if (textBytes[pos++] !== b) return null;
    } else {
      for (const ch of token) {
        const b = UNICODE_TO_BYTE.get(ch);
        if (b === undefined || textBytes[pos++] !== b) return null;
      }
    }
    spans.push([start, pos]);
  }
  if (pos !== textBytes.length) return null;
  // UTF-8 byte offset → UTF-16 index, at code point boundaries.
  const utf16AtByte = new Int32Array(textBytes.length + 1).fill(-1);
  let b = 0;
  let u = 0;
  for (const ch of text) {
    utf16AtByte[b] = u;
    const cp = ch.codePointAt(0)!;
    b += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    u += ch.length;
  }
  utf16AtByte[b] = u;
  const ceil = (i: number) => {
    while (utf16AtByte[i] === -1) i++;
    return utf16AtByte[i]!;
  };
  // A character split across tokens belongs to the token holding its first byte; spans stay disjoint and ordered.
  return spans.map(([s, e]) => [ceil(s), ceil(e)] as [number, number]);
}

/**
 * Generic offsets: feed the ids through the incremental detokenizer and attribute each emitted piece
 * of text to the token that completed it (a token that only starts a multi-byte character gets an
 * empty span). Cost is linear in the number of tokens. Null if the text is not reproduced exactly.
 */
function decodedOffsets(tokenizer: ModelTokenizer, text: string, ids: number[]): [number, number][] | null {
  const detok = new IncrementalDetokenizer(tokenizer);
  const offsets: [number, number][] = [];
  for (const id of ids) {
    const before = detok.text.length;
    detok.push(id);
    offsets.push([before, detok.text.length]);
  }
  const tail = detok.flush();
  if (tail && offsets.length) offsets[offsets.length - 1]![1] += tail.length;
  return detok.text === text ? offsets : null;
}

/** Load `<dir>/tokenizer.json` and `<dir>/tokenizer_config.json` (optional). The chat template is chat-template-file.ts's. */
export function loadTokenizer(dir: string): ModelTokenizer {
  const tokenizerPath = join(dir, "tokenizer.json");
  if (!existsSync(tokenizerPath)) throw new ModelFileError(`${tokenizerPath}: not found (only fast tokenizers, tokenizer.json, are supported)`);
  return new ModelTokenizer(readJsonObject(tokenizerPath), readTokenizerConfig(dir).config, { source: tokenizerPath });
}

/**
 * Streaming detokenization, as vLLM's detokenize_incrementally: decode a short window of recent ids
 * twice (with and without the newest) and emit the difference, but only once it no longer ends in
 * U+FFFD, i.e. once a multi-byte character is complete. Decoding a window rather than single ids keeps
 * tokenizer-specific spacing (SentencePiece's leading-space rule) right.
 */
export class IncrementalDetokenizer {
  /** Everything emitted so far. */
  text = "";
  private readonly ids: number[];
  private prefixOffset: number;
  private readOffset: number;
  private readonly skipSpecialTokens: boolean;

  /** `contextIds` (e.g. the prompt) are treated as already shown: they shape spacing but are not emitted. */
  constructor(
    private readonly tokenizer: ModelTokenizer,
    options: { skipSpecialTokens?: boolean; contextIds?: readonly number[] } = {},
  ) {
    this.skipSpecialTokens = options.skipSpecialTokens ?? false;
    this.ids = [...(options.contextIds ?? [])];
    this.readOffset = this.ids.length;
    this.prefixOffset = Math.max(0, this.readOffset - 5);
  }

  /** Add one id; returns the newly completed text ("" while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const opts = { skipSpecialTokens: this.skipSpecialTokens };
    const prefixText = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const newText = this.tokenizer.decode(this.ids.slice(this.prefixOffset), opts);
    if (newText.length > prefixText.length && !newText.endsWith("\uFFFD")) {
      const delta = newText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.text += delta;
      return delta;
    }
    return "";
  }

  /** End of stream: emit whatever is pending, incomplete characters as U+FFFD. */
  flush(): string {
    if (this.readOffset === this.ids.length) return "";
    const opts = { skipSpecialTokens: this.skipSpecialTokens };
    const prefixText = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const newText = this.tokenizer.decode(this.ids.slice(this.prefixOffset), opts);
    const delta = newText.slice(prefixText.length);
    this.prefixOffset = this.readOffset = this.ids.length;
    this.text += delta;
    return delta;
  }
}
