/**
 * Times MPI_Allreduce (f32 sum, in place, host memory) of a LoRA gradient-sized buffer, the
 * one collective of a data-parallel step (docs/distributed.md, "Is overlap needed?").
 *   mpirun -np 2 bun scripts/mpi-allreduce-bench.ts [floats=11272192] [repeats=20]
 * 11,272,192 = Llama-3.2-1B's LoRA parameters at r=16 on all 7 projections. Rank 0 prints one
 * JSON line: median and min milliseconds, and the bus bandwidth 2·(N-1)/N·bytes/time.
 */
import { initWorld } from "../packages/trainer/src/distributed/world.ts";

const world = initWorld();
const floats = Number(process.argv[2] ?? 11_272_192), repeats = Number(process.argv[3] ?? 20);
const buf = new Float32Array(floats).fill(1 / world.size);
for (let i = 0; i < 3; i++) world.allReduceSum(buf); // warm-up: connections, pinned buffers
const times: number[] = [];
for (let i = 0; i < repeats; i++) {
  world.allReduceSum(new Float64Array(1)); // line the ranks up so each sample times the collective alone
  const t0 = performance.now();
  world.allReduceSum(buf);
  times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
const median = times[Math.floor(times.length / 2)]!;
if (world.isRoot) {
  const busGBs = (2 * (world.size - 1) / world.size) * floats * 4 / (median / 1000) / 1e9;
  console.log(JSON.stringify({ bench: "mpi_allreduce_f32", ranks: world.size, floats, ms_median: +median.toFixed(2), ms_min: +times[0]!.toFixed(2), bus_GB_s: +busGBs.toFixed(2) }));
}
world.finalize();
