// On software adapters the runtime throttles dawn.node's wait loop (poll-throttle.ts): a long
// streak of back-to-back setImmediate polls turns into 1 ms timers so the CPU driver keeps every
// core; callbacks still run with their arguments, in order; short streaks stay immediate.
import { describe, expect, test } from "bun:test";
import { getRuntime } from "../src/index.ts";

const rt = await getRuntime();

/**
 * Runs chained setImmediate callbacks until `n` have run, or (with untilTimers) until that many
 * setTimeout calls were made by the throttle; returns the arguments seen, the timers used and
 * how many callbacks ran before the first timer.
 */
async function chain(n: number, untilTimers = Infinity): Promise<{ seen: number[]; timers: number; beforeFirstTimer: number }> {
  const realSetTimeout = globalThis.setTimeout;
  let timers = 0, beforeFirstTimer = -1;
  const out: number[] = [];
  globalThis.setTimeout = ((...a: Parameters<typeof setTimeout>) => {
    if (timers++ === 0) beforeFirstTimer = out.length;
    return realSetTimeout(...a);
  }) as typeof setTimeout;
  try {
    await new Promise<void>((resolve) => {
      const step = (k: number, tag: string) => {
        out.push(tag === "x" ? k : -1);
        if (out.length === n || timers >= untilTimers) resolve();
        else setImmediate(step, k + 1, "x");
      };
      setImmediate(step, 0, "x");
    });
    return { seen: out, timers, beforeFirstTimer };
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
}

describe.if(rt.caps.isSoftware)("dawn polling throttle (software adapters)", () => {
  test("short streaks stay immediate, long ones become timers, callbacks keep arguments and order", async () => {
    await Bun.sleep(20); // a pause ends any earlier streak
    const short = await chain(300);
    expect(short.seen).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(short.timers).toBe(0);
    await Bun.sleep(20);
    // A long streak turns into timers; a GC pause inside it may restart the count, so the chain
    // runs until the throttle engages (or a cap far beyond it).
    const long = await chain(20_000, 3);
    expect(long.seen).toEqual(Array.from({ length: long.seen.length }, (_, i) => i));
    expect(long.timers).toBeGreaterThan(0);
    expect(long.beforeFirstTimer).toBeGreaterThan(300); // the first polls of a wait are immediate
    await Bun.sleep(20);
    expect((await chain(50)).timers).toBe(0); // the pause reset the streak
  });

  test("clearImmediate cancels an immediate and a throttled one alike", async () => {
    let ran = 0;
    clearImmediate(setImmediate(() => ran++));
    const t = setTimeout(() => ran++, 1);
    clearImmediate(t as unknown as ReturnType<typeof setImmediate>);
    await Bun.sleep(10);
    expect(ran).toBe(0);
  });
});
