/**
 * The one function from (template source, variables) to the rendered string, shared by the
 * trainer and the server so both see byte-identical prompts. Set up as transformers'
 * `apply_chat_template` sets up Jinja2: trim_blocks, lstrip_blocks, loop controls,
 * `{% generation %}`, `raise_exception`, `strftime_now`, Python spellings of values.
 */
import {
  ArrayValue,
  Environment,
  FunctionValue,
  IntegerValue,
  Interpreter,
  StringValue,
  parse,
  tokenize,
  type AnyRuntimeValue,
} from "@huggingface/jinja";
import { chatTemplateFilters } from "./jinja-filters.ts";
import { pythonStr } from "./python-values.ts";
import { resolveNow, strftime } from "./strftime.ts";
import { normalizeTemplateSource, templateSha256 } from "./template-source.ts";
import { TemplateError } from "./template-error.ts";

/** An OpenAI/transformers-style chat message; templates read any extra fields they like. */
export interface ChatMessage {
  role: string;
  content?: unknown;
  [field: string]: unknown;
}

/**
 * Variables as transformers passes them. Leave a key out to make it Undefined in the
 * template (as when a tokenizer has no such token); `null` is Python's None.
 */
export interface ChatTemplateVariables {
  messages?: ChatMessage[];
  tools?: unknown[] | null;
  documents?: unknown[] | null;
  add_generation_prompt?: boolean;
  bos_token?: string;
  eos_token?: string;
  pad_token?: string;
  unk_token?: string;
  /** Extra kwargs: enable_thinking, date_string, reasoning_effort, ... */
  [name: string]: unknown;
}

export interface RenderOptions {
  /** The clock `strftime_now` formats; an ISO string without offset is local time. Default: now. */
  now?: Date | string;
}

type Program = ReturnType<typeof parse>;

/** Thrown by `raise_exception` and caught by `render`, so the template's message survives verbatim. */
class RaiseExceptionSignal extends Error {}

/** Python's `range(stop)` / `range(start, stop[, step])`. */
function pythonRange(args: AnyRuntimeValue[]): ArrayValue {
  const ints = args.map((a) => {
    if (!(a instanceof IntegerValue)) throw new TypeError(`range() expects integers, got ${a.type}`);
    return a.value;
  });
  const [start, stop, step] = ints.length === 1 ? [0, ints[0]!, 1] : [ints[0]!, ints[1]!, ints[2] ?? 1];
  if (step === 0) throw new Error("range() arg 3 must not be zero");
  const out: IntegerValue[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(new IntegerValue(i));
  return new ArrayValue(out);
}

/** A parsed chat template; parse once, render many times (masks render every prefix). */
export class ChatTemplate {
  /** The source exactly as given; `sha256` is over these bytes. */
  readonly source: string;
  readonly sha256: string;
  private readonly program: Program;

  constructor(source: string) {
    this.source = source;
    this.sha256 = templateSha256(source);
    try {
      this.program = parse(tokenize(normalizeTemplateSource(source), { lstrip_blocks: true, trim_blocks: true }));
    } catch (err) {
      throw new TemplateError(`template syntax error: ${(err as Error).message}`, "syntax", { cause: err });
    }
  }

  render(variables: ChatTemplateVariables, options: RenderOptions = {}): string {
    const env = this.environment(variables, options);
    try {
      const result = new Interpreter(env).run(this.program);
      if (!(result instanceof StringValue)) return pythonStr(result);
      return result.value;
    } catch (err) {
      if (err instanceof RaiseExceptionSignal) throw new TemplateError(err.message, "raise_exception");
      throw new TemplateError((err as Error)?.message ?? String(err), "render", { cause: err });
    }
  }

  private environment(variables: ChatTemplateVariables, options: RenderOptions): Environment {
    const env = new Environment();
    env.filters = chatTemplateFilters();
    for (const [name, value] of [
      ["true", true], ["false", false], ["none", null],
      ["True", true], ["False", false], ["None", null],
    ] as const) env.set(name, value);
    env.setVariable(
      "raise_exception",
      new FunctionValue((args) => {
        throw new RaiseExceptionSignal(args[0] === undefined ? "" : pythonStr(args[0]));
      }),
    );
    const now = options.now;
    env.setVariable(
      "strftime_now",
      new FunctionValue((args) => {
        const format = args[0];
        if (!(format instanceof StringValue)) throw new TypeError("strftime_now(format) needs a string");
        return new StringValue(strftime(resolveNow(now), format.value));
      }),
    );
    env.setVariable("range", new FunctionValue((args) => pythonRange(args)));
    // Template variables shadow globals, as Jinja2's render(**kwargs) does.
    for (const [name, value] of Object.entries(variables)) {
      if (value === undefined) continue;
      env.variables.delete(name);
      env.set(name, value);
    }
    return env;
  }
}

const compiled = new Map<string, ChatTemplate>();
const COMPILED_CACHE_LIMIT = 32;

/** Parses once per distinct source (small LRU), since masks and parity checks re-render a lot. */
export function compileChatTemplate(source: string): ChatTemplate {
  let template = compiled.get(source);
  if (template) {
    compiled.delete(source);
  } else {
    template = new ChatTemplate(source);
    if (compiled.size >= COMPILED_CACHE_LIMIT) compiled.delete(compiled.keys().next().value!);
  }
  compiled.set(source, template);
  return template;
}

/**
 * Renders `source` with `variables` exactly as transformers' `apply_chat_template(...,
 * tokenize=False)` would. Throws `TemplateError` (kind "raise_exception" carries the
 * template's own message).
 */
export function renderChatTemplate(source: string, variables: ChatTemplateVariables, options: RenderOptions = {}): string {
  return compileChatTemplate(source).render(variables, options);
}
