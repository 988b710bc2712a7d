/**
 * Serves a TuneloomServer with Bun.serve, the one way the CLI, the benchmarks and the tests do:
 * the server's idle timeout (keep-alive and stalled uploads; see ./timeouts.ts), and Bun's own
 * body limit (twice the server's maxBodyBytes, at least 16 MiB) as a hard backstop above its 413.
 */
import type { TuneloomServer } from "./app.ts";

export interface ListenOptions {
  hostname: string;
  port: number;
}

export function listen(server: TuneloomServer, options: ListenOptions): Bun.Server<undefined> {
  return Bun.serve({
    hostname: options.hostname,
    port: options.port,
    fetch: (request, bun) => server.fetch(request, bun),
    idleTimeout: server.idleTimeoutSeconds,
    maxRequestBodySize: Math.max(server.maxBodyBytes * 2, 16 * 1024 * 1024),
  });
}
