/**
 * Shutdown that always ends. The first SIGTERM (or SIGINT) drains: new requests get 503, queued
 * and running generations may finish for up to the drain timeout; past it, every one still in
 * flight ends at once with a clean 503 (in-band for streams). Then the listener closes, waiting
 * for responses still being written until the deadline, and cutting whatever is left at it
 * (a stalled upload, an idle keep-alive). A second signal exits at once, drained or not.
 */
export interface DrainTarget {
  scheduler: { drain(): Promise<void>; stats(): { queued: number; running: number } };
  abortInFlight(): void;
}

export interface Stoppable {
  stop(closeActiveConnections?: boolean): Promise<void>;
}

/** Grace after abortInFlight for generations to notice and their error events to be queued. */
const ABORT_GRACE_MS = 2_000;

const settled = (p: Promise<unknown>, ms: number): Promise<boolean> =>
  new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), Math.max(0, ms));
    p.then(
      () => (clearTimeout(timer), resolve(true)),
      () => (clearTimeout(timer), resolve(true)),
    );
  });

/** Drains `server`, then stops `http`; resolves within about drainTimeoutMs + 2 s whatever clients do. */
export async function drainAndStop(server: DrainTarget, http: Stoppable, drainTimeoutMs: number, log: (line: string) => void): Promise<{ drained: boolean }> {
  const deadline = Date.now() + drainTimeoutMs;
  const drained = await settled(server.scheduler.drain(), drainTimeoutMs);
  if (!drained) {
    const { running, queued } = server.scheduler.stats();
    log(`drain timeout (${drainTimeoutMs / 1000} s): ending ${running} running and ${queued} queued request(s) with a 503`);
    server.abortInFlight();
    await settled(server.scheduler.drain(), ABORT_GRACE_MS);
  }
  // Let finished responses flush their last bytes, but no longer than the deadline allows.
  await settled(http.stop(false), Math.max(250, deadline - Date.now()));
  await http.stop(true);
  return { drained };
}

/**
 * Calls `shutdown` on the first SIGTERM/SIGINT and exits with 128 + the signal's number on the
 * second, for an operator (or orchestrator) that will not wait.
 */
export function onShutdownSignals(shutdown: (signal: string) => void, exit: (code: number) => void = (code) => process.exit(code)): () => void {
  let received = false;
  const handler = (signal: NodeJS.Signals) => {
    if (received) {
      console.log(`${signal} again: exiting now`);
      exit(128 + (signal === "SIGINT" ? 2 : 15));
      return;
    }
    received = true;
    shutdown(signal);
  };
  process.on("SIGTERM", handler);
  process.on("SIGINT", handler);
  return () => {
    process.off("SIGTERM", handler);
    process.off("SIGINT", handler);
  };
}
