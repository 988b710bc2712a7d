// RequestScheduler on its own, over a scripted engine: limits, ordering, cancellation, drain.
import { describe, expect, test } from "bun:test";
import type { GenerationRequest, TokenEvent } from "../src/engine.ts";
import { RequestScheduler, SchedulerRejection } from "../src/scheduler.ts";
import { StopStringMatcher } from "../src/stop-strings.ts";

/** Each submitted sequence emits `n` tokens, one per `tick()`; it records what it saw. */
class ScriptedEngine {
  readonly maxBatchSize = 2;
  started: number[] = [];
  aborted: number[] = [];
  private waiters: (() => void)[] = [];
  tick(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  async *submit(request: GenerationRequest, signal: AbortSignal): AsyncGenerator<TokenEvent> {
    const id = request.promptIds[0]!;
    this.started.push(id);
    for (let i = 0; i < request.maxTokens; i++) {
      await new Promise<void>((r) => this.waiters.push(r));
      if (signal.aborted) {
        this.aborted.push(id);
        return;
      }
      yield { tokenId: i, logprob: null, topLogprobs: null, finishReason: i === request.maxTokens - 1 ? "length" : null };
    }
  }
}

const req = (id: number, maxTokens = 2): GenerationRequest => ({
  promptIds: [id], maxTokens, temperature: 0, topP: 1, topK: 0, seed: null, stopTokenIds: [], logprobs: false, topLogprobs: 0,
});

async function collect(events: AsyncIterable<TokenEvent>): Promise<number[]> {
  const out: number[] = [];
  for await (const e of events) out.push(e.tokenId);
  return out;
}

async function pumpUntil(engine: ScriptedEngine, done: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !done(); i++) {
    engine.tick();
    await Bun.sleep(0);
  }
}

describe("RequestScheduler", () => {
  test("runs maxRunning at once, queues up to maxQueued in order, refuses the rest with 429", async () => {
    const engine = new ScriptedEngine();
    const s = new RequestScheduler(engine, { maxQueued: 2 });
    const never = new AbortController().signal;
    const results = [1, 2, 3, 4].map((id) => collect(s.submit(req(id), never)));
    expect(s.stats()).toEqual({ queued: 2, running: 2, draining: false });
    let rejection: unknown;
    try {
      s.submit(req(5), never);
    } catch (e) {
      rejection = e;
    }
    expect(rejection).toBeInstanceOf(SchedulerRejection);
    expect((rejection as SchedulerRejection).status).toBe(429);
    let finished = 0;
    results.forEach((p) => p.then(() => finished++));
    await pumpUntil(engine, () => finished === 4);
    expect(await Promise.all(results)).toEqual([[0, 1], [0, 1], [0, 1], [0, 1]]);
    expect(engine.started).toEqual([1, 2, 3, 4]);
    expect(s.stats()).toEqual({ queued: 0, running: 0, draining: false });
  });

  test("abort while running reaches the engine and frees the slot for the next in line", async () => {
    const engine = new ScriptedEngine();
    const s = new RequestScheduler(engine, { maxRunning: 1, maxQueued: 1 });
    const c1 = new AbortController();
    const first = collect(s.submit(req(1, 100), c1.signal));
    const second = collect(s.submit(req(2), new AbortController().signal));
    engine.tick();
    await Bun.sleep(0);
    c1.abort();
    let done = false;
    second.then(() => (done = true));
    await pumpUntil(engine, () => done);
    await first;
    expect(engine.aborted).toEqual([1]);
    expect(await second).toEqual([0, 1]);
    expect(s.stats().running).toBe(0);
  });

  test("abort while queued never reaches the engine; abort before iterating releases the slot", async () => {
    const engine = new ScriptedEngine();
    const s = new RequestScheduler(engine, { maxRunning: 1, maxQueued: 1 });
    const c1 = new AbortController();
    s.submit(req(1), c1.signal); // admitted, never iterated
    const c2 = new AbortController();
    const queued = collect(s.submit(req(2), c2.signal));
    expect(s.stats()).toEqual({ queued: 1, running: 1, draining: false });
    c2.abort();
    expect(await queued).toEqual([]);
    expect(s.stats().queued).toBe(0);
    c1.abort();
    expect(s.stats().running).toBe(0);
    expect(engine.started).toEqual([]);
  });

  test("drain: refuses with 503 at once, resolves after queued and running work finished", async () => {
    const engine = new ScriptedEngine();
    const s = new RequestScheduler(engine, { maxRunning: 1, maxQueued: 4 });
    const never = new AbortController().signal;
    const a = collect(s.submit(req(1), never));
    const b = collect(s.submit(req(2), never));
    let drained = false;
    const drain = s.drain().then(() => (drained = true));
    expect(() => s.submit(req(3), never)).toThrow(SchedulerRejection);
    try {
      s.submit(req(3), never);
    } catch (e) {
      expect((e as SchedulerRejection).status).toBe(503);
    }
    await Bun.sleep(0);
    expect(drained).toBe(false);
    await pumpUntil(engine, () => drained);
    await drain;
    expect(await a).toEqual([0, 1]);
    expect(await b).toEqual([0, 1]);
    expect(engine.started).toEqual([1, 2]);
  });

  test("drain with nothing in flight resolves immediately", async () => {
    const s = new RequestScheduler(new ScriptedEngine());
    await s.drain();
    expect(s.isDraining).toBe(true);
  });
});

describe("StopStringMatcher", () => {
  const run = (stops: string[], deltas: string[]) => {
    const m = new StopStringMatcher(stops);
    let out = "";
    let stopped = false;
    const emitted: string[] = [];
    for (const d of deltas) {
      const r = m.push(d);
      emitted.push(r.text);
      out += r.text;
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    if (!stopped) out += m.flush();
    return { out, stopped, emitted };
  };

  test("holds back a possible start of a stop string, releases it when it is not", () => {
    const r = run(["END"], ["abc E", "N", "x more"]);
    expect(r.emitted).toEqual(["abc ", "", "ENx more"]);
    expect(r.out).toBe("abc ENx more");
    expect(r.stopped).toBe(false);
  });

  test("a stop string split across deltas is trimmed, and nothing after it leaks", () => {
    const r = run(["END"], ["abc E", "N", "D and more"]);
    expect(r.out).toBe("abc ");
    expect(r.stopped).toBe(true);
  });

  test("earliest match wins among several stop strings; held text is flushed at the end", () => {
    expect(run(["b", "ab"], ["xab"]).out).toBe("x"); // "ab" starts at 1, "b" at 2
    expect(run(["a", "ab"], ["xab"]).out).toBe("x");
    expect(run(["\n\n"], ["line\n"]).out).toBe("line\n");
    expect(run([], ["a", "b"]).out).toBe("ab");
  });
});
