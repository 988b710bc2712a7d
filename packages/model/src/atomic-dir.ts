/**
 * Directories that appear whole or not at all: an adapter, a checkpoint, a merged model. A crash
 * or a full disk never leaves half a directory where a server or a resume would load it.
 */
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import path from "node:path";

/**
 * Builds a directory next to its destination (`<dir>.tmp-<pid>`) and renames it into place; on
 * any error the temporary directory is removed and `dir` is left as it was. An existing `dir`
 * is replaced.
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
  if (existsSync(target)) {
    // rename() cannot replace a non-empty directory: move the old one aside first.
    const old = `${target}.old-${process.pid}`;
    rmSync(old, { recursive: true, force: true });
    renameSync(target, old);
    try {
      renameSync(tmp, target);
    } catch (e) {
      renameSync(old, target);
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    rmSync(old, { recursive: true, force: true });
  } else {
    renameSync(tmp, target);
  }
}
