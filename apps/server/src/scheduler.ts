/**
 * Admission control in front of an engine: at most `maxRunning` sequences inside the engine
 * (its batch), at most `maxQueued` more waiting for a slot, the rest refused at once (429) so
 * a burst degrades into fast errors instead of unbounded latency. `drain()` is the SIGTERM
 * path: new work is refused (503), queued and running work finishes, then it resolves.
 *
 * `submit` decides admission synchronously, before the HTTP response starts, so a streaming
 * request is refused with a status code rather than inside an event stream.
 */
import type { GenerationRequest, InferenceEngine, TokenEvent } from "./engine.ts";

/** Refused admission; `status` is the HTTP status the server answers with. */
export class SchedulerRejection extends Error {
  constructor(
    message: string,
    readonly status: 429 | 503,
    readonly code: "queue_full" | "server_draining",
  ) {
    super(message);
    this.name = "SchedulerRejection";
  }
}

export interface SchedulerOptions {
  /** Sequences running inside the engine at once; default the engine's maxBatchSize. */
  maxRunning?: number;
  /** Admitted requests waiting for a running slot; beyond this, 429. Default 4 × maxRunning. */
  maxQueued?: number;
}

export interface SchedulerStats {
  queued: number;
  running: number;
  draining: boolean;
}

interface Waiter {
  wake: () => void;
  signal: AbortSignal;
}

export class RequestScheduler {
  readonly maxRunning: number;
  readonly maxQueued: number;
  private running = 0;
  private readonly waiting: Waiter[] = [];
  private draining = false;
  private idleResolvers: (() => void)[] = [];

  constructor(
    private readonly engine: Pick<InferenceEngine, "submit" | "maxBatchSize">,
    options: SchedulerOptions = {},
  ) {
    this.maxRunning = options.maxRunning ?? engine.maxBatchSize;
    this.maxQueued = options.maxQueued ?? 4 * this.maxRunning;
    if (!Number.isInteger(this.maxRunning) || this.maxRunning < 1) throw new Error(`maxRunning must be an integer ≥ 1, got ${this.maxRunning}`);
    if (!Number.isInteger(this.maxQueued) || this.maxQueued < 0) throw new Error(`maxQueued must be an integer ≥ 0, got ${this.maxQueued}`);
  }

  stats(): SchedulerStats {
    return { queued: this.waiting.length, running: this.running, draining: this.draining };
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * Admit a request or throw SchedulerRejection now. The returned iterable waits for a running
   * slot, then yields the engine's events; the slot is released when the iteration ends for any
   * reason (finished, consumer stopped early, aborted, engine error). Aborting `signal` while
   * queued leaves the queue without ever reaching the engine. The caller must iterate it (or
   * abort `signal`), or the admission is held forever.
   */
  submit(request: GenerationRequest, signal: AbortSignal): AsyncIterable<TokenEvent> {
    if (this.draining) throw new SchedulerRejection("the server is shutting down and accepts no new requests; retry on another instance", 503, "server_draining");
    const mustWait = this.running >= this.maxRunning || this.waiting.length > 0;
    if (mustWait && this.waiting.length >= this.maxQueued)
      throw new SchedulerRejection(
        `the server is at capacity (${this.running} running, ${this.waiting.length} queued, queue limit ${this.maxQueued}); retry later`,
        429,
        "queue_full",
      );

    // The slot (or queue place) is held from admission, not from first iteration; until the
    // iteration starts, an abort alone must give it back.
    let holdsSlot = false;
    let done = false;
    let started = false;
    const finish = () => {
      if (done) return;
      done = true;
      signal.removeEventListener("abort", onAbortBeforeStart);
      if (holdsSlot) this.release();
      else this.checkIdle();
    };
    let slotReady: () => void = () => {};
    const slot = new Promise<void>((resolve) => (slotReady = resolve));
    const waiter: Waiter = {
      signal,
      wake: () => {
        holdsSlot = true;
        slotReady();
      },
    };
    const onAbortBeforeStart = () => {
      const i = this.waiting.indexOf(waiter);
      if (i >= 0) this.waiting.splice(i, 1);
      if (!started) finish();
      slotReady();
    };
    if (!mustWait) {
      this.running++;
      waiter.wake();
    } else {
      this.waiting.push(waiter);
    }
    if (signal.aborted) onAbortBeforeStart();
    else signal.addEventListener("abort", onAbortBeforeStart, { once: true });

    const engine = this.engine;
    return {
      [Symbol.asyncIterator]: async function* () {
        started = true;
        try {
          await slot;
          if (signal.aborted || done) return;
          signal.removeEventListener("abort", onAbortBeforeStart);
          yield* engine.submit(request, signal);
        } finally {
          finish();
        }
      },
    };
  }

  /** Hand a freed running slot to the next waiter, if any. */
  private release(): void {
    const next = this.waiting.shift();
    if (next) next.wake();
    else this.running--;
    this.checkIdle();
  }

  private checkIdle(): void {
    if (this.running === 0 && this.waiting.length === 0) {
      const resolvers = this.idleResolvers;
      this.idleResolvers = [];
      for (const r of resolvers) r();
    }
  }

  /** Stop admitting (503 from now on) and resolve once every admitted request has finished. */
  drain(): Promise<void> {
    this.draining = true;
    if (this.running === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleResolvers.push(resolve));
  }
}
