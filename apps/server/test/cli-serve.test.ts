// `bun run serve` as a user runs it: prints the template and its sha256, then the URL; serves;
// SIGTERM drains (in-flight stream completes, new requests 503) and exits 0.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { makeTinyModelDir, readSse, readUntil } from "./helpers.ts";

const MAIN = resolve(import.meta.dir, "../../cli/src/main.ts");
let model: { dir: string; cleanup: () => void };
beforeAll(() => {
  model = makeTinyModelDir();
});
afterAll(() => model.cleanup());

describe("serve command", () => {
  test("starts, prints template + sha256 + URL, serves with the API key, drains on SIGTERM", async () => {
    const proc = Bun.spawn(["bun", MAIN, "serve", "--model", model.dir, "--port", "0", "--host", "127.0.0.1", "--api-key", "k1", "--served-model-name", "tiny"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      const reader = proc.stdout.getReader();
      const out = { text: "" };
      await readUntil(reader, /listening on (http:\/\/127\.0\.0\.1:\d+)/, out);
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out.text)![1]!;
      expect(out.text).toMatch(/sha256 [0-9a-f]{64}/);
      expect(out.text).toContain("<|im_start|>");
      const headers = { authorization: "Bearer k1", "content-type": "application/json" };
      const models = await (await fetch(`${url}/v1/models`, { headers })).json() as any;
      expect(models.data[0].id).toBe("tiny");

      // A long stream in flight when SIGTERM arrives must still complete.
      const inflight = fetch(`${url}/v1/completions`, {
        method: "POST",
        headers,
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 200, temperature: 0, ignore_eos: true, stream: true }),
      });
      const response = await inflight;
      expect(response.status).toBe(200);
      proc.kill("SIGTERM");
      await readUntil(reader, /draining/, out);
      const refused = await fetch(`${url}/v1/completions`, { method: "POST", headers, body: JSON.stringify({ prompt: "a", max_tokens: 1 }) });
      expect(refused.status).toBe(503);
      const events = await readSse(response);
      expect(events.at(-1)).toBe("[DONE]");
      const finish = events.filter((e): e is Record<string, any> => e !== "[DONE]").at(-1)!;
      expect(finish.choices[0].finish_reason).toBe("length");
      expect(await proc.exited).toBe(0);
      await readUntil(reader, /drained; exiting/, out).catch(() => {});
    } finally {
      proc.kill();
    }
  }, 60_000);

  test("refuses to start when the adapter was trained with another template", async () => {
    const adapter = join(model.dir, "..", "adapter");
    mkdirSync(adapter, { recursive: true });
    writeFileSync(join(adapter, "adapter_config.json"), JSON.stringify({ r: 2, lora_alpha: 2 }));
    writeFileSync(join(adapter, "chat_template.jinja"), "{{ messages[0]['content'] }}");
    writeFileSync(join(adapter, "training_args.json"), JSON.stringify({ chat_template_sha256: "f".repeat(64) }));
    const proc = Bun.spawn(["bun", MAIN, "serve", "--model", model.dir, "--adapter", adapter, "--port", "0"], { stdout: "pipe", stderr: "pipe" });
    expect(await proc.exited).toBe(1);
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toMatch(/refusing to serve: .*chat_template_sha256 f{64}/);
  }, 60_000);
});
