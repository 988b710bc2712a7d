/**
 * The entry of a command that may run as one rank of an MPI job: `mpirun -np N bun run train
 * -- ...`. Outside a launcher it just runs the work (SINGLE_PROCESS). Under one it joins the
 * job, points this process at its local rank's GPU before any adapter is requested, and turns
 * any failure into MPI_Abort: the other ranks are blocked in an all-reduce waiting for this
 * one, and only an abort (which the launcher relays to every process) ends them instead of a
 * hang.
 */
import { selectGpuForLocalRank } from "@tuneloom/kernels";
import { initWorld, type World } from "./world.ts";

export async function runAsRank<T>(work: (world: World) => Promise<T>, log: (line: string) => void = (l) => process.stderr.write(l + "\n")): Promise<T> {
  const world = initWorld();
  if (world.size === 1) return work(world);
  const fail = (err: unknown): never => {
    const message = err instanceof Error ? err.message : String(err);
    log(`${world.description}: ${message}`);
    if (process.env.TUNELOOM_DEBUG && err instanceof Error) log(err.stack ?? "");
    log(`${world.description}: aborting all ${world.size} ranks`);
    return world.abort(1);
  };
  process.on("uncaughtException", fail);
  process.on("unhandledRejection", fail);
  let result: T;
  try {
    const gpu = selectGpuForLocalRank(world.localRank);
    if (world.isRoot || process.env.TUNELOOM_DEBUG) log(`${world.description}: ${gpu}`);
    result = await work(world);
  } catch (err) {
    return fail(err);
  }
  world.finalize();
  return result;
}
