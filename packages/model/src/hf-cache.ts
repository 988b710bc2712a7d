/**
 * `--model org/name` → a snapshot directory in the local Hugging Face hub cache, found the way
 * huggingface_hub finds it offline. Never downloads.
 *
 *   cache  = $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub
 *   repo   = cache/models--{org}--{name}
 *   commit = contents of repo/refs/main (or repo/refs/{revision})
 *   dir    = repo/snapshots/{commit}
 *
 * An existing directory always wins over a repo id, so a relative path like `models/x` is a path.
 */
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export function hfHubCacheDir(env: Record<string, string | undefined> = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, "hub");
  return join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface", "hub");
}

const REPO_ID = /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/;

export class ModelNotFoundError extends Error {
  override readonly name = "ModelNotFoundError";
}

/**
 * A model directory from a path or a Hub repo id (`org/name`, optionally `org/name@revision`).
 * `flag` names the option in the error, which lists where it looked.
 */
export function resolveModelDir(spec: string, options: { flag?: string; env?: Record<string, string | undefined> } = {}): string {
  const flag = options.flag ?? "--model";
  if (existsSync(spec)) {
    if (!statSync(spec).isDirectory()) throw new ModelNotFoundError(`${flag} ${spec} is a file; pass the model's directory (Hugging Face layout) or a Hub repo id`);
    return spec;
  }
  const [id, revision = "main"] = spec.split("@") as [string, string?];
  if (!REPO_ID.test(id) || spec.split("@").length > 2) throw new ModelNotFoundError(`${flag} ${spec}: directory not found`);
  const cache = hfHubCacheDir(options.env);
  const repo = join(cache, `models--${id.replace("/", "--")}`);
  const ref = join(repo, "refs", revision);
  const looked = `looked for the directory ${spec} and for ${ref} → ${join(repo, "snapshots")}/<commit> in the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)`;
  const notFound = (why: string) =>
    new ModelNotFoundError(`${flag} ${spec}: ${why}; ${looked}. tuneloom never downloads: fetch it first (e.g. \`hf download ${id}\`) or pass a directory`);
  if (!existsSync(repo)) return throwIt(notFound("not found"));
  let commit: string;
  if (existsSync(ref)) commit = readFileSync(ref, "utf8").trim();
  else if (/^[0-9a-f]{40}$/.test(revision)) commit = revision;
  else {
    const snaps = existsSync(join(repo, "snapshots")) ? readdirSync(join(repo, "snapshots")) : [];
    if (revision !== "main" || snaps.length !== 1) return throwIt(notFound(`the cache has ${repo} but no refs/${revision}${snaps.length > 1 ? ` and ${snaps.length} snapshots to choose from` : ""}`));
    commit = snaps[0]!;
  }
  const dir = join(repo, "snapshots", commit);
  if (!existsSync(join(dir, "config.json"))) return throwIt(notFound(`snapshot ${dir} has no config.json`));
  return dir;
}

function throwIt(e: Error): never {
  throw e;
}
