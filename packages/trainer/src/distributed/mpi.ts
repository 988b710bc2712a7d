/**
 * MPI through bun:ffi: the few calls data-parallel training needs (init, rank/size,
 * all-reduce of host buffers, broadcast, abort, finalize), from the system's libmpi.
 *
 * Nothing here loads unless a launcher started this process (world.ts reads its environment
 * first), so a machine without MPI never touches it. Two ABIs are handled:
 *  - Open MPI: MPI_Comm, MPI_Datatype and MPI_Op are pointers to global objects
 *    (`ompi_mpi_comm_world`, `ompi_mpi_float`, `ompi_mpi_op_sum`, ...). bun:ffi binds functions
 *    only, so the objects' addresses come from libc's dlsym. libmpi is first opened with
 *    RTLD_GLOBAL: Open MPI's plugins (mca_*.so) resolve their symbols against it, as they do
 *    for mpi4py. MPI_IN_PLACE is (void*)1.
 *  - MPICH and its ABI family (Intel MPI, MVAPICH, Cray): handles are fixed 32-bit integers
 *    from mpi.h; MPI_IN_PLACE is (void*)-1.
 * Every call's return code is checked, although the default error handler on MPI_COMM_WORLD
 * (MPI_ERRORS_ARE_FATAL) aborts the job before a failing call returns.
 */
import { dlopen, FFIType, ptr, type Pointer } from "bun:ffi";

const RTLD_NOW = 2, RTLD_GLOBAL = 0x100;

/** libmpi names tried in order (TUNELOOM_MPI_LIB first when set). */
export const MPI_LIBRARY_CANDIDATES = ["libmpi.so.40", "libmpi.so.12", "libmpi.so", "libmpi.dylib"];

type Handle = number | Pointer;
interface Abi {
  flavour: "openmpi" | "mpich";
  handle: FFIType;
  commWorld: Handle;
  float: Handle;
  double: Handle;
  byte: Handle;
  sum: Handle;
  inPlace: Pointer;
}

/** mpi.h of MPICH 3.x/4.x: MPI_COMM_WORLD, MPI_FLOAT, MPI_DOUBLE, MPI_BYTE, MPI_SUM. */
const MPICH = { commWorld: 0x44000000, float: 0x4c00040a, double: 0x4c00080b, byte: 0x4c00010d, sum: 0x58000003 };

const cstr = (s: string) => ptr(Buffer.from(s + "\0"));

function libc() {
  const names = process.platform === "darwin" ? ["libSystem.B.dylib"] : ["libc.so.6", "libdl.so.2"];
  let lastError: unknown;
  for (const name of names) {
    try {
      return dlopen(name, {
        dlopen: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.ptr },
        dlsym: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
        dlerror: { args: [], returns: FFIType.cstring },
      }).symbols;
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error(`cannot load the C library for dlopen/dlsym: ${(lastError as Error)?.message}`);
}

export class MpiLibraryError extends Error {}

/** The bound MPI functions of one libmpi, with its ABI's handles. */
export class MpiLibrary {
  private constructor(readonly path: string, private readonly abi: Abi, private readonly fn: ReturnType<typeof bind>) {}

  /** Opens the first libmpi that loads (`TUNELOOM_MPI_LIB` names one explicitly). */
  static open(explicit = process.env.TUNELOOM_MPI_LIB): MpiLibrary {
    const c = libc();
    const tried: string[] = [];
    for (const name of explicit ? [explicit] : MPI_LIBRARY_CANDIDATES) {
      const lib = c.dlopen(cstr(name), RTLD_NOW | RTLD_GLOBAL);
      if (!lib) {
        tried.push(`${name}: ${c.dlerror() ?? "not found"}`);
        continue;
      }
      const sym = (s: string) => c.dlsym(lib, cstr(s));
      const world = sym("ompi_mpi_comm_world");
      let abi: Abi;
      if (world) {
        const need = (s: string) => {
          const p = sym(s);
          if (!p) throw new MpiLibraryError(`${name}: Open MPI library without the symbol ${s}`);
          return p as Pointer;
        };
        abi = {
          flavour: "openmpi", handle: FFIType.ptr, commWorld: world as Pointer, float: need("ompi_mpi_float"), double: need("ompi_mpi_double"),
          byte: need("ompi_mpi_byte"), sum: need("ompi_mpi_op_sum"), inPlace: 1 as Pointer,
        };
      } else {
        abi = { flavour: "mpich", handle: FFIType.i32, ...MPICH, inPlace: -1 as unknown as Pointer };
      }
      return new MpiLibrary(name, abi, bind(name, abi.handle));
    }
    throw new MpiLibraryError(
      `this process was started by an MPI launcher but no MPI library loads (${tried.join("; ")}). ` +
      `Install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or set TUNELOOM_MPI_LIB to your libmpi.so.`,
    );
  }

  get flavour() {
    return this.abi.flavour;
  }

  private check(what: string, rc: number) {
    if (rc !== 0) throw new Error(`${what} failed with MPI error code ${rc}`);
  }

  init() {
    const flag = new Int32Array(1);
    this.check("MPI_Initialized", this.fn.MPI_Initialized(ptr(flag)));
    if (!flag[0]) this.check("MPI_Init", this.fn.MPI_Init(null, null));
  }

  rank(): number {
    const out = new Int32Array(1);
    this.check("MPI_Comm_rank", this.fn.MPI_Comm_rank(this.abi.commWorld, ptr(out)));
    return out[0]!;
  }

  size(): number {
    const out = new Int32Array(1);
    this.check("MPI_Comm_size", this.fn.MPI_Comm_size(this.abi.commWorld, ptr(out)));
    return out[0]!;
  }

  /** In place: every rank's `buf` becomes the element-wise sum over ranks. */
  allReduceSum(buf: Float32Array | Float64Array) {
    const type = buf instanceof Float32Array ? this.abi.float : this.abi.double;
    // In chunks of 512 KiB: Open MPI 4.1 took 118 ms for one 11M-float all-reduce between two
    // local ranks and 12 ms for the same data in 128k-element pieces (docs/distributed.md).
    // Chunks also keep MPI's C int counts in range.
    const chunk = allReduceChunkElements(buf.BYTES_PER_ELEMENT);
    for (let off = 0; off < buf.length; off += chunk) {
      const part = buf.subarray(off, Math.min(buf.length, off + chunk));
      this.check("MPI_Allreduce", this.fn.MPI_Allreduce(this.abi.inPlace, ptr(part), part.length, type, this.abi.sum, this.abi.commWorld));
    }
  }

  /** In place: every rank's `buf` becomes root's (all ranks pass the same length). */
  broadcast(buf: Uint8Array, root = 0) {
    if (buf.length === 0) return;
    const CHUNK = 1 << 30;
    for (let off = 0; off < buf.length; off += CHUNK) {
      const part = buf.subarray(off, Math.min(buf.length, off + CHUNK));
      this.check("MPI_Bcast", this.fn.MPI_Bcast(ptr(part), part.length, this.abi.byte, root, this.abi.commWorld));
    }
  }

  barrier() {
    this.check("MPI_Barrier", this.fn.MPI_Barrier(this.abi.commWorld));
  }

  /** Ends every process of the job (the launcher kills the ones that do not exit). */
  abort(code: number): never {
    this.fn.MPI_Abort(this.abi.commWorld, code);
    process.exit(code); // not reached: MPI_Abort does not return
  }

  finalize() {
    this.check("MPI_Finalize", this.fn.MPI_Finalize());
  }
}

/** Elements per MPI_Allreduce call: TUNELOOM_MPI_CHUNK_BYTES (default 512 KiB) of them. */
function allReduceChunkElements(bytesPerElement: number): number {
  const env = process.env.TUNELOOM_MPI_CHUNK_BYTES;
  const bytes = env === undefined ? 512 * 1024 : Number(env);
  if (!(Number.isInteger(bytes) && bytes >= 1024)) throw new Error(`TUNELOOM_MPI_CHUNK_BYTES=${env}: expected an integer number of bytes ≥ 1024`);
  return Math.max(1, Math.min(2 ** 30, Math.floor(bytes / bytesPerElement)));
}

function bind(path: string, handle: FFIType) {
  const { ptr: p, i32 } = FFIType;
  return dlopen(path, {
    MPI_Initialized: { args: [p], returns: i32 },
    MPI_Init: { args: [p, p], returns: i32 },
    MPI_Comm_rank: { args: [handle, p], returns: i32 },
    MPI_Comm_size: { args: [handle, p], returns: i32 },
    MPI_Allreduce: { args: [p, p, i32, handle, handle, handle], returns: i32 },
    MPI_Bcast: { args: [p, i32, handle, i32, handle], returns: i32 },
    MPI_Barrier: { args: [handle], returns: i32 },
    MPI_Abort: { args: [handle, i32], returns: i32 },
    MPI_Finalize: { args: [], returns: i32 },
  }).symbols;
}
