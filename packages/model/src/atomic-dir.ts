/**
 * Directories that appear whole or not at all: an adapter, a checkpoint, a merged model. A crash
 * or a full disk never leaves half a directory where a server or a resume would load it, and a
 * crash while replacing one never loses both copies.
 *
 * Writing `<dir>` goes through sibling names that say how far the write got:
 *
 *   <dir>.tmp-<pid>   being filled: incomplete, never loaded; recovery deletes it
 *   <dir>.new-<pid>   complete, waiting to replace <dir>
 *   <dir>.old-<pid>   the replaced <dir>, deleted once the new one is in place
 *
 * Replacing an existing `<dir>` swaps `.new` and `<dir>` with one renameat2(RENAME_EXCHANGE)
 * where the kernel and file system offer it (Linux on ext4, xfs, btrfs, tmpfs): there is no
 * moment without a `<dir>`. Elsewhere (rename(2) cannot replace a non-empty directory) the old
 * one is renamed aside only once the new one is complete, and the new one renamed in: a crash
 * between those two renames leaves no `<dir>` but both copies, and `recoverDirWrites` (run at
 * the next start) puts the newest complete copy back.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from "node:fs";
import path from "node:path";

const STAGE = /^(.+)\.(tmp|new|old)-(\d+)$/;

/**
 * Builds a directory next to its destination and moves it into place (see the header); on any
 * error while filling, the temporary directory is removed and `dir` is left as it was. An
 * existing `dir` is replaced.
 */
export function writeDirAtomically(dir: string, fill: (tmpDir: string) => void): void {
  const target = path.resolve(dir);
  mkdirSync(path.dirname(target), { recursive: true });
  const tmp = `${target}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    fill(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  testCrashPoint("after-fill");
  if (!existsSync(target)) {
    renameSync(tmp, target);
    return;
  }
  const ready = `${target}.new-${process.pid}`;
  rmSync(ready, { recursive: true, force: true });
  renameSync(tmp, ready);
  testCrashPoint("before-replace");
  if (process.env.TUNELOOM_TEST_CRASH_AT !== "between-renames" && exchangeDirs(ready, target)) {
    rmSync(ready, { recursive: true, force: true }); // now the previous contents
    return;
  }
  const old = `${target}.old-${process.pid}`;
  rmSync(old, { recursive: true, force: true });
  renameSync(target, old);
  testCrashPoint("between-renames");
  try {
    renameSync(ready, target);
  } catch (e) {
    renameSync(old, target);
    rmSync(ready, { recursive: true, force: true });
    throw e;
  }
  rmSync(old, { recursive: true, force: true });
}

/**
 * Finishes or undoes the writes that a crash interrupted among `parent`'s entries: a missing
 * `<dir>` is restored from its newest complete copy (`.new`, else `.old`), and every leftover
 * `.tmp`/`.new`/`.old` sibling is removed. Entries of a process still running are left alone, and
 * so is every name that `isOurs` (given the destination's name) does not claim: `parent` may hold
 * a user's own `notes.old-2024`. Returns one line per action, for the log.
 */
export function recoverDirWrites(parent: string, isOurs: (name: string) => boolean = () => true): string[] {
  if (!existsSync(parent)) return [];
  const byTarget = new Map<string, { name: string; stage: string; pid: number }[]>();
  for (const name of readdirSync(parent)) {
    const m = STAGE.exec(name);
    if (!m || !isOurs(m[1]!)) continue;
    const list = byTarget.get(m[1]!) ?? [];
    list.push({ name, stage: m[2]!, pid: Number(m[3]) });
    byTarget.set(m[1]!, list);
  }
  const actions: string[] = [];
  for (const [base, entries] of byTarget) {
    const target = path.join(parent, base);
    const leftovers = entries.filter((e) => {
      if (!processIsRunning(e.pid)) return true;
      actions.push(`left ${path.join(parent, e.name)} alone: process ${e.pid} is still running`);
      return false;
    });
    if (!existsSync(target)) {
      const complete = leftovers.find((e) => e.stage === "new") ?? leftovers.find((e) => e.stage === "old");
      if (complete) {
        renameSync(path.join(parent, complete.name), target);
        actions.push(`restored ${target} from ${complete.name} (a save was interrupted before it could replace the directory)`);
        leftovers.splice(leftovers.indexOf(complete), 1);
      }
    }
    for (const e of leftovers) {
      rmSync(path.join(parent, e.name), { recursive: true, force: true });
      const what = e.stage === "tmp" ? "an incomplete save of it" : e.stage === "new" ? "a save of it that never replaced it" : "the copy of it that a save replaced";
      actions.push(`removed ${path.join(parent, e.name)} (${what}, left by process ${e.pid})`);
    }
  }
  return actions;
}

function processIsRunning(pid: number): boolean {
  if (pid === process.pid) return false; // writes here are synchronous: none of ours is under way
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Tests only: `TUNELOOM_TEST_CRASH_AT=<point>` kills this process with SIGKILL at that point of
 * a replacement, as a power cut would. "between-renames" also disables the atomic exchange.
 */
function testCrashPoint(point: "after-fill" | "before-replace" | "between-renames"): void {
  if (process.env.TUNELOOM_TEST_CRASH_AT === point) process.kill(process.pid, "SIGKILL");
}

type RenameAt2 = (olddirfd: number, oldpath: Uint8Array, newdirfd: number, newpath: Uint8Array, flags: number) => number;
let renameat2: RenameAt2 | null | undefined;
const AT_FDCWD = -100, RENAME_EXCHANGE = 2;

/** Atomically swaps two paths (Linux renameat2); false where that is not available. */
function exchangeDirs(a: string, b: string): boolean {
  if (renameat2 === undefined) {
    renameat2 = null;
    if (process.platform === "linux") {
      try {
        const { dlopen, FFIType } = require("bun:ffi") as typeof import("bun:ffi");
        const lib = dlopen("libc.so.6", {
          renameat2: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
        });
        renameat2 = lib.symbols.renameat2 as unknown as RenameAt2;
      } catch {
        renameat2 = null;
      }
    }
  }
  if (!renameat2) return false;
  const cstr = (s: string) => new TextEncoder().encode(s + "\0");
  return renameat2(AT_FDCWD, cstr(a), AT_FDCWD, cstr(b), RENAME_EXCHANGE) === 0;
}
