/**
 * Stop strings, matched on decoded text as OpenAI does: text is shown only once it cannot be
 * the start of a stop string, and the stop string itself never reaches the client. Matching on
 * text, not tokens, is what makes "\n\n" stop whether the model wrote it as one token or two.
 */
export interface StopResult {
  /** Text safe to send now. */
  text: string;
  /** A stop string matched: nothing after `text` may be sent, and finish_reason is "stop". */
  stopped: boolean;
}

export class StopStringMatcher {
  private pending = "";
  private stopped = false;
  private readonly stops: string[];
  private readonly maxHold: number;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
    this.maxHold = Math.max(0, ...this.stops.map((s) => s.length - 1));
  }

  /** Append newly decoded text; returns what can be released. After a stop, always empty. */
  push(delta: string): StopResult {
    if (this.stopped) return { text: "", stopped: true };
    if (this.stops.length === 0) return { text: delta, stopped: false };
    this.pending += delta;
    // The earliest match wins: "a" and "ab" in "xab" stop at "a".
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      const text = this.pending.slice(0, cut);
      this.pending = "";
      return { text, stopped: true };
    }
    const hold = this.heldSuffixLength();
    const text = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text, stopped: false };
  }

  /** End of generation without a stop string: release what was held back. */
  flush(): string {
    if (this.stopped) return "";
    const text = this.pending;
    this.pending = "";
    return text;
  }

  /** Length of the longest suffix of `pending` that is a proper prefix of some stop string. */
  private heldSuffixLength(): number {
    const p = this.pending;
    for (let len = Math.min(this.maxHold, p.length); len > 0; len--) {
      const suffix = p.slice(p.length - len);
      if (this.stops.some((s) => s.length > len && s.startsWith(suffix))) return len;
    }
    return 0;
  }
}
