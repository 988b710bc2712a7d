/**
 * Every error leaves the server as OpenAI's body, so the official clients raise the right
 * exception class with a readable message:
 * `{"error": {"message", "type", "param", "code"}}`.
 */
export type ErrorType = "invalid_request_error" | "authentication_error" | "permission_error" | "not_found_error" | "rate_limit_error" | "server_error";

export interface OpenAIErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export function badRequest(message: string, param: string | null = null, code: string | null = null): ApiError {
  return new ApiError(400, message, "invalid_request_error", param, code);
}

export function errorResponse(err: ApiError, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(err.body()), {
    status: err.status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/**
 * The client went away (mid-upload, mid-generation, or stopped reading a stream). Not an error
 * of the server's: counted in tuneloom_client_aborts_total, never logged, answered 499 if at all.
 */
export class ClientGone extends Error {
  constructor(readonly phase: "upload" | "generation" | "stream" | "stream_stalled") {
    super(`client gone (${phase})`);
    this.name = "ClientGone";
  }
}

/** In-flight work ended by a shutdown that outlasted its drain timeout. */
export function shutdownError(): ApiError {
  return new ApiError(503, "the server shut down before this request finished (drain timeout); retry on another instance", "server_error", null, "server_shutdown");
}
