/**
 * `--api-key`: the routes it guards need `Authorization: Bearer <key>`, compared in constant
 * time; anything else is a 401 in OpenAI's body (the official clients raise AuthenticationError).
 */
import type { MiddlewareHandler } from "hono";
import { timingSafeEqual } from "node:crypto";
import { ApiError, errorResponse } from "./errors.ts";

export function apiKeyGuard(apiKey: string | undefined): MiddlewareHandler {
  const key = apiKey ? new TextEncoder().encode(apiKey) : null;
  const authorized = (header: string): boolean => {
    if (!key) return true;
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m) return false;
    const given = new TextEncoder().encode(m[1]!.trim());
    return given.length === key.length && timingSafeEqual(given, key);
  };
  return async (c, next) => {
    if (!authorized(c.req.header("authorization") ?? ""))
      return errorResponse(
        new ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' with the key the server was started with", "authentication_error", null, "invalid_api_key"),
      );
    await next();
  };
}
