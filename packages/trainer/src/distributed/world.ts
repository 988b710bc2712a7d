/**
 * The process group of a data-parallel run: which rank this process is, how many there are,
 * and the collectives the trainer needs. `mpirun -np N bun run train -- ...` starts N copies;
 * each finds its place from the launcher's environment:
 *   Open MPI:               OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK
 *   MPICH/Hydra, Intel MPI: PMI_SIZE, PMI_RANK, MPI_LOCALRANKID
 * Without these variables the run is a single process (`SINGLE_PROCESS`) and libmpi is never
 * loaded, so nothing changes for anyone who does not launch with MPI. With them, libmpi must
 * load: a launched rank that silently trained alone would waste N-1 GPUs and race its
 * siblings for the output directory.
 */
import { MpiLibrary } from "./mpi.ts";

export interface LauncherInfo {
  launcher: "openmpi" | "pmi";
  rank: number;
  size: number;
  /** Rank among the processes on this machine: picks the GPU (gpu-select.ts). */
  localRank: number;
}

/** The launcher's view of this process, or null when no MPI launcher started it. */
export function detectLauncher(env: Record<string, string | undefined> = process.env): LauncherInfo | null {
  const int = (name: string) => {
    const v = env[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name}=${v}: expected a non-negative integer`);
    return n;
  };
  let info: LauncherInfo | null = null;
  const ompiSize = int("OMPI_COMM_WORLD_SIZE");
  if (ompiSize !== undefined) {
    info = { launcher: "openmpi", size: ompiSize, rank: int("OMPI_COMM_WORLD_RANK") ?? 0, localRank: int("OMPI_COMM_WORLD_LOCAL_RANK") ?? 0 };
  } else {
    const pmiSize = int("PMI_SIZE");
    if (pmiSize !== undefined) info = { launcher: "pmi", size: pmiSize, rank: int("PMI_RANK") ?? 0, localRank: int("MPI_LOCALRANKID") ?? int("PMI_LOCAL_RANK") ?? 0 };
  }
  if (info && !(info.size >= 1 && info.rank < info.size)) throw new Error(`MPI launcher environment says rank ${info.rank} of ${info.size}`);
  return info;
}

/** Collectives over host buffers, in place, identical on every rank afterwards. */
export interface Collectives {
  readonly rank: number;
  readonly size: number;
  allReduceSum(buf: Float32Array | Float64Array): void;
  broadcast(buf: Uint8Array, root?: number): void;
}

export interface World extends Collectives {
  readonly localRank: number;
  /** Rank 0: the one process that writes logs, metrics, checkpoints and the adapter. */
  readonly isRoot: boolean;
  /** e.g. "rank 1/4 (Open MPI, libmpi.so.40)"; "single process" without MPI. */
  readonly description: string;
  /** Ends every rank of the job with `code` (MPI_Abort): a failed rank must not leave the others waiting. */
  abort(code: number): never;
  finalize(): void;
}

export const SINGLE_PROCESS: World = {
  rank: 0, size: 1, localRank: 0, isRoot: true, description: "single process",
  allReduceSum() {},
  broadcast() {},
  abort(code) {
    process.exit(code);
  },
  finalize() {},
};

let current: World | null = null;

/**
 * This process's world: MPI-initialized once when a launcher started it, SINGLE_PROCESS
 * otherwise. Throws (before any work) when launched but libmpi cannot be loaded.
 */
export function initWorld(env: Record<string, string | undefined> = process.env): World {
  if (current) return current;
  const info = detectLauncher(env);
  if (!info) return (current = SINGLE_PROCESS);
  const mpi = MpiLibrary.open(env.TUNELOOM_MPI_LIB);
  mpi.init();
  const rank = mpi.rank(), size = mpi.size();
  if (rank !== info.rank || size !== info.size) {
    throw new Error(`MPI says rank ${rank} of ${size}, the launcher's environment rank ${info.rank} of ${info.size}: is ${mpi.path} the MPI that mpirun belongs to?`);
  }
  let finalized = false;
  return (current = {
    rank, size, localRank: info.localRank, isRoot: rank === 0,
    description: `rank ${rank}/${size} (${mpi.flavour === "openmpi" ? "Open MPI" : "MPICH ABI"}, ${mpi.path})`,
    allReduceSum: (buf) => mpi.allReduceSum(buf),
    broadcast: (buf, root) => mpi.broadcast(buf, root),
    abort: (code) => mpi.abort(code),
    finalize: () => {
      if (!finalized) mpi.finalize();
      finalized = true;
    },
  });
}

/** Root's JSON value on every rank (others pass anything, e.g. null). */
export function broadcastJson<T>(world: Collectives, value: T, root = 0): T {
  if (world.size === 1) return value;
  const mine = world.rank === root ? new TextEncoder().encode(JSON.stringify(value)) : new Uint8Array(0);
  const len = new Float64Array([mine.length]);
  world.broadcast(new Uint8Array(len.buffer), root);
  const buf = world.rank === root ? mine : new Uint8Array(len[0]!);
  world.broadcast(buf, root);
  return JSON.parse(new TextDecoder().decode(buf)) as T;
}

/** Root's f32 values on every rank, in place (e.g. the weights a resume restored on root). */
export function broadcastF32(world: Collectives, values: Float32Array, root = 0) {
  world.broadcast(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), root);
}
