/**
 * What Jinja2 does to a template's text before lexing, that the library does not.
 *
 * Jinja2 normalises every newline sequence in the source (`\r\n`, `\r`) to `\n`
 * (newline_sequence default), so a template saved with Windows line endings renders the same
 * as one with Unix endings. Variable values are never touched. Dropping one trailing newline
 * (keep_trailing_newline=False) and `{% generation %}` are already handled by the lexer.
 */
export function normalizeTemplateSource(source: string): string {
  return source.replace(/\r\n?/g, "\n");
}

/** Hex sha256 of the exact template bytes (a string is hashed as UTF-8), used to pin the template a model trained with. */
export function templateSha256(source: string | Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(source).digest("hex");
}
