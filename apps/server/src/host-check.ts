/**
 * The Host allow-list against DNS rebinding: a web page on evil.example can re-point its own
 * name at 127.0.0.1 and then talk to a local server as same-origin; only the Host header
 * (`evil.example:8000`) gives it away. A key-less server on loopback therefore answers only
 * to the names loopback is reached by; one with an API key, or listening beyond loopback,
 * accepts any Host unless `--allowed-hosts` says otherwise.
 */
import { ApiError } from "./errors.ts";

/** `example.com`, `[::1]`: lower case, port and trailing dot dropped, IPv6 in brackets. */
export function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith("[")) h = h.slice(0, h.indexOf("]") + 1);
  else if (h.split(":").length > 2) h = `[${h}]`; // a bare IPv6 literal (only in flags)
  else h = h.replace(/:\d*$/, "");
  return h.replace(/\.$/, "");
}

const LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"];

export function isLoopbackHost(host: string): boolean {
  const h = normalizeHost(host);
  return h === "localhost" || h === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** The default: loopback names plus the bound host when key-less on loopback, else null (any Host). */
export function defaultAllowedHosts(boundHost: string, apiKey: string | undefined): string[] | null {
  if (apiKey || !isLoopbackHost(boundHost)) return null;
  return [...new Set([...LOOPBACK_NAMES, normalizeHost(boundHost)])];
}

/** `--allowed-hosts a,b,.example.com`: a leading dot admits subdomains; `*` admits any Host. */
export function parseAllowedHosts(flag: string): string[] | null {
  const names = flag.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (names.length === 0) throw new Error(`--allowed-hosts needs at least one host name (or '*' for any), got '${flag}'`);
  if (names.includes("*")) return null;
  return names.map((n) => (n.startsWith(".") ? `.${normalizeHost(n.slice(1))}` : normalizeHost(n)));
}

/** null when `hostHeader` is allowed, else the 403 to answer with. */
export function checkHost(hostHeader: string | null, allowed: readonly string[] | null): ApiError | null {
  if (allowed === null) return null;
  const host = hostHeader === null ? null : normalizeHost(hostHeader);
  if (host !== null && allowed.some((a) => a === host || (a.startsWith(".") && (host === a.slice(1) || host.endsWith(a))))) return null;
  return new ApiError(
    403,
    `Host '${hostHeader ?? ""}' is not allowed (allowed: ${allowed.join(", ")}); start the server with --allowed-hosts to add it, or --api-key to accept any Host`,
    "permission_error",
    null,
    "host_not_allowed",
  );
}
