/**
 * createServer's options: what each one bounds, its default, and the one check of its range
 * (the CLI checks its flags with the same helpers before loading anything).
 */
import { DEFAULT_MAX_BODY_BYTES, type BodyLimits } from "./body.ts";
import type { InferenceEngine } from "./engine.ts";
import { DEFAULT_MAX_JSON_DEPTH } from "./json-depth.ts";
import type { SchedulerOptions } from "./scheduler.ts";
import { checkIntegerFlag } from "./startup-checks.ts";
import { DEFAULT_BODY_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_STREAM_WRITE_TIMEOUT_MS, MAX_IDLE_TIMEOUT_S } from "./timeouts.ts";

export interface ServerOptions extends SchedulerOptions {
  engine: InferenceEngine;
  /** When set, every /v1 and tokenizer route needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Request bodies larger than this are refused with 413 (default 4 MiB). */
  maxBodyBytes?: number;
  /** A request body must have fully arrived this long after its headers, else 408 (default 30 s). */
  bodyTimeoutMs?: number;
  /** Request JSON nested deeper than this is a 400 (default 64). */
  maxJsonDepth?: number;
  /** A streaming client that reads nothing this long is dropped and its generation cancelled (default 30 s). */
  streamWriteTimeoutMs?: number;
  /** Seconds a connection may send nothing, between requests or mid-upload (Bun.serve idleTimeout; default 15). */
  idleTimeoutSeconds?: number;
  /** Host names (port ignored; `.example.com` admits subdomains) the server answers; null or absent: any. */
  allowedHosts?: readonly string[] | null;
  /** vLLM's --enable-lora-runtime-updates: POST /v1/load_lora_adapter and /v1/unload_lora_adapter answer (else 403). */
  enableLoraRuntimeUpdates?: boolean;
  /** Where unexpected errors are reported; default console.error. */
  logError?: (message: string) => void;
}

export interface ResolvedServerOptions {
  limits: BodyLimits;
  streamWriteTimeoutMs: number;
  idleTimeoutSeconds: number;
  allowedHosts: readonly string[] | null;
  logError: (message: string) => void;
}

export function resolveServerOptions(options: ServerOptions): ResolvedServerOptions {
  checkIntegerFlag("maxBodyBytes", options.maxBodyBytes, 1);
  checkIntegerFlag("bodyTimeoutMs", options.bodyTimeoutMs, 1);
  checkIntegerFlag("maxJsonDepth", options.maxJsonDepth, 1);
  checkIntegerFlag("streamWriteTimeoutMs", options.streamWriteTimeoutMs, 1);
  checkIntegerFlag("idleTimeoutSeconds", options.idleTimeoutSeconds, 1, MAX_IDLE_TIMEOUT_S);
  return {
    limits: {
      maxBytes: options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
      timeoutMs: options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS,
      maxJsonDepth: options.maxJsonDepth ?? DEFAULT_MAX_JSON_DEPTH,
    },
    streamWriteTimeoutMs: options.streamWriteTimeoutMs ?? DEFAULT_STREAM_WRITE_TIMEOUT_MS,
    idleTimeoutSeconds: options.idleTimeoutSeconds ?? DEFAULT_IDLE_TIMEOUT_S,
    allowedHosts: options.allowedHosts ?? null,
    logError: options.logError ?? ((m: string) => console.error(m)),
  };
}
