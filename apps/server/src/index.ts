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
export { BatchingEngine, type BatchingEngineOptions, type EngineCounters, type LiveSequence } from "./batching-engine.ts";
export { CpuReferenceEngine, type CpuReferenceEngineOptions } from "./cpu-engine.ts";
export { loadCpuReferenceEngine, engineTokenizer, type LoadOptions, type LoadedModel, type AdapterSummary, summarizeAdapter } from "./load.ts";
export { StopStringMatcher } from "./stop-strings.ts";
export { DEFAULT_MAX_BODY_BYTES } from "./body.ts";
export { listen, type ListenOptions } from "./listen.ts";
export { drainAndStop, onShutdownSignals } from "./drain.ts";
