/**
 * The GPU errors a runtime has seen: device loss, uncaptured errors, and validation error
 * scopes still to be popped (pipelines, submits). `check()` throws the first one, naming the
 * pipeline or recording it came from.
 */
import { DeviceLostError, GpuError, gpuErrorKind } from "./errors.ts";

export class GpuErrorState {
  private readonly pending: Promise<void>[] = [];
  private lost: DeviceLostError | null = null;
  private uncaptured: GpuError[] = [];

  constructor(private readonly device: GPUDevice) {
    device.lost.then((info) => {
      this.lost = new DeviceLostError(info.reason ?? "unknown", info.message);
    });
    device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      this.uncaptured.push(new GpuError("uncaptured", ev.error.message, gpuErrorKind(ev.error)));
    };
  }

  /** Throws the first GPU error seen so far (device loss first). */
  check() {
    if (this.lost) throw this.lost;
    const e = this.uncaptured.shift();
    if (e) {
      this.uncaptured = [];
      throw e;
    }
  }

  /** Pops the error scope pushed before a submit; an error there names `label`. */
  trackScope(label: string) {
    this.pending.push(
      this.device.popErrorScope().then((err) => {
        if (err) this.uncaptured.push(new GpuError(label, err.message, gpuErrorKind(err)));
      }),
    );
  }

  /** Pops a pipeline's error scope: an error there is the root cause, so it goes first. */
  trackPipelineScope(label: string, onError: () => void) {
    this.pending.push(
      this.device.popErrorScope().then((err) => {
        if (err) {
          onError();
          this.uncaptured.unshift(new GpuError(label, err.message, gpuErrorKind(err)));
        }
      }),
    );
  }

  /** Waits for every scope popped so far. */
  async flush() {
    while (this.pending.length) await this.pending.shift();
  }
}
