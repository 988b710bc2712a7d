/**
 * The one error type rendering throws, so callers (trainer, server, CLI) can tell a template
 * failure from their own bugs. transformers raises `TemplateError` for `raise_exception(msg)`;
 * we keep the template's own message untouched because it is what users act on
 * ("Conversation roles must alternate user/assistant/user/assistant/...").
 */
export type TemplateErrorKind =
  /** The template called `raise_exception(message)`. */
  | "raise_exception"
  /** The source does not parse. */
  | "syntax"
  /** Anything else that failed while rendering (unknown filter, bad operand, ...). */
  | "render";

export class TemplateError extends Error {
  override readonly name = "TemplateError";
  constructor(
    message: string,
    readonly kind: TemplateErrorKind,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
