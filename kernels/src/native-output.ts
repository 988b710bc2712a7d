/**
 * Dawn (inside dawn.node) prints to the process's own file descriptors, not through JS: the
 * adapter's "Warning: ... artificially reduced ..." lines on stderr while an adapter is
 * requested, and a "Compilation log" with every shader warning on stdout while a shader module
 * is created. Both happen synchronously inside those calls (verified with Bun 1.4.5 and
 * webgpu 0.6.2), so the runtime wraps exactly those calls: stdout and stderr are pointed at an
 * unlinked temporary file for their duration (libc dup/dup2 through bun:ffi, C stdio flushed
 * first and last), and what was written is handed back for the caller to count, keep or
 * re-emit. Where bun:ffi or libc is not available the calls run unwrapped.
 */
import { closeSync, openSync, readSync, unlinkSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export interface NativeOutput {
  stdout: string;
  stderr: string;
}

interface Libc {
  dup(fd: number): number;
  dup2(from: number, to: number): number;
  fflush(stream: null): number;
}

let libc: Libc | null | undefined;

function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (process.platform !== "linux" || process.env.TUNELOOM_DAWN_LOG === "1") return libc;
  try {
    const { dlopen, FFIType } = require("bun:ffi") as typeof import("bun:ffi");
    const lib = dlopen("libc.so.6", {
      dup: { args: [FFIType.i32], returns: FFIType.i32 },
      dup2: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      fflush: { args: [FFIType.ptr], returns: FFIType.i32 },
    });
    libc = lib.symbols as unknown as Libc;
  } catch {
    libc = null;
  }
  return libc;
}

interface Redirect {
  restore(): NativeOutput;
}

let depth = 0;

function redirect(c: Libc): Redirect | null {
  const files: { fd: number; saved: number; tmp: number }[] = [];
  c.fflush(null);
  for (const fd of [1, 2]) {
    const name = path.join(tmpdir(), `tuneloom-native-${process.pid}-${fd}-${Date.now()}`);
    const tmp = openSync(name, "w+");
    unlinkSync(name);
    const saved = c.dup(fd);
    if (saved < 0 || c.dup2(tmp, fd) < 0) {
      closeSync(tmp);
      for (const f of files) c.dup2(f.saved, f.fd), closeSync(f.saved), closeSync(f.tmp);
      return null;
    }
    files.push({ fd, saved, tmp });
  }
  return {
    restore() {
      c.fflush(null);
      const out: string[] = [];
      for (const f of files) {
        c.dup2(f.saved, f.fd);
        closeSync(f.saved);
        const chunks: Buffer[] = [];
        const buf = Buffer.alloc(65536);
        for (let pos = 0; ; ) {
          const n = readSync(f.tmp, buf, 0, buf.length, pos);
          if (n <= 0) break;
          chunks.push(Buffer.from(buf.subarray(0, n)));
          pos += n;
        }
        closeSync(f.tmp);
        out.push(Buffer.concat(chunks).toString("utf8"));
      }
      return { stdout: out[0] ?? "", stderr: out[1] ?? "" };
    },
  };
}

/** Starts a capture (none when nested in another, or where it is unavailable); `end` finishes it. */
function begin(): { end: () => NativeOutput; abandon: () => void } {
  const c = depth === 0 ? loadLibc() : null;
  const r = c ? redirect(c) : null;
  depth++;
  let done = false;
  const finish = () => {
    if (done) return { stdout: "", stderr: "" };
    done = true;
    depth--;
    return r ? r.restore() : { stdout: "", stderr: "" };
  };
  return { end: finish, abandon: () => replay(finish()) };
}

/** Runs `fn` with the process's stdout and stderr captured (nested calls capture into the outer one). */
export function captureNativeOutput<T>(fn: () => T): { result: T; output: NativeOutput } {
  const capture = begin();
  try {
    const result = fn();
    return { result, output: capture.end() };
  } catch (e) {
    capture.abandon();
    throw e;
  }
}

/** The async form, for calls that print before their promise settles (requestAdapter). */
export async function captureNativeOutputAsync<T>(fn: () => Promise<T>): Promise<{ result: T; output: NativeOutput }> {
  const capture = begin();
  try {
    const result = await fn();
    return { result, output: capture.end() };
  } catch (e) {
    capture.abandon();
    throw e;
  }
}

/** Writes captured output back to where it was headed. */
export function replay(o: NativeOutput) {
  if (o.stdout) writeSync(1, o.stdout);
  if (o.stderr) writeSync(2, o.stderr);
}
