/**
 * JSON routes take `Content-Type: application/json` (optionally `; charset=utf-8`) and nothing
 * else. A browser sends a cross-origin `text/plain` or form POST without a CORS preflight, so a
 * server that parsed any body as JSON would run generations for any web page its user visits;
 * requiring the JSON type forces the preflight, which this server never answers.
 */
import { ApiError } from "./errors.ts";

/** null when acceptable, else the 415 to answer with. */
export function checkJsonContentType(header: string | null): ApiError | null {
  const [type = "", ...params] = (header ?? "").split(";").map((s) => s.trim().toLowerCase());
  const charset = params.find((p) => p.startsWith("charset="))?.slice("charset=".length).replace(/^"|"$/g, "");
  if (type === "application/json" && (charset === undefined || charset === "utf-8" || charset === "utf8")) return null;
  const got = header === null ? "no Content-Type" : `Content-Type '${header}'`;
  return new ApiError(
    415,
    `this endpoint takes a JSON body: send 'Content-Type: application/json' (charset utf-8, if any); got ${got}`,
    "invalid_request_error",
    null,
    "unsupported_media_type",
  );
}
