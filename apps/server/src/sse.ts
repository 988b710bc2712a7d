/**
 * Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, `data: [DONE]\n\n`
 * last. Pull-based, so a slow client slows its own generation reads instead of piling chunks up
 * in memory; a client that goes away cancels the stream, which cancels the generation.
 */
export function sseResponse(chunks: AsyncIterable<unknown>, onCancel: () => void, logError: (message: string) => void = console.error): Response {
  const encoder = new TextEncoder();
  const iterator = chunks[Symbol.asyncIterator]();
  let finished = false;
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (finished) return;
      try {
        const { value, done } = await iterator.next();
        if (finished) return; // cancelled while waiting: the controller is closed
        if (done) {
          finished = true;
          controller.enqueue(encoder.encode("data: [DONE]\n\n"));
          controller.close();
          return;
        }
        controller.enqueue(encoder.encode(`data: ${JSON.stringify(value)}\n\n`));
      } catch (err) {
        if (finished) return;
        // Headers are gone already: report in-band as vLLM does, then end the stream normally.
        finished = true;
        logError(`stream failed: ${(err as Error)?.stack ?? String(err)}`);
        const message = `generation failed: ${(err as Error)?.message ?? String(err)}`;
        controller.enqueue(encoder.encode(`data: ${JSON.stringify({ error: { message, type: "server_error", param: null, code: null } })}\n\n`));
        controller.enqueue(encoder.encode("data: [DONE]\n\n"));
        controller.close();
      }
    },
    async cancel() {
      finished = true;
      onCancel();
      await iterator.return?.().catch(() => {});
    },
  });
  return new Response(stream, {
    status: 200,
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" },
  });
}
