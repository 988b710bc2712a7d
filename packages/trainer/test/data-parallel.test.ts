/**
 * Data-parallel training under MPI on the CPU (lavapipe): 2 ranks started by mpirun, each with
 * its own Dawn device. N=2 with b rows per rank must give the adapter of N=1 with 2b rows; a
 * resume of a killed N=2 run must give the uninterrupted run's adapter (and may use another N:
 * the data position is global); a rank that fails must end every rank, never a hang. Skipped
 * (with the reason) where mpirun is not installed: scripts/setup-mpi.sh installs Open MPI.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { readAdapterDir } from "@tuneloom/model";
import { gpuForLocalRank, listPciGpus } from "@tuneloom/kernels";
import { DataLoader } from "../src/batching.ts";
import { checkpointDirName, TRAINER_STATE_FILE } from "../src/checkpoint.ts";
import { nextMicroBatches } from "../src/distributed/data-parallel.ts";
import { MpiLibrary, MpiLibraryError } from "../src/distributed/mpi.ts";
import { detectLauncher } from "../src/distributed/world.ts";
import { TRAIN_DEFAULTS, type TrainOptions, train } from "../src/train-loop.ts";
import { tempDir, tinyModel, weightsOf, writeUnevenConversations } from "./helpers.ts";

const MPIRUN = Bun.which("mpirun");
const RANK_MAIN = path.join(import.meta.dir, "mpi", "rank-main.ts");
if (!MPIRUN) console.warn("data-parallel.test.ts: mpirun not found, the MPI runs are skipped (install Open MPI: bash scripts/setup-mpi.sh)");

const writeData = writeUnevenConversations;

// 6 steps cross into epoch 1 (a new shuffle); dropout off (masks are per micro-batch, and
// N=1 with 2b rows has one micro-batch where N=2 has two).
const STEPS = 6;
const runOptions = (data: string, out: string, o: Partial<TrainOptions> = {}): Partial<TrainOptions> => ({
  model: tinyModel().dir, data, out, rank: 4, alpha: 8, dropout: 0, targetModules: "q,v,o,down", lr: 2e-2, warmupSteps: 1,
  batchSize: 2, gradAccum: 1, maxLength: 64, seed: 3, weightDecay: 0.01, maxSteps: STEPS, saveSteps: 1, keepCheckpoints: 10, ...o,
});

/** mpirun -np 2 of rank-main.ts; a timeout guard turns a hang into a failure. */
async function mpirun(spec: object, timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now();
  const proc = Bun.spawn([MPIRUN!, "--oversubscribe", "--allow-run-as-root", "-np", "2", "-x", "LP_NUM_THREADS", "bun", RANK_MAIN, JSON.stringify(spec)], {
    // One lavapipe thread per rank: two ranks on few cores otherwise fight MPI's busy polling (40x slower).
    env: { ...process.env, LP_NUM_THREADS: "1" }, stdout: "pipe", stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  const ms = performance.now() - t0;
  if (ms >= timeoutMs) throw new Error(`mpirun did not finish in ${timeoutMs} ms (a hang): ${stderr}`);
  return { code, stdout, stderr, ms };
}

const adapterOf = (out: string) => readAdapterDir(path.join(out, "adapter")).weights;
/** ‖a − b‖₂ / ‖a‖₂ over every LoRA tensor. */
function relativeDifference(a: ReturnType<typeof adapterOf>, b: ReturnType<typeof adapterOf>): number {
  expect(b.map((w) => w.spec.base)).toEqual(a.map((w) => w.spec.base));
  let d2 = 0, n2 = 0;
  a.forEach((w, i) => {
    for (const k of ["A", "B"] as const) {
      const x = w[k], y = b[i]![k];
      for (let j = 0; j < x.length; j++) {
        d2 += (x[j]! - y[j]!) ** 2;
        n2 += x[j]! ** 2;
      }
    }
  });
  return Math.sqrt(d2 / n2);
}
const stateAt = (out: string, step: number) => JSON.parse(readFileSync(path.join(out, checkpointDirName(step), TRAINER_STATE_FILE), "utf8"));

describe("data parallel: pure parts", () => {
  test("launcher detection: Open MPI, PMI (MPICH/Hydra), none", () => {
    expect(detectLauncher({})).toBeNull();
    expect(detectLauncher({ OMPI_COMM_WORLD_SIZE: "4", OMPI_COMM_WORLD_RANK: "3", OMPI_COMM_WORLD_LOCAL_RANK: "1" })).toEqual({ launcher: "openmpi", size: 4, rank: 3, localRank: 1 });
    expect(detectLauncher({ PMI_SIZE: "2", PMI_RANK: "1", MPI_LOCALRANKID: "1" })).toEqual({ launcher: "pmi", size: 2, rank: 1, localRank: 1 });
    expect(() => detectLauncher({ OMPI_COMM_WORLD_SIZE: "2", OMPI_COMM_WORLD_RANK: "2" })).toThrow(/rank 2 of 2/);
  });

  test("a missing libmpi is a clear error naming what to install", () => {
    expect(() => MpiLibrary.open("libmpi-that-does-not-exist.so")).toThrow(MpiLibraryError);
    expect(() => MpiLibrary.open("libmpi-that-does-not-exist.so")).toThrow(/apt-get install openmpi-bin libopenmpi-dev.*TUNELOOM_MPI_LIB/);
  });

  test("rank r takes micro-batches r, r+N, ... and every rank's loader ends at the same global position", () => {
    const examples = Array.from({ length: 10 }, (_, i) => ({ inputIds: [i, i + 1, i + 2], labels: [-100, i + 1, i + 2] }));
    const loader = (size: number) => new DataLoader(examples as never, { mode: "pad", batchSize: 1, maxLength: 8, seed: 5, padId: 0 });
    const all = loader(1);
    const order = Array.from({ length: 6 }, () => all.next().batch.inputIds[0]);
    const shards = [0, 1, 2].map((rank) => {
      const l = loader(3);
      const got = nextMicroBatches(l, 2, { rank, size: 3 }).map((b) => b.inputIds[0]);
      return { got, position: l.position };
    });
    expect(shards.map((s) => s.got)).toEqual([[order[0], order[3]], [order[1], order[4]], [order[2], order[5]]]);
    expect(new Set(shards.map((s) => JSON.stringify(s.position))).size).toBe(1);
    expect(shards[0]!.position).toEqual(all.position);
  });

  test("GPU per local rank: PCI order, TUNELOOM_GPUS, the user's own choice, too many ranks", () => {
    const gpus = ["0000:18:00.0", "0000:2a:00.0"];
    expect(gpuForLocalRank(1, {}, gpus).env).toEqual({ DRI_PRIME: "pci-0000_2a_00_0", MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: "1" });
    expect(gpuForLocalRank(0, { TUNELOOM_GPUS: "0000:ab:00.0" }, gpus).env.DRI_PRIME).toBe("pci-0000_ab_00_0");
    expect(gpuForLocalRank(1, { DRI_PRIME: "pci-0000_18_00_0" }, gpus).env).toEqual({});
    expect(gpuForLocalRank(0, {}, []).env).toEqual({});
    expect(() => gpuForLocalRank(2, {}, gpus)).toThrow(/local rank 2 has no GPU of its own.*ppr:2:node/);
    expect(() => gpuForLocalRank(0, { TUNELOOM_GPUS: "gpu0" }, gpus)).toThrow(/not a PCI address/);
    expect(Array.isArray(listPciGpus())).toBe(true);
  });
});

describe.skipIf(!MPIRUN)("data parallel under mpirun (2 ranks, lavapipe)", () => {
  const root = tempDir("mpi-");
  const data = writeData(root);
  const n2 = path.join(root, "n2");

  test("N=2 with 2 rows per rank = N=1 with 4 rows (saved adapters within 1e-6)", async () => {
    const one = await train({ ...TRAIN_DEFAULTS, quiet: true, log: () => {}, ...runOptions(data, path.join(root, "n1"), { batchSize: 4 }) } as TrainOptions);
    const r = await mpirun({ options: runOptions(data, n2) });
    expect(r.stderr).not.toContain("aborting");
    expect(r.code).toBe(0);
    // Rank 0 alone printed and wrote.
    expect(r.stdout.trim().split("\n").filter((l) => l.startsWith("{"))).toHaveLength(1);
    const two = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(two.steps).toBe(STEPS);
    expect(two.tokens).toBe(one.tokens);
    expect(Math.abs(two.finalLoss - one.finalLoss) / one.finalLoss).toBeLessThan(1e-6);
    expect(relativeDifference(adapterOf(path.join(root, "n1")), adapterOf(n2))).toBeLessThanOrEqual(1e-6);
    expect(adapterOf(n2).some((w) => w.B.some((v) => v !== 0))).toBe(true);
  }, 180_000);

  test("kill -9 of rank 0 after step 3, resume with N=2: the uninterrupted run's adapter; then N=1 continues the global data position", async () => {
    const crash = path.join(root, "crash");
    const killed = await mpirun({ options: runOptions(data, crash), fail: { rank: 0, afterStep: 3, how: "kill" } });
    expect(killed.code).not.toBe(0);
    expect(stateAt(crash, 3).dataPosition).toEqual({ epoch: 0, step: 6 }); // 3 steps × 2 ranks × 1 micro-batch
    const resumed = await mpirun({ options: { ...runOptions(data, crash), resume: crash } });
    expect(resumed.code).toBe(0);
    const a = adapterOf(n2), b = adapterOf(crash);
    a.forEach((w, i) => {
      expect(b[i]!.A).toEqual(w.A);
      expect(b[i]!.B).toEqual(w.B);
    });
    // Another N: one process continues from the newest checkpoint (step 5: 10 micro-batches
    // consumed, 8 per epoch) and takes one micro-batch per step.
    expect(stateAt(crash, 5).dataPosition).toEqual({ epoch: 1, step: 2 });
    const single = await train({ ...TRAIN_DEFAULTS, quiet: true, log: () => {}, ...runOptions(data, crash), resume: crash, maxSteps: 8 } as TrainOptions);
    expect(single.steps).toBe(8);
    expect(stateAt(crash, 7).dataPosition).toEqual({ epoch: 1, step: 4 });
  }, 240_000);

  test("--full: N=2 with 2 rows per rank = N=1 with 4 rows (saved models within 1e-6)", async () => {
    const full: Partial<TrainOptions> = { full: true, maxSteps: 3, saveSteps: 0, lr: 1e-3 };
    const n1 = path.join(root, "full-n1"), n2full = path.join(root, "full-n2");
    const one = await train({ ...TRAIN_DEFAULTS, quiet: true, log: () => {}, ...runOptions(data, n1, { batchSize: 4, ...full }) } as TrainOptions);
    const r = await mpirun({ options: runOptions(data, n2full, full) });
    expect(r.stderr).not.toContain("aborting");
    expect(r.code).toBe(0);
    const two = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(two.steps).toBe(3);
    expect(two.tokens).toBe(one.tokens);
    expect(Math.abs(two.finalLoss - one.finalLoss) / one.finalLoss).toBeLessThan(1e-6);
    const a = weightsOf(path.join(n1, "model")), b = weightsOf(path.join(n2full, "model"));
    expect([...b.keys()]).toEqual([...a.keys()]);
    let d2 = 0, n2 = 0, moved = 0;
    const base = weightsOf(tinyModel().dir);
    for (const [name, x] of a) {
      const y = b.get(name)!, w0 = base.get(name)!;
      for (let j = 0; j < x.length; j++) {
        d2 += (x[j]! - y[j]!) ** 2;
        n2 += x[j]! ** 2;
        if (x[j] !== w0[j]) moved++;
      }
    }
    expect(Math.sqrt(d2 / n2)).toBeLessThanOrEqual(1e-6);
    expect(moved).toBeGreaterThan(0); // the runs trained
  }, 180_000);

  test("a rank that fails ends every rank with its error (MPI_Abort), no hang", async () => {
    const r = await mpirun({ options: runOptions(data, path.join(root, "fail")), fail: { rank: 1, afterStep: 2, how: "throw" } }, 90_000);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("rank 1/2");
    expect(r.stderr).toContain("simulated failure after step 2");
    expect(r.stderr).toContain("aborting all 2 ranks");
  }, 120_000);
});
