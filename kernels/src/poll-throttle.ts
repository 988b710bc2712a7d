/**
 * dawn.node waits for GPU work (mapAsync, onSubmittedWorkDone) by re-scheduling its event
 * processing with the global `setImmediate` until the work is done: a busy loop on the main
 * thread (half a million calls in a 2.6 s wait). On a CPU driver (lavapipe) that loop takes a
 * core from the driver's own worker threads; on the 2-core CI machine a batch of matmuls ran
 * 1.6× slower and a SmolLM2-shaped training step took 23 s instead of 13.
 *
 * On software adapters the runtime installs a `setImmediate` that stays immediate while calls
 * are sparse and becomes a 1 ms timer once SPIN calls have come back to back (a wait that has
 * lasted a couple of milliseconds), until a longer pause than the polling itself makes ends the
 * streak (the wait is over). The callback still runs, only later; short waits keep their
 * latency. GPUs are left alone: their waits are short and their machines have cores to spare.
 */
const SPIN = 400; // back-to-back immediate polls (~5 µs apart) before throttling: ~2 ms
const SPIN_GAP_MS = 0.25; // immediate polls closer than this belong to one wait
const TIMER_MS = 1;
const TIMER_GAP_MS = TIMER_MS + 2; // timer polls closer than this belong to one wait

let installed = false;

export function throttleDawnPolling() {
  if (installed) return;
  installed = true;
  const immediate = globalThis.setImmediate;
  const clearImmediate = globalThis.clearImmediate;
  let last = -Infinity, streak = 0;
  const throttled = ((fn: (...args: unknown[]) => void, ...args: unknown[]) => {
    const now = performance.now();
    const slow = streak > SPIN;
    streak = now - last < (slow ? TIMER_GAP_MS : SPIN_GAP_MS) ? streak + 1 : 0;
    last = now;
    return streak > SPIN ? setTimeout(fn, TIMER_MS, ...args) : immediate(fn, ...args);
  }) as unknown as typeof setImmediate;
  globalThis.setImmediate = throttled;
  // A handle may now be a timer: clear either kind.
  globalThis.clearImmediate = ((handle: unknown) => {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
    clearImmediate(handle as ReturnType<typeof setImmediate>);
  }) as typeof clearImmediate;
}
