/**
 * One GPU per process when several processes share a machine (data-parallel ranks).
 *
 * WebGPU cannot name an adapter: requestAdapter takes a power preference, not an index, and
 * dawn.node's only selector (`create(["adapter=NAME"])`) matches the adapter's name, which is
 * the same for eight identical GPUs, so every rank would open the first one. The choice is made
 * one layer down instead, in Vulkan, by Mesa's device-select layer (VK_LAYER_MESA_device_select,
 * an implicit layer installed with Mesa's Vulkan drivers, which wraps every driver, NVIDIA's
 * included): `DRI_PRIME=pci-DDDD_BB_DD_F` makes the GPU at that PCI address the default and
 * `MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE=1` hides the others, so Dawn sees exactly one.
 *
 * GPUs are numbered in PCI address order (what CUDA_DEVICE_ORDER=PCI_BUS_ID and nvidia-smi use),
 * and local rank i takes GPU i. `TUNELOOM_GPUS=0000:17:00.0,0000:65:00.0,...` lists the GPUs
 * (their PCI addresses) to use instead, in rank order. A user who set DRI_PRIME or
 * MESA_VK_DEVICE_SELECT keeps their choice. The environment must reach getenv() before Dawn
 * creates its Vulkan instance, and Bun's process.env does not write through to the C
 * environment, so the variables are set with libc's setenv.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";

/** Server management controllers' VGA (ASPEED, Matrox G200): display devices no one computes on. */
const BMC_VENDORS = new Set(["0x1a03", "0x102b"]);

/**
 * PCI addresses (`0000:17:00.0`) of display and 3D controllers (class 0x03xxxx) other than a
 * BMC's VGA, in address order.
 */
export function listPciGpus(sysfs = "/sys/bus/pci/devices"): string[] {
  if (!existsSync(sysfs)) return [];
  const read = (addr: string, file: string) => {
    try {
      return readFileSync(path.join(sysfs, addr, file), "utf8").trim().toLowerCase();
    } catch {
      return "";
    }
  };
  return readdirSync(sysfs).filter((addr) => read(addr, "class").startsWith("0x03") && !BMC_VENDORS.has(read(addr, "vendor"))).sort();
}

/** `0000:17:00.0` → Mesa's DRI_PRIME tag `pci-0000_17_00_0`. */
export function driPrimeTag(pciAddress: string): string {
  const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i.exec(pciAddress);
  if (!m) throw new Error(`'${pciAddress}' is not a PCI address like 0000:17:00.0`);
  return `pci-${m[1]}_${m[2]}_${m[3]}_${m[4]}`.toLowerCase();
}

export interface GpuSelection {
  /** Variables to set before the first adapter request (empty: leave the choice to Dawn). */
  env: Record<string, string>;
  /** What was chosen and why, for the log. */
  note: string;
}

/** Which GPU local rank `localRank` should open (pure: tests give it a fake environment). */
export function gpuForLocalRank(localRank: number, env: Record<string, string | undefined>, gpus: readonly string[]): GpuSelection {
  if (env.DRI_PRIME !== undefined || env.MESA_VK_DEVICE_SELECT !== undefined) {
    return { env: {}, note: `GPU chosen by the environment (DRI_PRIME=${env.DRI_PRIME ?? ""} MESA_VK_DEVICE_SELECT=${env.MESA_VK_DEVICE_SELECT ?? ""})` };
  }
  const list = env.TUNELOOM_GPUS ? env.TUNELOOM_GPUS.split(",").map((s) => s.trim()).filter(Boolean) : [...gpus];
  if (env.TUNELOOM_GPUS) for (const a of list) driPrimeTag(a); // validate every entry, not only this rank's
  if (list.length <= 1 && !env.TUNELOOM_GPUS) {
    return { env: {}, note: list.length ? `the machine's only GPU (${list[0]})` : "no PCI GPU found: the default adapter (software or virtual)" };
  }
  if (localRank >= list.length) {
    throw new Error(`local rank ${localRank} has no GPU of its own: this machine has ${list.length} (${list.join(", ")}). Start at most ${list.length} ranks per machine (mpirun --map-by ppr:${list.length}:node) or list GPUs in TUNELOOM_GPUS`);
  }
  const addr = list[localRank]!;
  return { env: { DRI_PRIME: driPrimeTag(addr), MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE: "1" }, note: `GPU ${localRank} of ${list.length} (PCI ${addr})` };
}

/** Sets variables in the C environment (what the Vulkan loader and its layers read). */
function setenvNative(vars: Record<string, string>) {
  if (Object.keys(vars).length === 0) return;
  const libc = dlopen(process.platform === "darwin" ? "libSystem.B.dylib" : "libc.so.6", {
    setenv: { args: [FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  });
  for (const [k, v] of Object.entries(vars)) {
    if (libc.symbols.setenv(ptr(Buffer.from(k + "\0")), ptr(Buffer.from(v + "\0")), 1) !== 0) throw new Error(`setenv ${k} failed`);
    process.env[k] = v;
  }
  libc.close();
}

/**
 * Points this process at local rank `localRank`'s GPU; call before the first adapter request.
 * Returns the note for the log.
 */
export function selectGpuForLocalRank(localRank: number): string {
  const choice = gpuForLocalRank(localRank, process.env, listPciGpus());
  setenvNative(choice.env);
  return choice.note;
}
