// What a hostile client or web page sends is refused at the edge, in OpenAI's error body:
// a non-JSON Content-Type (415), a Host outside the allow-list (403, DNS rebinding), JSON nested
// a million deep (400 naming the limit, not a stack overflow). A client that disconnects
// mid-upload is counted as a client abort, not as a 500, and logs nothing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { defaultAllowedHosts, parseAllowedHosts } from "../src/host-check.ts";
import { jsonDepthExceededAt } from "../src/json-depth.ts";
import { loadCpuReferenceEngine } from "../src/load.ts";
import { JSON_HEADERS, makeTinyModelDir, rawConnection, requestHead, startServer, type RunningServer } from "./helpers.ts";

let model: { dir: string; cleanup: () => void };
let running: RunningServer;
const logged: string[] = [];
beforeAll(() => {
  model = makeTinyModelDir();
  const { engine } = loadCpuReferenceEngine({ modelDir: model.dir, modelId: "tiny" });
  // As `serve` defaults when key-less on 127.0.0.1.
  running = startServer({ engine, allowedHosts: defaultAllowedHosts("127.0.0.1", undefined), logError: (m) => logged.push(m) });
});
afterAll(async () => {
  await running.stop();
  model.cleanup();
});

const port = () => Number(new URL(running.url).port);
const good = JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 2, temperature: 0 });
const chat = (body: string | Blob, headers: Record<string, string>) => fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers, body });

async function expectError(res: Response, status: number, code: string): Promise<string> {
  expect(res.status).toBe(status);
  const body = (await res.json()) as any;
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(body.error.code).toBe(code);
  return body.error.message;
}

describe("Content-Type", () => {
  test("JSON routes refuse anything but application/json with 415", async () => {
    for (const type of ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin1"])
      expect(await expectError(await chat(good, { "content-type": type }), 415, "unsupported_media_type")).toContain("application/json");
    // fetch adds text/plain to a string body when nothing is set; a Blob without a type sends none.
    await expectError(await chat(new Blob([good]), {}), 415, "unsupported_media_type");
    for (const path of ["/v1/completions", "/tokenize", "/detokenize", "/apply-template"])
      await expectError(await fetch(`${running.url}${path}`, { method: "POST", headers: { "content-type": "text/plain" }, body: "{}" }), 415, "unsupported_media_type");
  });

  test("application/json, with or without charset=utf-8, is served", async () => {
    for (const type of ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"])
      expect((await chat(good, { "content-type": type })).status).toBe(200);
  });
});

describe("Host allow-list", () => {
  test("a foreign Host (DNS rebinding) is refused on every route, /health included", async () => {
    for (const [method, path] of [["GET", "/health"], ["GET", "/v1/models"], ["POST", "/v1/chat/completions"]] as const) {
      const c = rawConnection(port(), requestHead(method, path, { host: `evil.example:${port()}`, "content-type": "application/json", "content-length": good.length, connection: "close" }), method === "POST" ? good : "");
      const text = await c.until(/\r\n\r\n.*\}/s);
      c.destroy();
      expect(text).toStartWith("HTTP/1.1 403");
      const body = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4));
      expect(body.error.code).toBe("host_not_allowed");
      expect(body.error.message).toContain("--allowed-hosts");
    }
  });

  test("loopback names are served", async () => {
    for (const host of [`localhost:${port()}`, `127.0.0.1:${port()}`, `[::1]:${port()}`, "LOCALHOST"]) {
      const c = rawConnection(port(), requestHead("GET", "/health", { host, connection: "close" }));
      expect(await c.until(/\r\n\r\n.*\}/s)).toStartWith("HTTP/1.1 200");
      c.destroy();
    }
  });

  test("defaults and the flag", () => {
    expect(defaultAllowedHosts("127.0.0.1", undefined)).toEqual(["localhost", "127.0.0.1", "[::1]"]);
    expect(defaultAllowedHosts("::1", undefined)).toEqual(["localhost", "127.0.0.1", "[::1]"]);
    expect(defaultAllowedHosts("127.0.0.2", undefined)).toContain("127.0.0.2");
    expect(defaultAllowedHosts("127.0.0.1", "key")).toBeNull();
    expect(defaultAllowedHosts("0.0.0.0", undefined)).toBeNull();
    expect(parseAllowedHosts("*")).toBeNull();
    expect(parseAllowedHosts("Example.com:8000, .corp.example")).toEqual(["example.com", ".corp.example"]);
    expect(() => parseAllowedHosts(" , ")).toThrow(/at least one host/);
  });
});

describe("JSON nesting", () => {
  test("a body nested 10^6 deep is a 400 naming the limit, and the server keeps serving", async () => {
    for (const deep of ["[".repeat(1_000_000), `{"messages": ${"[".repeat(100_000)}`, `{"a":${'{"a":'.repeat(65)}1${"}".repeat(66)}`]) {
      const message = await expectError(await chat(deep, JSON_HEADERS), 400, "json_too_deep");
      expect(message).toContain("64 levels");
    }
    expect((await chat(good, JSON_HEADERS)).status).toBe(200);
  });

  test("the scanner counts only structure: brackets inside strings and escaped quotes do not count", () => {
    expect(jsonDepthExceededAt(JSON.stringify({ s: "[[[[{{{{\\\"[[[[" }), 2)).toBe(-1);
    expect(jsonDepthExceededAt(`${"[".repeat(64)}${"]".repeat(64)}`, 64)).toBe(-1);
    expect(jsonDepthExceededAt(`${"[".repeat(65)}${"]".repeat(65)}`, 64)).toBe(64);
    expect(jsonDepthExceededAt("[[],[],[[]]]", 3)).toBe(-1);
    expect(jsonDepthExceededAt("[[],[],[[]]]", 2)).toBe(8);
  });
});

describe("client aborts", () => {
  test("a client gone mid-upload is counted as a client abort, not a 500, and logs nothing", async () => {
    const c = rawConnection(port(), requestHead("POST", "/v1/chat/completions", { host: "127.0.0.1", "content-type": "application/json", "content-length": 1000 }), '{"messages": [');
    await Bun.sleep(200);
    c.destroy();
    const metric = /tuneloom_client_aborts_total\{endpoint="\/v1\/chat\/completions",phase="upload"\} 1/;
    let text = "";
    const t0 = Date.now();
    while (!metric.test(text) && Date.now() - t0 < 5000) {
      text = await (await fetch(`${running.url}/metrics`)).text();
      await Bun.sleep(50);
    }
    expect(text).toMatch(metric);
    expect(text).not.toMatch(/status="500"/);
    expect(logged).toEqual([]);
  });
});
