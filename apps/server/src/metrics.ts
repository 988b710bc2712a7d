/**
 * A minimal Prometheus registry (text exposition format 0.0.4): counters and histograms with
 * labels, gauges read at scrape time. Enough for the server's own numbers without a dependency.
 */
type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const entries = Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1));
  return entries.map(([k, v]) => `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`).join(",");
}

function formatValue(v: number): string {
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return Number.isNaN(v) ? "NaN" : String(v);
}

interface Metric {
  render(): string;
}

export class Counter implements Metric {
  private readonly values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelKey(labels);
    this.values.set(key, (this.values.get(key) ?? 0) + by);
  }

  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (this.values.size === 0) lines.push(`${this.name} 0`);
    for (const [key, v] of this.values) lines.push(`${this.name}${key ? `{${key}}` : ""} ${formatValue(v)}`);
    return lines.join("\n");
  }
}

export class Gauge implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: () => number,
  ) {}

  render(): string {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`, `${this.name} ${formatValue(this.read())}`].join("\n");
  }
}

export class Histogram implements Metric {
  private readonly series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {}

  observe(value: number, labels: Labels = {}): void {
    const key = labelKey(labels);
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [key, s] of this.series) {
      const sep = key ? `${key},` : "";
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket{${sep}le="${formatValue(b)}"} ${s.counts[i]}`));
      lines.push(`${this.name}_bucket{${sep}le="+Inf"} ${s.count}`);
      lines.push(`${this.name}_sum${key ? `{${key}}` : ""} ${formatValue(s.sum)}`);
      lines.push(`${this.name}_count${key ? `{${key}}` : ""} ${s.count}`);
    }
    return lines.join("\n");
  }
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** The server's metrics; gauges read the scheduler live at scrape time. */
export class ServerMetrics {
  readonly requests = new Counter("tuneloom_requests_total", "HTTP requests by endpoint and status code.");
  readonly clientAborts = new Counter(
    "tuneloom_client_aborts_total",
    "Requests the client gave up on, by endpoint and phase: upload (disconnected mid-body), generation (disconnected before a non-stream answer), stream (disconnected mid-stream), stream_stalled (stopped reading; dropped after the write timeout).",
  );
  readonly promptTokens = new Counter("tuneloom_prompt_tokens_total", "Prompt tokens of admitted generation requests.");
  readonly generatedTokens = new Counter("tuneloom_generation_tokens_total", "Tokens generated.");
  readonly timeToFirstToken = new Histogram("tuneloom_time_to_first_token_seconds", "From request arrival to the first generated token.", LATENCY_BUCKETS);
  readonly requestLatency = new Histogram("tuneloom_e2e_request_latency_seconds", "From request arrival to the last generated token.", LATENCY_BUCKETS);
  private readonly metrics: Metric[];

  constructor(stats: () => { queued: number; running: number }) {
    this.metrics = [
      this.requests,
      this.clientAborts,
      this.promptTokens,
      this.generatedTokens,
      this.timeToFirstToken,
      this.requestLatency,
      new Gauge("tuneloom_queue_depth", "Admitted requests waiting for a running slot.", () => stats().queued),
      new Gauge("tuneloom_running_sequences", "Sequences inside the engine's batch.", () => stats().running),
    ];
  }

  render(): string {
    return this.metrics.map((m) => m.render()).join("\n") + "\n";
  }
}
