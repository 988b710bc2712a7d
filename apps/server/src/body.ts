/**
 * Request bodies are read by hand so that size is bounded twice: a declared Content-Length over
 * the limit is refused before a byte is read, and a chunked (or lying) body is cut off the
 * moment it passes the limit while streaming in. Either way: 413 with an OpenAI error body.
 */
import { ApiError, badRequest } from "./errors.ts";

export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

function tooLarge(limit: number): ApiError {
  return new ApiError(413, `request body is larger than the server's limit of ${limit} bytes`, "invalid_request_error", null, "request_too_large");
}

export async function readBodyBytes(request: Request, limit: number): Promise<Uint8Array> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) throw tooLarge(limit);
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** The body as a JSON value; invalid UTF-8 or JSON is a 400 that says where parsing failed. */
export async function readJsonBody(request: Request, limit: number): Promise<unknown> {
  const bytes = await readBodyBytes(request, limit);
  if (bytes.byteLength === 0) throw badRequest("request body is empty; send a JSON object");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw badRequest("request body is not valid UTF-8");
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw badRequest(`request body is not valid JSON: ${(err as Error).message}`, null, "invalid_json");
  }
}
