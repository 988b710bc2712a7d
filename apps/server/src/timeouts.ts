/**
 * Nothing a client does holds a connection forever. Three clocks:
 *   - idle (Bun.serve idleTimeout, seconds): a connection that sends nothing, between requests
 *     (keep-alive) or mid-upload, is closed. Incomplete request headers are cut by Bun itself
 *     10–12 s after connecting, however slowly they trickle in, whatever this is.
 *   - body: the whole request body must arrive within this, however it trickles in (408).
 *   - stream write (./sse.ts): a streaming client that reads nothing for this long is dropped
 *     and its generation cancelled, which frees its batch slot.
 * Generation itself may be silent for minutes (queued, long prefill), so once the body is read
 * the request's idle clock is stopped (`ConnectionClock.hold`) and restarted when its response
 * has been handed over (`release`): the keep-alive wait after it is bounded again.
 */
import { ApiError } from "./errors.ts";

export const DEFAULT_IDLE_TIMEOUT_S = 15;
export const DEFAULT_BODY_TIMEOUT_MS = 30_000;
export const DEFAULT_STREAM_WRITE_TIMEOUT_MS = 30_000;
/** Bun.serve's idleTimeout is at most 255 s. */
export const MAX_IDLE_TIMEOUT_S = 255;

/** What Bun's Server offers a handler for its request's idle clock. */
export interface IdleClockServer {
  timeout(request: Request, seconds: number): void;
}

export class ConnectionClock {
  private held = false;
  constructor(
    private readonly server: IdleClockServer | undefined,
    private readonly request: Request,
    private readonly idleSeconds: number,
  ) {}

  /** Stop the idle clock: the server, not the socket, decides when this request ends. */
  hold(): void {
    if (this.held) return;
    this.held = true;
    this.set(0);
  }

  /** Run it again (response handed over, or stream ended). */
  release(): void {
    if (!this.held) return;
    this.held = false;
    this.set(this.idleSeconds);
  }

  private set(seconds: number): void {
    try {
      this.server?.timeout(this.request, seconds);
    } catch {
      // the connection is already gone
    }
  }
}

export function bodyTimeout(ms: number): ApiError {
  return new ApiError(408, `the request body did not arrive within ${ms / 1000} s; send it at once`, "invalid_request_error", null, "request_timeout");
}

/** `promise`, or `onTimeout()`'s error once `ms` have passed; the timer never outlives it. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(onTimeout()), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
