/**
 * The mesh's own sample of recent traces, for the console's waterfalls
 * (docs/console.md): every Worker with `KEEP_TRACES` on hands its sampled
 * spans to the `(traces)` object of its `MESH_STATS` binding, in the same
 * round as its OTLP export, or at once while a failing collector is backed
 * off (src/runtime/telemetry/Exporter.ts). The object
 * keeps at most `maxTraces` traces of the last 15 minutes, each with at most
 * `maxSpansPerTrace` spans: always the newest `newestKept`, and of the older
 * ones those with a failed span longest.
 *
 * How many traces reach it is the Workers' head sampling
 * (`TRACE_SAMPLE_RATIO`): every one under `npm start`; set a small ratio
 * where traffic is real.
 */
import * as Schema from "effect/Schema"
import type { KeptSpan } from "../../runtime/Telemetry.ts"

export const maxTraces = 100
export const maxSpansPerTrace = 200
/**
 * The newest traces, failed or not, that pruning never drops for an older
 * one. A trace's spans arrive from each Worker on its own, the innermost
 * first: whether it failed is often known only once its callers' client
 * spans arrive. Were failure alone to decide, a mesh with `maxTraces`
 * failed traces in 15 minutes would drop every new trace's first spans on
 * arrival, and show no recent trace at all.
 */
export const newestKept = maxTraces / 2
export const traceRetentionMillis = 15 * 60_000

/** One kept trace: its spans (in the order they arrived) and when it was last added to. */
export interface KeptTrace {
  readonly spans: Array<KeptSpan>
  /** Spans that arrived past `maxSpansPerTrace`. */
  dropped: number
  lastAt: number
}

const hasError = (trace: KeptTrace) => trace.spans.some((span) => span.error !== undefined)

/** The sample, without its storage: what `keep` changed and dropped is for the object to write. */
export class TraceSample {
  readonly traces = new Map<string, KeptTrace>()

  /** Adds `spans` at `now`; answers the trace ids changed and dropped. */
  keep(spans: ReadonlyArray<KeptSpan>, now: number): { readonly changed: ReadonlyArray<string>; readonly dropped: ReadonlyArray<string> } {
    const changed = new Set<string>()
    for (const span of spans) {
      let trace = this.traces.get(span.traceId)
      if (trace === undefined) this.traces.set(span.traceId, trace = { spans: [], dropped: 0, lastAt: now })
      if (trace.spans.length < maxSpansPerTrace) trace.spans.push(span)
      else trace.dropped++
      trace.lastAt = now
      changed.add(span.traceId)
    }
    const dropped = this.prune(now)
    for (const id of dropped) changed.delete(id)
    return { changed: [...changed], dropped }
  }

  /**
   * Drops traces past the retention, then, until `maxTraces` are left, the
   * oldest outside the newest `newestKept`, failed ones last.
   */
  prune(now: number): Array<string> {
    const dropped: Array<string> = []
    for (const [id, trace] of this.traces) {
      if (trace.lastAt <= now - traceRetentionMillis) dropped.push(id)
    }
    for (const id of dropped) this.traces.delete(id)
    if (this.traces.size > maxTraces) {
      const older = [...this.traces.entries()]
        .sort(([, a], [, b]) => a.lastAt - b.lastAt)
        .slice(0, this.traces.size - newestKept)
        .map(([id, trace]) => ({ id, lastAt: trace.lastAt, failed: Number(hasError(trace)) }))
        .sort((a, b) => a.failed - b.failed || a.lastAt - b.lastAt)
      for (const { id } of older.slice(0, this.traces.size - maxTraces)) {
        this.traces.delete(id)
        dropped.push(id)
      }
    }
    return dropped
  }

  /** The kept traces, newest first, summarized; only those calling `series`, or that failed, when asked. */
  list(options: { readonly limit: number; readonly series?: string | undefined; readonly errors?: boolean | undefined }): Array<TraceSummary> {
    return [...this.traces.entries()]
      .map(([traceId, trace]) => summarize(traceId, trace))
      .filter((summary) => (options.errors !== true || summary.error !== undefined) && (options.series === undefined || summary.calls.includes(options.series)))
      .sort((a, b) => b.startedAt.localeCompare(a.startedAt))
      .slice(0, options.limit)
  }
}

export const TraceSummary = Schema.Struct({
  traceId: Schema.String,
  /** The root span's name (or the earliest span's, while the root has not arrived). */
  name: Schema.String,
  startedAt: Schema.String,
  durationMs: Schema.Number,
  /** The Workers and objects with spans in it. */
  services: Schema.Array(Schema.String),
  /** The upstreams its client spans called (`server.address`: `router`, `users@green`). */
  calls: Schema.Array(Schema.String),
  spans: Schema.Number,
  /** The first failed span's status message. */
  error: Schema.optional(Schema.String)
})
export type TraceSummary = typeof TraceSummary.Type

export const summarize = (traceId: string, trace: KeptTrace): TraceSummary => {
  const spans = trace.spans
  const ids = new Set(spans.map((span) => span.spanId))
  const root = spans.find((span) => span.parentSpanId === undefined || !ids.has(span.parentSpanId)) ?? spans[0]!
  const start = Math.min(...spans.map((span) => span.startMs))
  const end = Math.max(...spans.map((span) => span.startMs + span.durationMs))
  const failed = spans.find((span) => span.error !== undefined)
  return {
    traceId,
    name: root.name,
    startedAt: new Date(start).toISOString(),
    durationMs: Math.round((end - start) * 100) / 100,
    services: [...new Set(spans.map((span) => span.service))],
    calls: [...new Set(spans.flatMap((span) => {
      const address = span.attributes["server.address"]
      return span.kind === "client" && typeof address === "string" ? [address] : []
    }))],
    spans: spans.length + trace.dropped,
    ...(failed === undefined ? {} : { error: `${failed.service}: ${failed.name}: ${failed.error}` })
  }
}

const Attribute = Schema.Union([Schema.String, Schema.Number, Schema.Boolean])

export const KeptSpanSchema = Schema.Struct({
  traceId: Schema.String,
  spanId: Schema.String,
  parentSpanId: Schema.optional(Schema.String),
  name: Schema.String,
  service: Schema.String,
  kind: Schema.Literals(["internal", "server", "client", "producer", "consumer"]),
  startMs: Schema.Number,
  durationMs: Schema.Number,
  error: Schema.optional(Schema.String),
  attributes: Schema.Record(Schema.String, Attribute),
  events: Schema.Array(Schema.Struct({ name: Schema.String, atMs: Schema.Number }))
})

/** One kept trace, as the admin API answers it. */
export const TraceDetail = Schema.Struct({
  ...TraceSummary.fields,
  /** Spans in start order. */
  items: Schema.Array(KeptSpanSchema)
})
export type TraceDetail = typeof TraceDetail.Type
