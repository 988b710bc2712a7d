/**
 * `x-request-id` on every response, as vLLM and most gateways do: the client's own id echoed
 * back (so logs on both sides line up), or a fresh one when it sent none or one that is not a
 * plain token (at most 128 visible ASCII characters; anything else could smuggle header bytes).
 */
const SANE_ID = /^[\x21-\x7e]{1,128}$/;

export function requestIdOf(request: Request): string {
  const sent = request.headers.get("x-request-id");
  return sent && SANE_ID.test(sent) ? sent : crypto.randomUUID().replace(/-/g, "");
}

/** The response with `x-request-id: id` (copied when its headers are immutable). */
export function withRequestId(response: Response, id: string): Response {
  try {
    response.headers.set("x-request-id", id);
    return response;
  } catch {
    const copy = new Response(response.body, response);
    copy.headers.set("x-request-id", id);
    return copy;
  }
}
