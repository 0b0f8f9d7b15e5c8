/**
 * Trace options for the spans of reads on a request's path: no stack trace.
 * `Effect.withSpan` captures one on every call (a new Error, with tracing on
 * or off); the users hop spent about 2% of its CPU there in the chain's
 * profile (bench/RESULTS.md). The span's name says where it comes from.
 *
 * ```ts
 * Effect.withSpan("Users.get", undefined, noStackTrace)
 * ```
 */
export const noStackTrace = { captureStackTrace: false } as const
