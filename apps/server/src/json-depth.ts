/**
 * JSON.parse recurses once per nesting level, so `[[[[...]]]]` a million deep overflows the
 * stack (a 500 "Maximum call stack size exceeded") and the schema validators after it recurse
 * too. This scan runs first: a loop, not recursion, that counts open arrays and objects outside
 * strings and stops at the first level past the limit. It does not validate; JSON.parse does.
 */
export const DEFAULT_MAX_JSON_DEPTH = 64;

/** The offset at which `text` nests deeper than `maxDepth` arrays/objects, or -1 if it never does. */
export function jsonDepthExceededAt(text: string, maxDepth: number): number {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++; // skip the escaped character (\" included)
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > maxDepth) return i;
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) depth--;
  }
  return -1;
}
