/**
 * One rank of a data-parallel test run, started by `mpirun ... bun rank-main.ts '<json>'`
 * (data-parallel.test.ts). The JSON holds train() options and optionally a failure to inject:
 * `{"fail": {"rank": 1, "afterStep": 2, "how": "throw" | "kill"}}`.
 */
import { runAsRank } from "../../src/distributed/launch.ts";
import { TRAIN_DEFAULTS, type TrainOptions, train } from "../../src/train-loop.ts";

const spec = JSON.parse(process.argv[2] ?? "{}") as { options: Partial<TrainOptions>; fail?: { rank: number; afterStep: number; how: "throw" | "kill" } };
await runAsRank(async (world) => {
  const fail = spec.fail;
  const result = await train({
    ...TRAIN_DEFAULTS, quiet: true, log: () => {}, ...spec.options, world,
    onStepEnd: ({ step }) => {
      if (!fail || world.rank !== fail.rank || step !== fail.afterStep) return;
      if (fail.how === "kill") process.kill(process.pid, "SIGKILL");
      throw new Error(`simulated failure after step ${step}`);
    },
  } as TrainOptions);
  if (world.isRoot) console.log(JSON.stringify({ steps: result.steps, finalLoss: result.finalLoss, tokens: result.tokens }));
});
