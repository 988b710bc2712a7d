/**
 * What tuneloom does with Dawn's own console output (captured by native-output.ts around the
 * calls that print it): known-harmless adapter warnings and shader-compilation warnings are
 * counted and kept (the last few), not printed, so a user's log holds tuneloom's lines only.
 * Anything else (an error, an unknown message) is written where it was headed.
 * TUNELOOM_DAWN_LOG=1 turns capturing off: Dawn prints everything itself.
 */
import { type NativeOutput, replay } from "./native-output.ts";

export const dawnMessages = {
  /** Adapter warnings such as "maxDynamicUniformBuffersPerPipelineLayout artificially reduced". */
  adapterWarnings: 0,
  /** Shader modules whose compilation printed warnings, and the warnings in them. */
  shaderModulesWithWarnings: 0,
  shaderWarnings: 0,
  /** The last few captured texts, for debugging. */
  recent: [] as string[],
};

const KEEP = 8;
const remember = (text: string) => {
  dawnMessages.recent.push(text);
  if (dawnMessages.recent.length > KEEP) dawnMessages.recent.shift();
};

/** Output captured while requesting the adapter and device. */
export function handleAdapterOutput(o: NativeOutput) {
  const harmless = /^Warning: \w+ artificially reduced from \d+ to \d+/;
  const keep = (text: string) => {
    const rest: string[] = [];
    for (const line of text.split("\n")) {
      if (harmless.test(line)) {
        dawnMessages.adapterWarnings++;
        remember(line);
      } else if (line !== "") rest.push(line);
    }
    return rest.length ? `${rest.join("\n")}\n` : "";
  };
  replay({ stdout: keep(o.stdout), stderr: keep(o.stderr) });
}

/** Output captured while creating a shader module: a compilation log of warnings is counted. */
export function handleShaderOutput(o: NativeOutput) {
  const text = o.stdout + o.stderr;
  if (text === "") return;
  const m = /(\d+) warning\(s\) generated while compiling the shader/.exec(text);
  if (m && !/\berror\b/i.test(text)) {
    dawnMessages.shaderModulesWithWarnings++;
    dawnMessages.shaderWarnings += Number(m[1]);
    remember(text);
    return;
  }
  replay(o);
}

/** One line for a run's summary, or null when Dawn said nothing that was held back. */
export function dawnMessageSummary(): string | null {
  const { adapterWarnings, shaderWarnings, shaderModulesWithWarnings } = dawnMessages;
  if (adapterWarnings + shaderWarnings === 0) return null;
  const parts = [];
  if (shaderWarnings) parts.push(`${shaderWarnings} shader warning(s) in ${shaderModulesWithWarnings} module(s)`);
  if (adapterWarnings) parts.push(`${adapterWarnings} adapter limit notice(s)`);
  return `Dawn: ${parts.join(", ")} not shown (TUNELOOM_DAWN_LOG=1 shows them)`;
}
