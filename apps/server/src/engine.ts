/**
 * What the HTTP server needs from an inference engine. The server never touches weights or
 * kernels: it renders and tokenizes prompts, hands token ids to `submit`, and turns the token
 * events that come back into OpenAI responses. An engine is built for continuous batching:
 * `submit` only enqueues; the engine's own loop decodes every active sequence one token per
 * step, and sequences join and leave between steps.
 *
 * Implementations: `CpuReferenceEngine` (./cpu-engine.ts, float64 reference forward, exact and
 * slow, for tiny models and tests) and `GpuEngine` (./gpu-engine.ts, KV cache on WebGPU), both
 * over the one generation loop of ./batching-engine.ts.
 */

/** One generated token (or candidate) with its log-probability under the model's raw distribution. */
export interface TokenLogprob {
  tokenId: number;
  /** log softmax of the raw logits (before temperature, top-k, top-p), as vLLM reports by default. */
  logprob: number;
}

/** What `submit` is asked to generate. The server has validated every field before this point. */
export interface GenerationRequest {
  /** Prompt token ids; 1 ≤ length and length + maxTokens ≤ engine.maxContext. */
  promptIds: readonly number[];
  /** Most tokens to generate, ≥ 1. Reaching it ends the sequence with finishReason "length". */
  maxTokens: number;
  /** 0 means greedy (argmax, ties to the lowest id): deterministic whatever else runs in the batch. */
  temperature: number;
  /** Nucleus sampling mass in (0, 1]; 1 disables it. */
  topP: number;
  /** Keep the k most likely tokens; 0 disables it. */
  topK: number;
  /** Seed of this sequence's own random stream, so a seeded request samples the same tokens alone or batched; null: engine picks one. */
  seed: number | null;
  /** Generating one of these ends the sequence with finishReason "stop" (the event still carries it). */
  stopTokenIds: readonly number[];
  /** HF/vLLM repetition penalty over prompt + generated tokens: a seen token's logit is divided by it when > 0, multiplied when ≤ 0. Absent or 1: off. */
  repetitionPenalty?: number;
  /** OpenAI presence penalty: subtracted once from the logit of each token generated so far. Absent or 0: off. */
  presencePenalty?: number;
  /** OpenAI frequency penalty: subtracted per occurrence among the generated tokens. Absent or 0: off. */
  frequencyPenalty?: number;
  /** Keep tokens whose probability after temperature is ≥ minP × the most likely one's. Absent or 0: off. */
  minP?: number;
  /** stopTokenIds cannot be sampled before this many tokens are generated. Absent or 0: off. */
  minTokens?: number;
  /** The LoRA adapter (its served name) this sequence runs with; absent or null: the base model. */
  adapter?: string | null;
  /** Report the sampled token's logprob on each event. */
  logprobs: boolean;
  /** Also report the this-many most likely alternatives (0..20) on each event. */
  topLogprobs: number;
}

export interface TokenEvent {
  tokenId: number;
  /** Set when the request asked for logprobs, else null. */
  logprob: number | null;
  /** The `topLogprobs` most likely tokens, most likely first; null when not asked for. */
  topLogprobs: TokenLogprob[] | null;
  /** Non-null on the last event only: "stop" (tokenId is a stop token) or "length" (maxTokens reached). */
  finishReason: "stop" | "length" | null;
}

/** Turns generated ids into text as they arrive, holding back incomplete UTF-8 characters. */
export interface StreamingDetokenizer {
  /** Feed one id; returns the newly completed text ("" while a character is incomplete). */
  push(id: number): string;
  /** End of stream: whatever is still pending. */
  flush(): string;
}

export interface EngineTokenizer {
  /** addSpecialTokens: completions prompts true (BOS as the tokenizer adds it); rendered chat false (the template wrote them). */
  encode(text: string, options?: { addSpecialTokens?: boolean }): { ids: number[] };
  /** A rendered chat prompt → ids by the prompt rule training used (@tuneloom/model's encodeChatText). */
  encodeChat(text: string): { ids: number[] };
  /** Throws RangeError for an id outside the vocabulary. */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
  /** `contextIds` (the prompt) shape spacing of the first generated tokens but are not emitted. */
  createDetokenizer(options: { skipSpecialTokens?: boolean; contextIds?: readonly number[] }): StreamingDetokenizer;
  /** Number of ids, added tokens included. */
  readonly vocabSize: number;
  /** Tokens that end a turn by default (generation_config / config eos ids, tokenizer eos). */
  readonly eosTokenIds: readonly number[];
}

export interface EngineChatTemplate {
  /** The exact template source the prompts are rendered with (the adapter's when it has one). */
  source: string;
  /** Hex sha256 of the source's UTF-8 bytes; equals training_args.json's `chat_template_sha256`. */
  sha256: string;
  /** Where it was read from, for the startup log. */
  origin: string;
  /** bos_token / eos_token / ... strings passed to the template as variables. */
  specialTokens: { bos_token?: string; eos_token?: string; pad_token?: string; unk_token?: string };
}

/** One name a client may send as `model`: the base, or an adapter over it (vLLM's LoRA serving). */
export interface ServedModel {
  /** What clients send as `model` and /v1/models lists. */
  readonly id: string;
  /** The base's id for an adapter (vLLM's `parent`), null for the base. */
  readonly parent: string | null;
  /** The directory it was read from (vLLM's `root` for an adapter is its path). */
  readonly root: string;
  /** GenerationRequest.adapter for it: the adapter's name, null for the base. */
  readonly adapter: string | null;
  /** Its own tokenizer (an adapter may ship one) and stop ids. */
  readonly tokenizer: EngineTokenizer;
  /** Its own training template (hash-checked against training_args.json when loaded). */
  readonly chatTemplate: EngineChatTemplate;
}

export interface InferenceEngine {
  /** The id clients pass as `model` and `/v1/models` lists. */
  readonly modelId: string;
  /** Prompt plus generated tokens of one sequence never exceed this. */
  readonly maxContext: number;
  /** Most sequences decoded together in one step; the server's scheduler admits no more than this at once. */
  readonly maxBatchSize: number;
  readonly tokenizer: EngineTokenizer;
  readonly chatTemplate: EngineChatTemplate;
  /**
   * Enqueue one sequence. Events arrive as the engine's loop produces them (buffered if the
   * consumer is slow); the iterable ends after the event whose finishReason is set. When
   * `signal` aborts, the engine drops the sequence at its next step boundary, frees its KV
   * cache, and the iterable ends without further events and without throwing. An engine
   * failure is thrown from the iterator.
   */
  submit(request: GenerationRequest, signal: AbortSignal): AsyncIterable<TokenEvent>;
  /**
   * Every model this engine serves, the default (modelId) first. Absent: only modelId, with the
   * engine's own tokenizer and template.
   */
  models?(): readonly ServedModel[];
  /** Load a PEFT adapter directory under `name` while serving (vLLM's /v1/load_lora_adapter). Throws ApiError when refused. */
  loadAdapter?(name: string, dir: string): Promise<ServedModel>;
  /** Stop serving `name`: new requests for it are refused at once; resolves when its last running request has ended. */
  unloadAdapter?(name: string): Promise<void>;
  /** Stop the loop and free resources; pending sequences end as if aborted. */
  close(): Promise<void>;
}
