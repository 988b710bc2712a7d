/**
 * Request bodies are read by hand so that size, time and shape are bounded before parsing: a
 * declared Content-Length over the limit is refused before a byte is read, a chunked (or lying)
 * body is cut off the moment it passes the limit (413), a body that has not fully arrived
 * within the body timeout is a 408, a client that disconnects mid-upload is ClientGone (not an
 * error), and JSON nested past the depth limit is a 400 before JSON.parse could overflow.
 */
import { ApiError, badRequest, ClientGone } from "./errors.ts";
import { jsonDepthExceededAt } from "./json-depth.ts";
import { bodyTimeout, withTimeout } from "./timeouts.ts";

export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

export interface BodyLimits {
  maxBytes: number;
  timeoutMs: number;
  maxJsonDepth: number;
}

function tooLarge(limit: number): ApiError {
  return new ApiError(413, `request body is larger than the server's limit of ${limit} bytes`, "invalid_request_error", null, "request_too_large");
}

async function readChunks(request: Request, reader: { read(): Promise<{ done: boolean; value?: Uint8Array }> }, limit: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let step: { done: boolean; value?: Uint8Array };
    try {
      step = await reader.read();
    } catch (err) {
      if (request.signal.aborted || (err as Error)?.name === "AbortError") throw new ClientGone("upload");
      throw err;
    }
    if (step.done || !step.value) break;
    total += step.value.byteLength;
    if (total > limit) throw tooLarge(limit);
    chunks.push(step.value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

export async function readBodyBytes(request: Request, limits: Pick<BodyLimits, "maxBytes" | "timeoutMs">): Promise<Uint8Array> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limits.maxBytes) throw tooLarge(limits.maxBytes);
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  try {
    return await withTimeout(readChunks(request, reader, limits.maxBytes), limits.timeoutMs, () => bodyTimeout(limits.timeoutMs));
  } catch (err) {
    await reader.cancel().catch(() => {});
    throw err;
  }
}

/** The body as a JSON value; invalid UTF-8, JSON or nesting is a 400 that says what was wrong. */
export async function readJsonBody(request: Request, limits: BodyLimits): Promise<unknown> {
  const bytes = await readBodyBytes(request, limits);
  if (bytes.byteLength === 0) throw badRequest("request body is empty; send a JSON object");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw badRequest("request body is not valid UTF-8");
  }
  const deep = jsonDepthExceededAt(text, limits.maxJsonDepth);
  if (deep >= 0)
    throw badRequest(`request body nests arrays/objects deeper than the limit of ${limits.maxJsonDepth} levels (at character ${deep})`, null, "json_too_deep");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw badRequest(`request body is not valid JSON: ${(err as Error).message}`, null, "invalid_json");
  }
}
