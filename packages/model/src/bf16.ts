// Old name of half-floats.ts, kept only for the two importers owned by other work in flight
// (gpu/adapter.ts, trainer/src/adapter-io.ts); switch their import to half-floats.ts and delete this file.
export * from "./half-floats.ts";
