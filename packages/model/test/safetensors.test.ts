import { describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSafetensors, writeSafetensors, MAX_HEADER_BYTES } from "../src/safetensors.ts";

const dir = mkdtempSync(join(tmpdir(), "st-"));
let n = 0;

/** A file from a raw header object and a data section, bypassing the writer's checks. */
function rawFile(header: unknown, data: Uint8Array, opts: { lengthOverride?: bigint; headerText?: string } = {}): string {
  const json = new TextEncoder().encode(opts.headerText ?? JSON.stringify(header));
  const buf = new Uint8Array(8 + json.length + data.length);
  new DataView(buf.buffer).setBigUint64(0, opts.lengthOverride ?? BigInt(json.length), true);
  buf.set(json, 8);
  buf.set(data, 8 + json.length);
  const path = join(dir, `hostile-${n++}.safetensors`);
  writeFileSync(path, buf);
  return path;
}

describe("writeSafetensors + openSafetensors", () => {
  test("round trip, sorted by name, 8-byte aligned header, metadata", () => {
    const path = join(dir, "ok.safetensors");
    const a = new Float32Array([1, -2, 3.5, 4, 5, 6]);
    const b = new Uint16Array([0x3f80, 0xc000]);
    writeSafetensors(path, [
      { name: "z.weight", dtype: "F32", shape: [2, 3], data: a },
      { name: "a.bias", dtype: "BF16", shape: [2], data: b },
      { name: "empty", dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
    ], { format: "pt" });
    const bytes = readFileSync(path);
    const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
    expect(headerLen % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString());
    expect(Object.keys(header)).toEqual(["__metadata__", "a.bias", "empty", "z.weight"]);
    expect(header["a.bias"].data_offsets).toEqual([0, 4]);
    const f = openSafetensors(path);
    expect(f.metadata).toEqual({ format: "pt" });
    expect(f.tensors.get("z.weight")).toMatchObject({ dtype: "F32", shape: [2, 3], byteLength: 24 });
    expect(new Float32Array(f.bytes("z.weight").slice().buffer)).toEqual(a);
    expect(new Uint16Array(f.bytes("a.bias").slice().buffer)).toEqual(b);
    expect(f.bytes("empty").length).toBe(0);
    expect(() => f.bytes("nope")).toThrow(`${path}: no tensor named 'nope'`);
    // views are copy-on-write: scribbling on one never reaches the file
    f.bytes("z.weight")[0] = 99;
    expect(readFileSync(path)).toEqual(bytes);
    f.close();
    expect(readdirSync(dir).filter((x) => x.endsWith(".tmp"))).toEqual([]);
  });
  test("writer refuses data that does not match dtype × shape, and duplicates", () => {
    const path = join(dir, "bad-write.safetensors");
    expect(() => writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [3], data: new Float32Array(2) }])).toThrow("tensor 'w': F32 [3] needs 12 bytes, data has 8");
    const t = { name: "w", dtype: "F32" as const, shape: [1], data: new Float32Array(1) };
    expect(() => writeSafetensors(path, [t, t])).toThrow("duplicate tensor 'w'");
  });
});

describe("hostile files: each error names the file and the tensor", () => {
  const four = new Uint8Array(4);
  const cases: [string, () => string, RegExp | string][] = [
    ["shorter than 8 bytes", () => { const p = join(dir, "tiny.safetensors"); writeFileSync(p, new Uint8Array(5)); return p; }, "too short"],
    ["header length beyond the file", () => rawFile({}, four, { lengthOverride: 1000n }), "header length 1000 exceeds the file size"],
    ["header length above the limit", () => rawFile({}, four, { lengthOverride: BigInt(MAX_HEADER_BYTES + 1) }), "exceeds the 104857600-byte limit"],
    ["header not JSON", () => rawFile(null, four, { headerText: "{\"a\": [" }), "header is not valid UTF-8 JSON"],
    ["header is an array", () => rawFile([1], new Uint8Array(0)), "header is not a JSON object"],
    ["metadata not strings", () => rawFile({ __metadata__: { n: 1 } }, new Uint8Array(0)), "__metadata__ value for 'n' is not a string"],
    ["unknown dtype", () => rawFile({ w: { dtype: "Q4", shape: [1], data_offsets: [0, 4] } }, four), "tensor 'w': unsupported dtype \"Q4\""],
    ["negative shape", () => rawFile({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, four), "tensor 'w': shape [-1]"],
    ["fractional shape", () => rawFile({ w: { dtype: "F32", shape: [1.5], data_offsets: [0, 4] } }, four), "tensor 'w': shape [1.5]"],
    ["bad offsets", () => rawFile({ w: { dtype: "F32", shape: [1], data_offsets: [4, 0] } }, four), "tensor 'w': data_offsets [4,0]"],
    ["size lies about dtype × shape", () => rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, four), "tensor 'w': data_offsets span 4 bytes but F32 [2] needs 8"],
    ["truncated data", () => rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, four), "tensor 'w': data_offsets [0, 8] run past the data section (4 bytes; file truncated?)"],
    ["overlapping spans", () => rawFile({ a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "F32", shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12)), "tensor 'b': data_offsets [4, 12] overlap tensor 'a'"],
    ["gap between spans", () => rawFile({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] }, b: { dtype: "F32", shape: [1], data_offsets: [8, 12] } }, new Uint8Array(12)), "tensor 'b': gap of 4 unused bytes"],
    ["trailing bytes", () => rawFile({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, new Uint8Array(8)), "4 trailing bytes not covered"],
  ];
  for (const [name, make, message] of cases)
    test(name, () => {
      const path = make();
      let err: Error | undefined;
      try {
        openSafetensors(path);
      } catch (e) {
        err = e as Error;
      }
      expect(err).toBeDefined();
      expect(err!.message).toContain(path);
      if (typeof message === "string") expect(err!.message).toContain(message);
      else expect(err!.message).toMatch(message);
    });
  test("missing file", () => {
    expect(() => openSafetensors(join(dir, "absent.safetensors"))).toThrow("absent.safetensors: not found");
  });
  test("a file truncated after writing is caught", () => {
    const path = join(dir, "trunc.safetensors");
    writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [16], data: new Float32Array(16) }]);
    const bytes = readFileSync(path);
    writeFileSync(path, bytes.subarray(0, bytes.length - 3));
    expect(() => openSafetensors(path)).toThrow("tensor 'w'");
  });
});
