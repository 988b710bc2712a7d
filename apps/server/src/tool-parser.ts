/**
 * Generated text → content and tool calls, incrementally: `push` each text delta as it is
 * detokenized, `finish` at the end of generation. Events come out in order; a call is emitted
 * whole (name and arguments) the moment its JSON is complete, so no markup ever reaches the
 * client and a call that does not parse can still be returned as the text it was. One parser
 * per format the fixture templates train (./tool-format.ts picks it from the template):
 *   hermes   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen2.5/3, SmolLM3),
 *            any number, with text before them
 *   mistral  `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Mistral Nemo)
 *   llama3   the whole output is `{"name": ..., "parameters": {...}}` (Llama 3.1/3.2 JSON tool
 *            calls), optionally after `<|python_tag|>`, several separated by `;`
 * Whitespace between content and a call (the "\n\n" before `<tool_call>`) is dropped: trailing
 * whitespace is held back, released when text follows, dropped when a call does.
 */

export type ToolParseEvent = { type: "content"; text: string } | { type: "tool_call"; name: string; arguments: string };

export interface ToolCallParser {
  push(text: string): ToolParseEvent[];
  finish(): ToolParseEvent[];
}

/** Index just past the JSON object or array that starts at the first non-space at or after `from`; -1 while incomplete. */
export function jsonValueEnd(s: string, from = 0): number {
  let i = from;
  while (i < s.length && /\s/.test(s[i]!)) i++;
  if (s[i] !== "{" && s[i] !== "[") return -1;
  let depth = 0, inString = false, escaped = false;
  for (; i < s.length; i++) {
    const c = s[i]!;
    if (inString) {
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") if (--depth === 0) return i + 1;
  }
  return -1;
}

/** `{"name", "arguments"|"parameters"}` → a call with arguments as a JSON string; null if it is not one. */
function toCall(value: unknown): ToolParseEvent | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const { name, arguments: args, parameters } = value as Record<string, unknown>;
  if (typeof name !== "string" || name.length === 0) return null;
  const a = args ?? parameters ?? {};
  if (typeof a === "string") return { type: "tool_call", name, arguments: a };
  if (typeof a !== "object" || a === null || Array.isArray(a)) return null;
  return { type: "tool_call", name, arguments: JSON.stringify(a) };
}

/** JSON text of one call or a list of calls → the calls; null if any is malformed. */
function parseCalls(json: string): ToolParseEvent[] | null {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return null;
  }
  const calls = (Array.isArray(value) ? value : [value]).map(toCall);
  return calls.length > 0 && calls.every((c) => c !== null) ? (calls as ToolParseEvent[]) : null;
}

/** Length of the longest suffix of `s` that is a proper prefix of `marker` (held back: the marker may be arriving). */
export function partialMarkerLength(s: string, marker: string): number {
  for (let n = Math.min(s.length, marker.length - 1); n > 0; n--) if (marker.startsWith(s.slice(s.length - n))) return n;
  return 0;
}

/** Content output with whitespace-only runs held back (dropped before a call, released before text). */
class ContentOut {
  private pending = "";
  private events: ToolParseEvent[] = [];
  private calls = 0;
  /** Text up to its last non-space goes out; trailing whitespace waits for what follows. */
  text(s: string): void {
    this.pending += s;
    const end = this.pending.trimEnd().length;
    if (end > 0) {
      this.events.push({ type: "content", text: this.pending.slice(0, end) });
      this.pending = this.pending.slice(end);
    }
  }
  call(events: ToolParseEvent[]): void {
    this.pending = "";
    this.calls += events.length;
    this.events.push(...events);
  }
  /** End of output: trailing whitespace is text only when there was no call. */
  end(): void {
    if (this.calls === 0 && this.pending) this.events.push({ type: "content", text: this.pending });
    this.pending = "";
  }
  /** The events since the last take. */
  take(): ToolParseEvent[] {
    const out = this.events;
    this.events = [];
    return out;
  }
}

/**
 * Text, then `open` + a call body, repeated. The body ends at `close` when there is one (hermes),
 * else where its JSON value ends (mistral's list). A body that does not parse is returned as text.
 */
export class MarkerToolCallParser implements ToolCallParser {
  private buf = "";
  private inCall = false;
  private readonly content = new ContentOut();
  constructor(private readonly open: string, private readonly close: string | null) {}

  push(text: string): ToolParseEvent[] {
    this.buf += text;
    for (;;) {
      if (!this.inCall) {
        const i = this.buf.indexOf(this.open);
        if (i < 0) {
          const keep = partialMarkerLength(this.buf, this.open);
          this.content.text(this.buf.slice(0, this.buf.length - keep));
          this.buf = this.buf.slice(this.buf.length - keep);
          break;
        }
        this.content.text(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + this.open.length);
        this.inCall = true;
      }
      const end = this.close === null ? jsonValueEnd(this.buf) : this.buf.indexOf(this.close);
      if (end < 0) break;
      this.emitBody(this.buf.slice(0, end));
      this.buf = this.buf.slice(end + (this.close?.length ?? 0));
      this.inCall = false;
    }
    return this.content.take();
  }

  finish(): ToolParseEvent[] {
    if (this.inCall) this.emitBody(this.buf); // generation ended inside a call (no closing marker)
    else this.content.text(this.buf);
    this.buf = "";
    this.inCall = false;
    this.content.end();
    return this.content.take();
  }

  private emitBody(body: string): void {
    const calls = parseCalls(body.trim());
    if (calls) this.content.call(calls);
    else this.content.text(this.open + body + (this.close ?? ""));
  }
}

/**
 * Llama 3.x JSON tool calls: the output is calls from its first character (`{`, or `<|python_tag|>`
 * then `{`), `;`-separated, or it is plain text throughout. An object that is not a call, or text
 * after the calls, is returned as text.
 */
export class JsonToolCallParser implements ToolCallParser {
  private buf = "";
  private mode: "start" | "calls" | "text" = "start";
  private readonly content = new ContentOut();
  constructor(private readonly tag: string) {}

  push(text: string): ToolParseEvent[] {
    this.buf += text;
    if (this.mode === "start") {
      const lead = this.buf.trimStart();
      if (lead.startsWith(this.tag)) {
        this.buf = lead.slice(this.tag.length);
        this.mode = "calls";
      } else if (lead.startsWith("{")) this.mode = "calls";
      else if (lead === "" || this.tag.startsWith(lead)) return [];
      else this.mode = "text";
    }
    if (this.mode === "text") {
      this.content.text(this.buf);
      this.buf = "";
      return this.content.take();
    }
    for (;;) {
      const lead = this.buf.replace(/^[\s;]+/, "");
      if (lead === "") break;
      if (!lead.startsWith("{")) {
        this.mode = "text"; // text after the calls
        this.content.text(lead);
        this.buf = "";
        break;
      }
      const end = jsonValueEnd(lead);
      if (end < 0) break;
      const calls = parseCalls(lead.slice(0, end));
      if (calls) this.content.call(calls);
      else this.content.text(lead.slice(0, end));
      this.buf = lead.slice(end);
    }
    return this.content.take();
  }

  finish(): ToolParseEvent[] {
    this.content.text(this.buf); // an unfinished object, or a lone partial tag
    this.buf = "";
    this.content.end();
    return this.content.take();
  }
}
