/**
 * What train() does differently as one of N data-parallel ranks (N = 1 changes nothing):
 *  - one optimizer step consumes gradAccum·N micro-batches of the one global order the
 *    DataLoader defines; rank r computes micro-batches r, r+N, r+2N, ... of them and steps past
 *    the others, so every rank's loader holds the same global position and a checkpoint's
 *    data position means the same thing whatever N resumes it;
 *  - the gradients are summed across ranks before clipping and AdamW (LoraTrainer, FullTrainer), so the
 *    update is that of the global batch and the weights stay identical on every rank;
 *  - rank 0 alone opens the run directory and writes logs, metrics, checkpoints and the
 *    adapter; it broadcasts what it opened and, at the start, its weights, AdamW moments and
 *    run state (a resumed checkpoint is read by rank 0 only: no shared filesystem needed).
 */
import type { Batch, DataLoader, DataPosition } from "../batching.ts";
import type { LoraTrainer } from "../gpu/lora-trainer.ts";
import { broadcastJson, type Collectives } from "./world.ts";

/** This rank's micro-batches of the next optimizer step (gradAccum of them); the loader moves past all N·gradAccum. */
export function nextMicroBatches(loader: DataLoader, gradAccum: number, world: Pick<Collectives, "rank" | "size">): Batch[] {
  const mine: Batch[] = [];
  for (let i = 0; i < gradAccum * world.size; i++) {
    if (i % world.size === world.rank) mine.push(loader.next().batch);
    else loader.skip();
  }
  return mine;
}

/** Root runs `open` and every rank gets its (JSON) result; an exception on root aborts the job there. */
export function onRootThenShare<T>(world: Collectives, open: () => T): T {
  return broadcastJson(world, world.rank === 0 ? open() : (null as T));
}

export interface RunProgress {
  step: number;
  tokensSeen: number;
  elapsedBefore: number;
  bestEval: number | null;
}

/** Every rank starts from root's weights, moments, counters and data position. */
export async function startFromRoot(world: Collectives, trainer: Pick<LoraTrainer, "broadcastState">, loader: DataLoader, progress: RunProgress): Promise<RunProgress> {
  if (world.size === 1) return progress;
  await trainer.broadcastState(world);
  const shared = broadcastJson<RunProgress & { position: DataPosition }>(world, { ...progress, position: loader.position });
  loader.seek(shared.position);
  const { position: _p, ...rest } = shared;
  return rest;
}
