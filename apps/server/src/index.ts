/** @tuneloom/server: the OpenAI-compatible HTTP server over an InferenceEngine. */
export { createServer, type ServerOptions, type TuneloomServer } from "./app.ts";
export type {
  EngineChatTemplate,
  EngineTokenizer,
  GenerationRequest,
  InferenceEngine,
  StreamingDetokenizer,
  TokenEvent,
  TokenLogprob,
} from "./engine.ts";
export { RequestScheduler, SchedulerRejection, type SchedulerOptions, type SchedulerStats } from "./scheduler.ts";
export { CpuReferenceEngine, type CpuReferenceEngineOptions, type EngineCounters } from "./cpu-engine.ts";
export { loadCpuReferenceEngine, resolveServingTemplate, engineTokenizer, defaultStopTokenIds, TemplateMismatchError, type LoadOptions, type LoadedModel, type MergedAdapter } from "./load.ts";
export { StopStringMatcher } from "./stop-strings.ts";
export { DEFAULT_MAX_BODY_BYTES } from "./body.ts";
