/**
 * Run directories (run-dir.ts) through train(): a run's identity in run.json, refusing to mix
 * two runs in one --out, --overwrite moving the old run aside, resume continuing only its own
 * run with its own settings, recovery of interrupted writes at the next start.
 */
import { describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { readAdapterDir } from "@tuneloom/model";
import { listCheckpoints, readCheckpointRunId } from "../src/checkpoint.ts";
import { readRunRecord, RUN_FILE, RunDirError } from "../src/run-dir.ts";
import { type TrainOptions, train } from "../src/train-loop.ts";
import { smallRunOptions, tempDir, writeCapitalsData } from "./helpers.ts";

/** Every file under `dir`, relative path → bytes. */
function snapshot(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel))) {
      const r = path.join(rel, name);
      if (statSync(path.join(dir, r)).isDirectory()) walk(r);
      else files.set(r, readFileSync(path.join(dir, r)));
    }
  };
  walk("");
  return files;
}

function logged(o: TrainOptions): { options: TrainOptions; lines: string[] } {
  const lines: string[] = [];
  return { options: { ...o, log: (l) => lines.push(l) }, lines };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

const weightsOf = (dir: string) => readAdapterDir(dir).weights.map((w) => [w.A, w.B]);
const trainingArgs = (adapterDir: string) => JSON.parse(readFileSync(path.join(adapterDir, "training_args.json"), "utf8"));

describe("run directory: one run per --out", () => {
  test("a second run into a non-empty --out refuses and changes nothing; --overwrite moves the old run into .previous-<id>/ whole", async () => {
    const root = tempDir("rundir-");
    const data = writeCapitalsData(root), out = path.join(root, "out");
    await train(smallRunOptions(data, out, { maxSteps: 2, saveSteps: 1 }));
    const first = readRunRecord(out)!;
    expect(first.settings).toMatchObject({ rank: 4, lr: 2e-2, seed: 3, targetModules: "q_proj,v_proj,o_proj,down_proj" });
    expect(first.settings.dataContents).toMatch(/^sha256:[0-9a-f]{64} \(\d+ bytes\)$/);
    expect(readCheckpointRunId(path.join(out, "checkpoint-1"))).toBe(first.runId);
    const before = snapshot(out);

    const refused = await rejection(train(smallRunOptions(data, out, { maxSteps: 2, lr: 1e-2 })));
    expect(refused).toBeInstanceOf(RunDirError);
    expect(refused.message).toContain(`--out ${out} is not empty (run ${first.runId}`);
    expect(refused.message).toContain(`--resume ${out}`);
    expect(refused.message).toContain("--overwrite");
    expect(snapshot(out)).toEqual(before);

    const { options, lines } = logged(smallRunOptions(data, out, { maxSteps: 3, lr: 1e-2, saveSteps: 1, overwrite: true }));
    await train(options);
    const aside = path.join(out, `.previous-${first.runId}`);
    expect(lines).toContain(`overwrite: moved ${readdirSync(aside).length} entries of run ${first.runId} into ${aside}/ (nothing was deleted)`);
    expect(snapshot(aside)).toEqual(before);
    const second = readRunRecord(out)!;
    expect(second.runId).not.toBe(first.runId);
    expect(listCheckpoints(out).map((c) => [c.step, readCheckpointRunId(c.dir)])).toEqual([[1, second.runId], [2, second.runId]]);
    expect(readFileSync(path.join(out, "metrics.jsonl"), "utf8").trim().split("\n")).toHaveLength(3);
    expect(trainingArgs(path.join(out, "adapter"))).toMatchObject({ lr: 1e-2, run_id: second.runId });

    // A directory with files of its own is refused too; earlier .previous-* folders do not count.
    const other = path.join(root, "other");
    mkdirSync(path.join(other, ".previous-x"), { recursive: true });
    writeFileSync(path.join(other, "report.old-2024"), "mine"); // a name like recovery's, in a folder that is not a run's: untouched
    expect((await rejection(train(smallRunOptions(data, other, { maxSteps: 1 })))).message).toContain("1 entry not from a tuneloom run: report.old-2024");
    expect(readFileSync(path.join(other, "report.old-2024"), "utf8")).toBe("mine");
  }, 120_000);
});

describe("run directory: resume", () => {
  test("refuses settings that contradict the run, naming each with both values; accepts more steps with a notice; training_args.json stays truthful", async () => {
    const root = tempDir("rundir-");
    const data = writeCapitalsData(root), out = path.join(root, "out");
    const base = smallRunOptions(data, out, { maxSteps: 3, saveSteps: 1 });
    await train(base);
    const runId = readRunRecord(out)!.runId;
    const adapterBefore = snapshot(path.join(out, "adapter"));

    const refused = await rejection(train({ ...base, resume: out, lr: 1e-2, rank: 8, seed: 4, dropout: 0, targetModules: "q,v" }));
    expect(refused).toBeInstanceOf(RunDirError);
    for (const line of [
      "--lr: the run has 0.02, this command 0.01", "--rank: the run has 4, this command 8", "--seed: the run has 3, this command 4",
      "--dropout: the run has 0.1, this command 0", '--target-modules: the run has "q_proj,v_proj,o_proj,down_proj", this command "q_proj,v_proj"',
    ]) expect(refused.message).toContain(line);
    expect(refused.message).toContain(`5 settings contradict run ${runId}`);
    // Another data file's bytes: named as such.
    const otherData = path.join(root, "other.jsonl");
    writeFileSync(otherData, readFileSync(data, "utf8").replace("Arvel", "Arvex"));
    expect((await rejection(train({ ...base, data: otherData, resume: out }))).message).toContain("the contents of --data: the run has \"sha256:");
    expect(snapshot(path.join(out, "adapter"))).toEqual(adapterBefore);

    const { options, lines } = logged({ ...base, resume: out, maxSteps: 5 });
    const resumed = await train(options);
    expect(resumed.steps).toBe(5);
    expect(lines).toContain("resume: --max-steps changed from 3 to 5 (allowed: it does not change the steps already taken)");
    expect(lines).toContain(`resumed run ${runId} from ${path.join(out, "checkpoint-2")} at step 2`);
    expect(lines.some((l) => l.startsWith("resume: the run now has 5 steps (was 3)"))).toBe(true);
    const args = trainingArgs(resumed.adapterDir);
    expect(args).toMatchObject({ lr: 2e-2, rank: 4, seed: 3, maxSteps: 5, run_id: runId });
    expect(args.run_history.map((e: { event: string }) => e.event)).toEqual(["start", "resume"]);
    expect(args.run_history[1]).toMatchObject({ checkpoint: "checkpoint-2", changed: { maxSteps: [3, 5] } });
    expect(readRunRecord(out)!.adjustable.maxSteps).toBe(5);
  }, 120_000);

  test("continues only its own run's checkpoints: a foreign one is ignored in --resume OUT and refused by name", async () => {
    const root = tempDir("rundir-");
    const data = writeCapitalsData(root), a = path.join(root, "a"), b = path.join(root, "b");
    await train(smallRunOptions(data, a, { maxSteps: 4, saveSteps: 1, seed: 5 }));
    const runB = smallRunOptions(data, b, { maxSteps: 2, saveSteps: 1 });
    const uninterrupted = weightsOf(path.join((await train(runB)).adapterDir));
    cpSync(path.join(a, "checkpoint-3"), path.join(b, "checkpoint-3"), { recursive: true });
    const foreignRun = readCheckpointRunId(path.join(b, "checkpoint-3"));

    const explicit = await rejection(train({ ...runB, resume: path.join(b, "checkpoint-3") }));
    expect(explicit.message).toContain(`checkpoint-3 was written by run ${foreignRun}, not by run ${readRunRecord(b)!.runId}`);

    const { options, lines } = logged({ ...runB, resume: b });
    const resumed = await train(options);
    expect(lines).toContain(`warning: ignoring checkpoint-3: written by another run than ${readRunRecord(b)!.runId}`);
    expect(lines.some((l) => l.includes(`from ${path.join(b, "checkpoint-1")} at step 1`))).toBe(true);
    expect(weightsOf(resumed.adapterDir)).toEqual(uninterrupted); // its own run, bit for bit

    // A directory without run.json (an older tuneloom): nothing says whose checkpoints these are.
    const legacy = path.join(root, "legacy");
    cpSync(path.join(a, "checkpoint-3"), path.join(legacy, "checkpoint-3"), { recursive: true });
    expect((await rejection(train({ ...runB, out: legacy, resume: legacy }))).message).toContain(`${path.join(legacy, RUN_FILE)} not found`);
    // A run that has not saved yet.
    const early = path.join(root, "early");
    await train(smallRunOptions(data, early, { maxSteps: 1 }));
    expect((await rejection(train(smallRunOptions(data, early, { maxSteps: 1, resume: early })))).message).toContain("has no checkpoint to continue from");
  }, 120_000);

  test("the next start recovers an adapter that a crash left under a temporary name, and removes incomplete saves", async () => {
    const root = tempDir("rundir-");
    const data = writeCapitalsData(root), out = path.join(root, "out");
    const base = smallRunOptions(data, out, { maxSteps: 3, saveSteps: 1 });
    await train(base);
    const adapter = snapshot(path.join(out, "adapter"));
    // As a crash between the two renames of a replacement leaves it, plus a checkpoint cut short.
    renameSync(path.join(out, "adapter"), path.join(out, "adapter.new-999999"));
    mkdirSync(path.join(out, "checkpoint-3.tmp-999999"));
    writeFileSync(path.join(out, "checkpoint-3.tmp-999999", "adapter_config.json"), "{");

    const { options, lines } = logged({ ...base, maxSteps: 9 });
    expect(await rejection(train(options))).toBeInstanceOf(RunDirError); // a new run is still refused...
    expect(lines.filter((l) => l.startsWith("recovery: ")).sort()).toEqual([ // ...but the directory is whole again
      `recovery: removed ${path.join(out, "checkpoint-3.tmp-999999")} (an incomplete save of it, left by process 999999)`,
      `recovery: restored ${path.join(out, "adapter")} from adapter.new-999999 (a save was interrupted before it could replace the directory)`,
    ]);
    expect(snapshot(path.join(out, "adapter"))).toEqual(adapter);
    expect(readdirSync(out).filter((n) => /\.(tmp|new|old)-/.test(n))).toEqual([]);
  }, 120_000);
});
