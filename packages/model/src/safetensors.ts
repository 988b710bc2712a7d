// safetensors reader and writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`,
// then the data section; offsets are relative to its start. A file is untrusted input: the header
// is checked completely (sizes, dtypes, spans in bounds, contiguous, covering the data section, as
// the format's spec demands) before any tensor is handed out, and every error names the file and
// the tensor. Reading is lazy and by offset: opening reads the 8-byte length and the header only,
// and each tensor (or any byte range of one) is read with positioned reads when asked for, so a
// file of any size opens at once and costs no memory until read. (Bun.mmap refuses files over
// 4 GiB, and transformers saves an 8B model as one 16 GB file.) The descriptor stays open until
// close() (or until the object is garbage, as a safety net); a file replaced by rename meanwhile
// keeps being read as it was, which is why writeSafetensors never rewrites a file in place.
import { closeSync, fstatSync, fsyncSync, openSync, read, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { ModelFileError } from "./config.ts";

export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;
export type SafetensorsDtype = keyof typeof DTYPE_BYTES;

/** Header larger than this is refused: real ones are a few hundred KB; the spec's own reader caps at 100 MB. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Offset of the tensor's bytes from the start of the file (not the data section). */
  byteOffset: number;
  byteLength: number;
}

export interface SafetensorsFile {
  path: string;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Size of the file in bytes. */
  size: number;
  /** A fresh copy of the tensor's bytes (positioned reads; writing into it never reaches the file). */
  bytes(name: string): Uint8Array;
  /** Reads `dst.length` bytes of the tensor, from `tensorByteOffset` within it, into `dst`. */
  readInto(name: string, dst: Uint8Array, tensorByteOffset?: number): void;
  /**
   * readInto on the runtime's I/O threads: several in flight read the file concurrently (twice the
   * page-cache throughput of one on the 2-core CPU machine). `dst` must stay alive until it resolves.
   */
  readIntoAsync(name: string, dst: Uint8Array, tensorByteOffset?: number): Promise<void>;
  /** Closes the file descriptor; reads after it throw. */
  close(): void;
}

export function isSafetensorsDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_BYTES, s);
}

/**
 * Parse and validate a header against the data section it describes. `json` is the header bytes
 * (headerByteLength of them), `dataSectionBytes` the number of bytes after the header. Offsets
 * returned are from the start of the file.
 */
export function parseSafetensorsHeader(
  json: Uint8Array,
  headerByteLength: number,
  dataSectionBytes: number,
  path: string,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  const bad = (what: string): never => {
    throw new ModelFileError(`${path}: invalid safetensors file: ${what}`);
  };
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (e) {
    bad(`header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) bad("header is not a JSON object");

  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  const dataStart = 8 + headerByteLength;

  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) bad("__metadata__ is not an object");
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") bad(`__metadata__ value for '${k}' is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const at = `tensor '${name}'`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) bad(`${at}: entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isSafetensorsDtype(dtype))
      bad(`${at}: unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(", ")})`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      bad(`${at}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    )
      bad(`${at}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`);
    const [begin, end] = offsets as [number, number];
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const expected = numel * DTYPE_BYTES[dtype as SafetensorsDtype];
    if (!Number.isSafeInteger(expected)) bad(`${at}: shape ${JSON.stringify(shape)} is too large`);
    if (end - begin !== expected)
      bad(`${at}: data_offsets span ${end - begin} bytes but ${dtype} ${JSON.stringify(shape)} needs ${expected}`);
    if (end > dataSectionBytes)
      bad(`${at}: data_offsets [${begin}, ${end}] run past the data section (${dataSectionBytes} bytes; file truncated?)`);
    tensors.set(name, { dtype: dtype as SafetensorsDtype, shape: shape as number[], byteOffset: dataStart + begin, byteLength: expected });
    spans.push({ name, begin, end });
  }

  // The spec requires the tensors to tile the data section exactly: no overlap (aliasing), no gaps
  // (hidden bytes). Zero-size tensors occupy no bytes and may sit anywhere in bounds.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous = "(start of data)";
  for (const s of spans) {
    if (s.begin === s.end) continue;
    if (s.begin < cursor) bad(`tensor '${s.name}': data_offsets [${s.begin}, ${s.end}] overlap tensor '${previous}'`);
    if (s.begin > cursor) bad(`tensor '${s.name}': gap of ${s.begin - cursor} unused bytes before it (after '${previous}')`);
    cursor = s.end;
    previous = s.name;
  }
  if (cursor !== dataSectionBytes)
    bad(`data section has ${dataSectionBytes - cursor} trailing bytes not covered by any tensor (after '${previous}')`);
  return { tensors, metadata };
}

// Descriptors of files whose object became garbage without close(): closed then.
const leakedFiles = new FinalizationRegistry<{ fd: number | null }>((held) => {
  if (held.fd !== null) closeSync(held.fd);
});

/** Reads exactly `dst.length` bytes at `position` (readSync may return less than asked). */
const truncated = (path: string, at: number) => new ModelFileError(`${path}: unexpected end of file at byte ${at} (file truncated while open?)`);

function readFully(fd: number, dst: Uint8Array, position: number, path: string): void {
  for (let done = 0; done < dst.length; ) {
    const n = readSync(fd, dst, done, Math.min(dst.length - done, 1 << 30), position + done);
    if (n === 0) throw truncated(path, position + done);
    done += n;
  }
}

async function readFullyAsync(fd: number, dst: Uint8Array, position: number, path: string): Promise<void> {
  for (let done = 0; done < dst.length; ) {
    const n = await new Promise<number>((resolve, reject) =>
      read(fd, dst, done, Math.min(dst.length - done, 1 << 30), position + done, (e, bytes) => (e ? reject(new ModelFileError(`${path}: read failed: ${e.message}`)) : resolve(bytes))));
    if (n === 0) throw truncated(path, position + done);
    done += n;
  }
}

/** Open and validate a .safetensors file (header only; tensor data is read on demand, by offset). */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    throw new ModelFileError(`${path}: not found`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new ModelFileError(`${path}: invalid safetensors file: ${size} bytes, too short for the 8-byte header length`);
    const lengthBytes = new Uint8Array(8);
    readFully(fd, lengthBytes, 0, path);
    const headerLength = Number(new DataView(lengthBytes.buffer).getBigUint64(0, true));
    if (headerLength > MAX_HEADER_BYTES)
      throw new ModelFileError(`${path}: invalid safetensors file: header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    if (8 + headerLength > size)
      throw new ModelFileError(`${path}: invalid safetensors file: header length ${headerLength} exceeds the file size ${size} (truncated?)`);
    const json = new Uint8Array(headerLength);
    readFully(fd, json, 8, path);
    const { tensors, metadata } = parseSafetensorsHeader(json, headerLength, size - 8 - headerLength, path);
    return handle(path, fd, size, tensors, metadata);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function handle(path: string, fd: number, size: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>): SafetensorsFile {
  const held = { fd: fd as number | null };
  const info = (name: string): TensorInfo => {
    const t = tensors.get(name);
    if (!t) throw new ModelFileError(`${path}: no tensor named '${name}'`);
    return t;
  };
  /** The open descriptor, after checking that the byte range lies inside the tensor. */
  const checkedRead = (name: string, dst: Uint8Array, tensorByteOffset: number): number => {
    const t = info(name);
    if (held.fd === null) throw new Error(`${path}: file was closed`);
    if (!(tensorByteOffset >= 0 && tensorByteOffset + dst.length <= t.byteLength))
      throw new Error(`${path}: tensor '${name}': bytes [${tensorByteOffset}, ${tensorByteOffset + dst.length}) outside its ${t.byteLength}`);
    return held.fd;
  };
  const file: SafetensorsFile = {
    path,
    size,
    tensors,
    metadata,
    readInto(name, dst, tensorByteOffset = 0) {
      readFully(checkedRead(name, dst, tensorByteOffset), dst, info(name).byteOffset + tensorByteOffset, path);
    },
    readIntoAsync(name, dst, tensorByteOffset = 0) {
      try {
        return readFullyAsync(checkedRead(name, dst, tensorByteOffset), dst, info(name).byteOffset + tensorByteOffset, path);
      } catch (e) {
        return Promise.reject(e);
      }
    },
    bytes(name) {
      const out = new Uint8Array(info(name).byteLength);
      file.readInto(name, out);
      return out;
    },
    close() {
      if (held.fd === null) return;
      closeSync(held.fd);
      held.fd = null;
      leakedFiles.unregister(held);
    },
  };
  leakedFiles.register(file, held, held);
  return file;
}

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  data: Uint8Array | Float32Array | Uint16Array | Int32Array;
}

function asBytes(data: TensorToWrite["data"]): Uint8Array {
  return data instanceof Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Header JSON bytes padded with spaces so that the data section starts 8-byte aligned (as the Rust writer does). */
export function encodeSafetensorsHeader(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const byteLength = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + byteLength] };
    offset += byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  return padded;
}

/**
 * Write a safetensors file atomically: a temporary file in the same directory, fsync, then rename,
 * so a reader (or a crash) never sees half a checkpoint and a reader holding the old file open keeps reading it whole.
 * Tensors are stored sorted by name; each tensor's data must match dtype × shape exactly.
 */
export function writeSafetensors(path: string, tensors: readonly TensorToWrite[], metadata?: Record<string, string>): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new Error(`writeSafetensors ${path}: duplicate tensor '${t.name}'`);
    seen.add(t.name);
    if (!isSafetensorsDtype(t.dtype)) throw new Error(`writeSafetensors ${path}: tensor '${t.name}': unsupported dtype ${t.dtype}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new Error(`writeSafetensors ${path}: tensor '${t.name}': bad shape ${JSON.stringify(t.shape)}`);
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== expected)
      throw new Error(
        `writeSafetensors ${path}: tensor '${t.name}': ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected} bytes, data has ${t.data.byteLength}`,
      );
  }
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header = encodeSafetensorsHeader(sorted, metadata);
  const lengthBytes = new Uint8Array(8);
  new DataView(lengthBytes.buffer).setBigUint64(0, BigInt(header.length), true);

  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  const fd = openSync(tmp, "w");
  try {
    writeAll(fd, lengthBytes);
    writeAll(fd, header);
    for (const t of sorted) writeAll(fd, asBytes(t.data));
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(tmp);
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
}

function writeAll(fd: number, bytes: Uint8Array): void {
  const CHUNK = 1 << 26; // writeSync may write less than asked for very large buffers
  for (let off = 0; off < bytes.length; ) {
    off += writeSync(fd, bytes, off, Math.min(CHUNK, bytes.length - off));
  }
}
