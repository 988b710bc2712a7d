/**
 * Request bodies, validated with zod before anything else touches them. The generation
 * endpoints take only the fields listed here: an unknown one is a 400 naming it (OpenAI's own
 * behaviour; a field silently dropped is a setting the client believes is in force), fields we
 * know but cannot honour are refused with the reason, and every failure becomes a 400 naming
 * the field (`param`) in OpenAI's error body.
 */
import { z } from "zod";
import { badRequest, type ApiError } from "./errors.ts";

const textPart = z.object({ type: z.literal("text"), text: z.string() });
const content = z.union([z.string(), z.array(textPart)], {
  error: "must be a string or an array of text parts ({\"type\": \"text\", \"text\": ...}); only text content is supported",
});

const toolCall = z.object({
  id: z.string().optional(),
  type: z.literal("function").optional(),
  function: z.object({ name: z.string(), arguments: z.union([z.string(), z.record(z.string(), z.unknown())]) }),
});

const name = z.string().optional();

const messageShape = z.discriminatedUnion(
  "role",
  [
    z.object({ role: z.literal("system"), content, name }),
    z.object({ role: z.literal("developer"), content, name }),
    z.object({ role: z.literal("user"), content, name }),
    z.object({
      role: z.literal("assistant"),
      content: content.nullish(),
      name,
      tool_calls: z.array(toolCall).nullish(),
      reasoning_content: z.string().nullish(),
    }),
    z.object({ role: z.literal("tool"), content, tool_call_id: z.string().optional(), name }),
  ],
  { error: "role must be one of system, developer, user, assistant, tool" },
);
/**
 * A message is checked against the shape above but reaches the template exactly as sent (key
 * order, content parts, tool-call arguments as string or object, extra fields), as the trainer
 * passes training rows and as transformers' apply_chat_template does: the prompt the server
 * renders must be byte-identical to what training rendered for the same conversation.
 */
export const messageSchema = z.record(z.string(), z.unknown()).superRefine((value, ctx) => {
  const parsed = messageShape.safeParse(value);
  if (!parsed.success) for (const issue of parsed.error.issues) ctx.addIssue({ code: "custom", message: issue.message, path: issue.path as (string | number)[] });
});
export type ChatMessageInput = z.infer<typeof messageShape>;

const toolShape = z.looseObject({
  type: z.literal("function"),
  function: z.looseObject({ name: z.string(), description: z.string().optional(), parameters: z.record(z.string(), z.unknown()).optional() }),
});
/**
 * Tools reach the template exactly as sent: templates `tojson` them, and a parsed copy would
 * come out in schema key order instead of the client's. So: check the shape, keep the value.
 */
const tool = z.record(z.string(), z.unknown()).superRefine((value, ctx) => {
  const parsed = toolShape.safeParse(value);
  if (!parsed.success) for (const issue of parsed.error.issues) ctx.addIssue({ code: "custom", message: issue.message, path: issue.path as (string | number)[] });
});

const stop = z.union([z.string(), z.array(z.string()).max(16)], { error: "must be a string or an array of at most 16 strings" }).nullish();
const positiveInt = z.number().int().min(1);

/** Fields of both endpoints that shape sampling; logit_bias only empty. */
const samplingFields = {
  model: z.string().optional(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(-1).nullish(),
  seed: z.number().int().nullish(),
  stop,
  stop_token_ids: z.array(z.number().int().min(0)).nullish(),
  ignore_eos: z.boolean().nullish(),
  n: z.number().int().min(1).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().nullish(), continuous_usage_stats: z.boolean().nullish() }).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  repetition_penalty: z.number().gt(0).max(100).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  min_tokens: z.number().int().min(0).nullish(),
  logit_bias: z.record(z.string(), z.number()).nullish(),
  user: z.string().nullish(),
};

export const chatCompletionSchema = z.strictObject({
  ...samplingFields,
  messages: z.array(messageSchema).min(1, { error: "must hold at least one message" }),
  max_tokens: positiveInt.nullish(),
  max_completion_tokens: positiveInt.nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  tools: z.array(tool).nullish(),
  tool_choice: z
    .union([z.enum(["none", "auto", "required"]), z.object({ type: z.literal("function"), function: z.object({ name: z.string() }) })], {
      error: "must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}",
    })
    .nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: z.looseObject({ type: z.string() }).nullish(),
  add_generation_prompt: z.boolean().nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
});
export type ChatCompletionRequest = z.infer<typeof chatCompletionSchema>;

/** Prompts one /v1/completions request may hold (each is one choice, scheduled like a request of its own). */
export const MAX_PROMPTS_PER_REQUEST = 64;

export const completionSchema = z.strictObject({
  ...samplingFields,
  prompt: z.union(
    [
      z.string(),
      z.array(z.number().int()).min(1),
      z.array(z.string()).min(1).max(MAX_PROMPTS_PER_REQUEST),
      z.array(z.array(z.number().int()).min(1)).min(1).max(MAX_PROMPTS_PER_REQUEST),
    ],
    { error: `must be a string, an array of token ids, or a list (1..${MAX_PROMPTS_PER_REQUEST}) of either` },
  ),
  max_tokens: positiveInt.nullish(),
  logprobs: z.number().int().min(0).max(20).nullish(),
  echo: z.boolean().nullish(),
  suffix: z.string().nullish(),
  best_of: z.number().int().min(1).nullish(),
  add_special_tokens: z.boolean().nullish(),
});
export type CompletionRequest = z.infer<typeof completionSchema>;

export const tokenizeSchema = z.union(
  [
    z.object({ model: z.string().optional(), prompt: z.string(), add_special_tokens: z.boolean().nullish() }),
    z.object({
      model: z.string().optional(),
      messages: z.array(messageSchema).min(1),
      add_generation_prompt: z.boolean().nullish(),
      add_special_tokens: z.boolean().nullish(),
      tools: z.array(tool).nullish(),
      chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
    }),
  ],
  { error: "send either {prompt: string} or {messages: [...]}" },
);

export const detokenizeSchema = z.object({ model: z.string().optional(), tokens: z.array(z.number().int()) });

export const applyTemplateSchema = z.object({
  model: z.string().optional(),
  messages: z.array(messageSchema).min(1, { error: "must hold at least one message" }),
  tools: z.array(tool).nullish(),
  add_generation_prompt: z.boolean().nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
});

/** ["messages", 0, "role"] → "messages[0].role". */
export function formatParam(path: readonly PropertyKey[]): string | null {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || null;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const key of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[key];
  }
  return v;
}

/** Fields clients send that this server knows of but does not implement: why, for the 400. */
const KNOWN_UNSUPPORTED: Record<string, string> = {
  guided_json: "guided (structured) decoding is not supported",
  guided_regex: "guided (structured) decoding is not supported",
  guided_choice: "guided (structured) decoding is not supported",
  guided_grammar: "guided (structured) decoding is not supported",
  guided_decoding_backend: "guided (structured) decoding is not supported",
  structured_outputs: "guided (structured) decoding is not supported",
  functions: "the deprecated functions/function_call are not supported; send tools and tool_choice",
  function_call: "the deprecated functions/function_call are not supported; send tools and tool_choice",
};

/** An unknown field: OpenAI's own wording, the field as `param`, and why when we know it. */
function unknownFieldError(issue: z.core.$ZodIssueUnrecognizedKeys): ApiError {
  const param = formatParam([...issue.path, issue.keys[0]!])!;
  const known = KNOWN_UNSUPPORTED[issue.keys[0]!];
  const why = known ? `${known}` : "this server does not implement it; remove it from the request";
  return badRequest(`Unrecognized request argument supplied: ${param} (${why})`, param, known ? "unsupported_parameter" : "unknown_parameter");
}

/** The first issue as an OpenAI 400: a missing field says so; otherwise zod's message with the field named. */
export function zodToApiError(error: z.ZodError, input: unknown): ApiError {
  const issue = error.issues[0]!;
  if (issue.code === "unrecognized_keys") return unknownFieldError(issue);
  const param = formatParam(issue.path);
  const missing = issue.path.length > 0 && valueAt(input, issue.path) === undefined;
  const what = param ? `'${param}'` : "request body";
  const message = missing ? `${what} is required` : `${what}: ${issue.message.replace(/^Invalid input: /, "")}`;
  return badRequest(message, param, missing ? "missing_required_parameter" : "invalid_value");
}

export function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw badRequest("request body must be a JSON object");
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw zodToApiError(parsed.error, body);
  return parsed.data;
}
