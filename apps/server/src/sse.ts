/**
 * Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, `data: [DONE]\n\n`
 * last. Pull-based, so a slow client slows its own generation reads instead of piling chunks up
 * in memory. A client that goes away cancels the stream, which cancels the generation. A client
 * that stays connected but stops reading fills the socket, and the response writer stops
 * pulling: when no pull follows a queued chunk within the write timeout, the stream is ended
 * the same way, so the generation's batch slot goes to someone who reads.
 */
import { ApiError, ClientGone } from "./errors.ts";

export interface StreamContext {
  logError: (message: string) => void;
  /** A chunk left unread this long drops the client. */
  streamWriteTimeoutMs: number;
  /** The client disconnected or stopped reading: counted, not logged. */
  clientGone: (phase: "stream" | "stream_stalled") => void;
  /** The stream has ended, however. */
  streamEnded: () => void;
}

const encoder = new TextEncoder();
const event = (value: unknown) => encoder.encode(`data: ${JSON.stringify(value)}\n\n`);

export function sseResponse(chunks: AsyncIterable<unknown>, cancelGeneration: () => void, ctx: StreamContext): Response {
  const iterator = chunks[Symbol.asyncIterator]();
  let finished = false;
  let stallTimer: ReturnType<typeof setTimeout> | undefined;
  const end = (controller: ReadableStreamDefaultController<Uint8Array>, last?: Uint8Array[]) => {
    finished = true;
    clearTimeout(stallTimer);
    for (const bytes of last ?? []) controller.enqueue(bytes);
    controller.close();
    ctx.streamEnded();
  };
  const giveUp = (phase: "stream" | "stream_stalled") => {
    if (finished) return;
    finished = true;
    clearTimeout(stallTimer);
    ctx.clientGone(phase);
    cancelGeneration();
    void iterator.return?.().catch(() => {});
    ctx.streamEnded();
  };

  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      clearTimeout(stallTimer);
      if (finished) return;
      try {
        const { value, done } = await iterator.next();
        if (finished) return; // cancelled while waiting: the controller is closed
        if (done) return end(controller, [encoder.encode("data: [DONE]\n\n")]);
        controller.enqueue(event(value));
        // The next pull comes once the client has taken this chunk; if it never does, let go.
        stallTimer = setTimeout(() => {
          giveUp("stream_stalled");
          controller.error(new Error(`client read nothing for ${ctx.streamWriteTimeoutMs} ms`));
        }, ctx.streamWriteTimeoutMs);
      } catch (err) {
        if (finished) return;
        if (err instanceof ClientGone) return giveUp(err.phase === "stream_stalled" ? "stream_stalled" : "stream");
        // Headers are gone already: report in-band as vLLM does, then end the stream normally.
        let body: unknown;
        if (err instanceof ApiError) body = err.body();
        else {
          ctx.logError(`stream failed: ${(err as Error)?.stack ?? String(err)}`);
          body = { error: { message: `generation failed: ${(err as Error)?.message ?? String(err)}`, type: "server_error", param: null, code: null } };
        }
        end(controller, [event(body), encoder.encode("data: [DONE]\n\n")]);
      }
    },
    cancel() {
      giveUp("stream");
    },
  });
  return new Response(stream, {
    status: 200,
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" },
  });
}
