/**
 * Every error leaves the server as OpenAI's body, so the official clients raise the right
 * exception class with a readable message:
 * `{"error": {"message", "type", "param", "code"}}`.
 */
export type ErrorType = "invalid_request_error" | "authentication_error" | "not_found_error" | "rate_limit_error" | "server_error";

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
