// A safetensors file over 4 GiB (Bun.mmap's limit), made at once as a sparse file: the header is
// real, the tensors we check hold random data, and a filler tensor in between lies in a hole.
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getRuntime } from "@tuneloom/kernels";
import { rng } from "@tuneloom/kernels/testing.ts";
import { openCheckpoint } from "../src/checkpoint.ts";
import { bf16BitsToFloat32, float32ToF16Bits } from "../src/half-floats.ts";
import { encodeSafetensorsHeader, openSafetensors } from "../src/safetensors.ts";
import { WeightStream } from "../src/gpu/weight-stream.ts";

const dir = mkdtempSync(join(tmpdir(), "big-st-"));
const path = join(dir, "model.safetensors");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const GAP = 4.5 * 2 ** 30; // bytes of filler: the last tensor starts past 4 GiB
const r = rng(11);
/** Random nonzero bf16 bits, with normal-sized values (never zeros: a hole reads as zeros). */
const randomBf16 = (n: number) => Uint16Array.from({ length: n }, () => 0x3c00 + Math.floor(r.uniform() * 0x0800) + (r.uniform() < 0.5 ? 0x8000 : 0));
const first = randomBf16(1000);
const last = randomBf16(3 * 1001); // odd count: the last 16-bit word is half-used

const tensors = [
  { name: "a.first", dtype: "BF16" as const, shape: [1000], data: first },
  { name: "b.filler", dtype: "U8" as const, shape: [GAP], data: new Uint8Array(0) },
  { name: "c.last", dtype: "BF16" as const, shape: [3, 1001], data: last },
];
const header = encodeSafetensorsHeader(tensors);
const dataStart = 8 + header.length;
const lastAt = dataStart + first.byteLength + GAP;
{
  const fd = openSync(path, "w");
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(header.length), true);
  writeSync(fd, len, 0, 8, 0);
  writeSync(fd, header, 0, header.length, 8);
  writeSync(fd, new Uint8Array(first.buffer), 0, first.byteLength, dataStart);
  writeSync(fd, new Uint8Array(last.buffer), 0, last.byteLength, lastAt);
  closeSync(fd);
}

describe("a 4.5 GiB sparse safetensors file", () => {
  test("opens (header only) and reads tensors by offset past 4 GiB", () => {
    expect(statSync(path).size).toBe(lastAt + last.byteLength);
    expect(statSync(path).size).toBeGreaterThan(2 ** 32);
    const f = openSafetensors(path);
    expect(f.tensors.get("c.last")!.byteOffset).toBe(lastAt);
    expect(new Uint16Array(f.bytes("a.first").buffer)).toEqual(first);
    expect(new Uint16Array(f.bytes("c.last").buffer)).toEqual(last);
    const part = new Uint8Array(64);
    f.readInto("c.last", part, 2000);
    expect(new Uint16Array(part.buffer)).toEqual(last.subarray(1000, 1032));
    expect(() => f.readInto("c.last", part, last.byteLength - 10)).toThrow("tensor 'c.last': bytes");
    f.close();
    expect(() => f.bytes("a.first")).toThrow("was closed");
  });

  test("streams to the GPU as bf16 (copied), f16 and f32 (converted on the GPU), in small pieces", async () => {
    const rt = await getRuntime();
    const store = openCheckpoint(dir);
    // 1 KiB slots: the 3003-element tensor goes in several pieces through the ring.
    const stream = new WeightStream(rt, store, { maxTensors: 4, slotBytes: 1024 });
    const asBf16 = await stream.upload("c.last", "bf16");
    const asF16 = await stream.upload("c.last", "f16");
    const asF32 = await stream.upload("c.last", "f32");
    const report = await stream.finish();
    expect(report.bytes).toBe(3 * last.byteLength);
    expect(report.conversions).toEqual({ "bf16→f16": 1, "bf16→f32": 1 });
    expect(report.losses).toEqual([{ name: "c.last", from: "bf16", to: "f16", numel: last.length, overflow: 0, zeroed: 0, subnormal: 0 }]);
    expect(new Uint16Array(await rt.readBytes(asBf16))).toEqual(last);
    expect(new Uint16Array(await rt.readBytes(asF16))).toEqual(Uint16Array.from(last, (h) => float32ToF16Bits(bf16BitsToFloat32(h))));
    expect(await rt.read(asF32)).toEqual(Float32Array.from(last, bf16BitsToFloat32));
    for (const t of [asBf16, asF16, asF32]) rt.destroyBuffer(t.buffer);
    store.close();
  });

  test("reads on I/O threads: the same bytes as positioned reads, many in flight, past 4 GiB", async () => {
    const f = openSafetensors(path);
    // 48 reads of 64 bytes each over c.last, all in flight together, each into its own view.
    const parts = Array.from({ length: 48 }, () => new Uint8Array(64));
    await Promise.all(parts.map((part, i) => f.readIntoAsync("c.last", part, 100 * i)));
    parts.forEach((part, i) => expect(new Uint16Array(part.buffer)).toEqual(last.subarray(50 * i, 50 * i + 32)));
    await expect(f.readIntoAsync("c.last", parts[0]!, last.byteLength - 10)).rejects.toThrow("tensor 'c.last': bytes");
    await expect(f.readIntoAsync("nope", parts[0]!)).rejects.toThrow("no tensor named 'nope'");
    f.close();
    await expect(f.readIntoAsync("a.first", parts[0]!)).rejects.toThrow("was closed");
  });

  test("a read failure mid-stream fails the load with its message, and abort still frees everything", async () => {
    const rt = await getRuntime();
    const store = openCheckpoint(dir);
    // The second read fails as a file truncated after opening would.
    let reads = 0;
    const failing = { ...store, readIntoAsync: (name: string, dst: Uint8Array, at?: number) =>
      ++reads === 2 ? Promise.reject(new Error(`${path}: unexpected end of file at byte 12345`)) : store.readIntoAsync(name, dst, at) };
    const stream = new WeightStream(rt, failing, { maxTensors: 4, slotBytes: 1024 });
    const run = async () => {
      await stream.upload("c.last", "f16");
      await stream.upload("c.last", "f32");
      return stream.finish();
    };
    await expect(run()).rejects.toThrow("unexpected end of file at byte 12345");
    await stream.abort();
    expect(reads).toBeGreaterThanOrEqual(2);
    store.close();
  });

  test("cut one byte short, it is refused naming the file, the tensor and data_offsets", () => {
    const fd = openSync(path, "r+");
    ftruncateSync(fd, lastAt + last.byteLength - 1);
    closeSync(fd);
    expect(() => openSafetensors(path)).toThrow(`${path}: invalid safetensors file: tensor 'c.last': data_offsets`);
    expect(() => openSafetensors(path)).toThrow("run past the data section");
  });
});
