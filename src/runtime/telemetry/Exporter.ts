/**
 * The span exporter of one isolate: ended spans wait in the isolate and leave as
 * OTLP/HTTP in one POST per drain, under `ctx.waitUntil` (see
 * src/runtime/Telemetry.ts for when).
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { format } from "effect/Formatter"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import * as OtlpResource from "effect/observability/OtlpResource"
import * as OtlpSerialization from "effect/observability/OtlpSerialization"
import type { Settings } from "./Settings.ts"
import { hostOf, pathOf, schemeOf } from "../Url.ts"
import { errorTag } from "./TraceContext.ts"

/** The failing collectors this isolate has warned about, by service and endpoint. */
const warnedIsolate = new Set<string>()

/** Spans this isolate could not export (collector down, slow, refusing, or the buffer full). */
export const droppedSpans = Metric.counter("meshwork.telemetry.spans.dropped", {
  description: "Spans dropped by the exporter",
  incremental: true
})


/** What a tracer is given to start a span. */
type SpanOptions = Parameters<Tracer.Tracer["span"]>[0]

/** How a span failed, kept from its Exit when it ends: the Exit itself holds the request's values. */
interface Failure {
  readonly type: string
  readonly message: string
}

/** A failed Exit's error, or undefined when it succeeded or was only interrupted (not an error in a trace). */
const failureOf = (exit: Exit.Exit<unknown, unknown>): Failure | undefined => {
  if (Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause)) return undefined
  const error = Cause.squash(exit.cause)
  return {
    type: errorTag(error) ?? (error instanceof Error ? error.name : typeof error),
    message: error instanceof Error ? error.message : String(error)
  }
}

/**
 * A span that, once ended and if sampled, waits in the isolate's buffer as it
 * is, to be converted with the rest of its export: converting each span when
 * it ended, the conversion's code cold every time, cost a traced request more
 * (bench/RESULTS.md, "Tracing on one hop").
 */
class RecordedSpan extends Tracer.NativeSpan {
  failure: Failure | undefined = undefined
  constructor(
    options: SpanOptions,
    readonly sink: (span: RecordedSpan) => void,
    /** A served request's URL, whose attributes are read from it when the span is exported. */
    readonly url?: string | undefined
  ) {
    super(options)
  }
  override end(endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    if (this.status._tag === "Ended") return
    // The Exit is not kept: a success holds the request's answer, which must not wait for the export.
    this.failure = failureOf(exit)
    super.end(endTime, Exit.void)
    if (this.sampled) this.sink(this)
  }
}

const spanKinds = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 } as const

/** The name OpenTelemetry asks of an HTTP server span: `{method} {route}` once the route is known. */
const spanName = (span: RecordedSpan): string => {
  if (span.kind !== "server") return span.name
  const method = span.attributes.get("http.request.method")
  const route = span.attributes.get("http.route")
  return typeof method === "string" && typeof route === "string" ? `${method} ${route}` : span.name
}

const errorStatus = 2
const unset = { code: 0 }

/** The OTLP status: HTTP spans by their status code (server 5xx, client 4xx and 5xx), others by how they ended. */
const spanStatus = (span: RecordedSpan): { readonly code: number; readonly message?: string } => {
  const status = span.attributes.get("http.response.status_code")
  if (typeof status === "number") {
    const failed = status >= 500 || (span.kind === "client" && status >= 400)
    return failed ? { code: errorStatus, message: String(span.attributes.get("error.type") ?? status) } : unset
  }
  return span.failure === undefined ? unset : { code: errorStatus, message: span.failure.message }
}

type Ended = Extract<Tracer.SpanStatus, { _tag: "Ended" }>
type SpanEvent = readonly [name: string, time: bigint, attributes: Record<string, unknown>]
const noEvents: ReadonlyArray<SpanEvent> = []

/** A span's events, and an `exception` event when it failed with an error no `error.type` attribute names. */
const eventsOf = (span: RecordedSpan, status: Ended): ReadonlyArray<SpanEvent> => {
  const events = span._events ?? noEvents
  const failure = span.failure
  if (failure === undefined || span.attributes.has("error.type")) return events
  return [...events, ["exception", status.endTime, { "exception.type": failure.type, "exception.message": failure.message }]]
}

const noLinks: ReadonlyArray<never> = []

/** A span's attributes, with those of the URL of the request it served (OpenTelemetry's HTTP server span). */
const attributesOf = (span: RecordedSpan): Iterable<[string, unknown]> => {
  const url = span.url
  if (url === undefined) return span.attributes
  return [["url.path", pathOf(url)], ["url.scheme", schemeOf(url)], ["server.address", hostOf(url)], ...span.attributes]
}

/**
 * A span as OTLP has it. Counts of dropped items are left out (none are
 * dropped; both encodings read a missing count as zero).
 */
const toOtlp = (span: RecordedSpan) => {
  const status = span.status as Ended
  const parent = Option.getOrUndefined(span.parent)
  const events = eventsOf(span, status)
  return {
    traceId: span.traceId.padStart(32, "0"),
    spanId: span.spanId,
    parentSpanId: parent?.spanId,
    name: spanName(span),
    kind: spanKinds[span.kind],
    startTimeUnixNano: String(status.startTime),
    endTimeUnixNano: String(status.endTime),
    attributes: OtlpResource.entriesToAttributes(attributesOf(span)),
    events: events.length === 0 ? noEvents : events.map(([name, time, attributes]) => ({
      name,
      timeUnixNano: String(time),
      attributes: OtlpResource.entriesToAttributes(Object.entries(attributes))
    })),
    status: spanStatus(span),
    links: span.links.length === 0 ? noLinks : span.links.map((link) => ({
      traceId: link.span.traceId.padStart(32, "0"),
      spanId: link.span.spanId,
      attributes: OtlpResource.entriesToAttributes(Object.entries(link.attributes))
    }))
  }
}

/**
 * A finished span as the mesh keeps it (KEEP_TRACES): plain values, what the
 * console draws a waterfall from.
 */
export interface KeptSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string | undefined
  readonly name: string
  /** The Worker or Durable Object class that made it (`service.name`). */
  readonly service: string
  readonly kind: "internal" | "server" | "client" | "producer" | "consumer"
  /** Epoch ms, with fractions. */
  readonly startMs: number
  readonly durationMs: number
  /** Set when the span failed: its status message. */
  readonly error?: string | undefined
  readonly attributes: Readonly<Record<string, string | number | boolean>>
  readonly events: ReadonlyArray<{ readonly name: string; readonly atMs: number }>
}

/** Where an isolate keeps a copy of its spans in the mesh (the MESH_STATS object `(traces)`). */
export interface MeshTraceStore {
  readonly keepSpans: (spans: ReadonlyArray<KeptSpan>) => Promise<unknown>
}

/** A span as the mesh keeps it: at most 32 attributes and 16 events, strings cut to 256 characters (other values formatted, lists left out). */
const toKept = (service: string, span: RecordedSpan): KeptSpan => {
  const status = span.status as Ended
  const attributes: Record<string, string | number | boolean> = {}
  let count = 0
  for (const [key, value] of attributesOf(span)) {
    if (count++ === 32) break
    if (typeof value === "number" || typeof value === "boolean") attributes[key] = value
    else if (typeof value === "bigint" && BigInt.asIntN(64, value) === value) attributes[key] = Number(value)
    else if (!Array.isArray(value)) attributes[key] = (typeof value === "string" ? value : format(value)).slice(0, 256)
  }
  const { code, message } = spanStatus(span)
  return {
    traceId: span.traceId.padStart(32, "0"),
    spanId: span.spanId,
    parentSpanId: Option.getOrUndefined(span.parent)?.spanId,
    name: spanName(span).slice(0, 256),
    service,
    kind: span.kind,
    startMs: Number(status.startTime / 1000n) / 1000,
    durationMs: Number(status.endTime - status.startTime) / 1e6,
    error: code === errorStatus ? (message ?? "error").slice(0, 256) : undefined,
    attributes,
    events: eventsOf(span, status).slice(0, 16).map(([name, time]) => ({ name, atMs: Number(time / 1000n) / 1000 }))
  }
}

/** What an isolate's exporter has done so far. */
export interface Stats {
  exported: number
  dropped: number
  exports: number
  failedExports: number
}

export interface Service {
  readonly settings: Settings
  /** False when `OTLP_ENDPOINT` is off and the mesh keeps no traces: the runtime then serves without spans of its own. */
  readonly enabled: boolean
  readonly tracer: Tracer.Tracer
  /**
   * Starts the span of a request served at `url`, as `tracer` would; the URL's
   * attributes (`url.path`, `url.scheme`, `server.address`) are read from it
   * when the span is exported, not on the request's path.
   */
  readonly requestSpan: (options: SpanOptions, url: string) => Tracer.Span
  readonly stats: Readonly<Stats>
  /**
   * An invocation ended at `now` (epoch ms, which its span has just read):
   * exports the spans that ended. Never rejects; settles within the timeout.
   * Undefined when there is nothing for this invocation to wait for: an
   * export in flight, or a retry already waiting, takes its spans.
   */
  readonly finish: (now: number) => Promise<void> | undefined
  /** Exports the isolate's metrics if `METRICS_INTERVAL_SECONDS` have passed by `now` since the last export (undefined if not). */
  readonly exportMetrics: (now: number) => Promise<void> | undefined
}

/** How long one request's waitUntil keeps exporting spans that other requests left to it. */
const maxDrainMs = 10_000

/**
 * After a failed export the isolate makes no export for this long, doubling
 * with each failure in a row up to `maxBackoffMs`: an unreachable collector
 * costs one attempt per backoff, not one per request. Spans that end
 * meanwhile wait in the buffer (at most `maxBufferedSpans`, then dropped).
 */
const firstBackoffMs = 1_000
/** Within what a request's `waitUntil` may take after its response (30 s), so a retry can wait for it. */
const maxBackoffMs = 25_000

/**
 * What a drain may take, from its start, under the `waitUntil` it runs in: 30 s
 * from the response, less the wait for the request's own work (up to 5 s).
 */
const waitUntilBudgetMs = 25_000

export const makeService = (
  settings: Settings,
  flushMetrics: Effect.Effect<void> | undefined,
  meshStore?: MeshTraceStore | undefined
): Service => {
  const stats: Stats = { exported: 0, dropped: 0, exports: 0, failedExports: 0 }
  // Spans wait as they ended and are converted when they leave, in the order they ended, like an
  // OpenTelemetry batch processor's: a trace's spans may leave in several POSTs, which the collector
  // joins by trace id.
  let ended: Array<RecordedSpan> = []
  let buffered = 0
  let lastMetricsExport = 0
  const enabled = settings.endpoint !== undefined || meshStore !== undefined
  const serialization = settings.protocol === "json" ? OtlpSerialization.layerJson : OtlpSerialization.layerProtobuf
  const serialize = Effect.runSync(Effect.provide(Effect.service(OtlpSerialization.OtlpSerialization), serialization))
  const resource = OtlpResource.make({
    serviceName: settings.serviceName,
    serviceVersion: settings.serviceVersion,
    attributes: {
      "deployment.environment": settings.environment,
      "deployment.environment.name": settings.environment,
      "cloud.provider": "cloudflare",
      "cloud.platform": "cloudflare_workers",
      "telemetry.sdk.language": "webjs"
    }
  })
  const scope = { name: "meshwork", version: "0.1.0" }

  const drop = (count: number) => {
    stats.dropped += count
    droppedSpans.updateUnsafe(count, Context.empty())
  }

  const sink = (span: RecordedSpan) => {
    if (!enabled) return
    if (buffered >= settings.maxBufferedSpans) {
      // Spans the mesh's store has already make room first: the console keeps the newest.
      if (copied.length === 0) return drop(1)
      copied.shift()
      buffered--
      drop(1)
    }
    buffered++
    ended.push(span)
  }

  const startSpan = (options: SpanOptions, url?: string): Tracer.Span => {
    // Head sampling: a new trace is sampled at the configured ratio; a
    // child (local or carried in) keeps its parent's decision.
    const sampled = Option.isNone(options.parent)
      ? options.sampled && (settings.sampleRatio >= 1 || Math.random() < settings.sampleRatio)
      : options.sampled
    return new RecordedSpan(sampled === options.sampled ? options : { ...options, sampled }, sink, url)
  }
  const tracer = Tracer.make({ span: (options) => startSpan(options) })

  const post = (path: string, body: { readonly contentType: string; readonly text: string | undefined; readonly body: Uint8Array }) =>
    fetch(`${settings.endpoint}${path}`, {
      method: "POST",
      headers: { ...settings.headers, "content-type": body.contentType },
      body: body.text ?? body.body,
      signal: AbortSignal.timeout(settings.timeoutMs)
    }).then(async (response) => {
      await response.body?.cancel().catch(() => undefined)
      if (!response.ok) throw new Error(`collector answered ${response.status}`)
    })

  let backoffMs = 0
  let backoffUntil = 0
  const backingOff = (now = Date.now()) => backoffMs > 0 && now < backoffUntil
  /** When the one retry waiting out the backoff will run; a retry whose request was cancelled is taken as gone soon after. */
  let retryAt: number | undefined
  const retryPending = () => retryAt !== undefined && Date.now() < retryAt + settings.timeoutMs
  /**
   * One drain when the backoff ends, so spans that ended meanwhile do not wait
   * for a later request. A retry that a failed drain chains runs under the same
   * `waitUntil` as it, so it must end by that drain's `deadline`; if it could
   * not, none is set, and the next request's end sets one.
   */
  const retryAfterBackoff = (deadline?: number): Promise<void> | undefined => {
    if (retryPending()) return undefined
    if (deadline !== undefined && backoffUntil + settings.exportDelayMs + settings.timeoutMs > deadline) return undefined
    const at = retryAt = backoffUntil
    return new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, at - Date.now()))).then(() => {
      if (retryAt === at) retryAt = undefined
      return exporting() || backingOff() ? undefined : drain(deadline)
    })
  }

  /** Hands a copy of `spans` to the mesh's trace store, if kept there; never rejects. */
  const keepInMesh = (spans: Array<RecordedSpan>): Promise<void> => {
    if (meshStore === undefined) return Promise.resolve()
    // Converted inside the chain, so that nothing here can make a drain reject.
    return Promise.resolve().then(() => meshStore.keepSpans(spans.map((span) => toKept(settings.serviceName, span)))).then(
      () => undefined,
      (error: unknown) => {
        const warning = `${settings.serviceName} mesh trace store`
        if (warnedIsolate.has(warning)) return
        warnedIsolate.add(warning)
        console.warn(JSON.stringify({ level: "WARN", message: `${settings.serviceName}: the mesh's trace store (MESH_STATS) did not take spans`, error: String(error) }))
      }
    )
  }

  /**
   * Exports `fresh` and `waiting` (spans the mesh's store has already), and
   * keeps a copy of `fresh` in the mesh; answers whether the collector took them.
   */
  const exportSpans = async (fresh: Array<RecordedSpan>, waiting: Array<RecordedSpan>): Promise<boolean> => {
    const keeping = fresh.length > 0 ? keepInMesh(fresh) : Promise.resolve()
    if (settings.endpoint === undefined) {
      await keeping
      return true
    }
    try {
      return await exportToCollector(waiting.length === 0 ? fresh : [...waiting, ...fresh])
    } finally {
      await keeping
    }
  }

  /** A loop started at `since` that has not ended; one older than it could possibly run (its last round's wait and POST included) is taken as gone. */
  const stillRunning = (since: number | undefined, now: number) =>
    since !== undefined && now - since < maxDrainMs + settings.exportDelayMs + settings.timeoutMs

  /**
   * Spans in the mesh's store that wait for the collector: while the collector
   * is backed off, a copy still goes to the mesh at once (the console need not
   * wait for a collector that is down), one copy in flight at a time.
   */
  const copied: Array<RecordedSpan> = []
  let copyingSince: number | undefined
  const copying = (now = Date.now()) => stillRunning(copyingSince, now)
  const copyWhileBackingOff = (): Promise<void> | undefined => {
    if (meshStore === undefined || copying()) return undefined
    const started = copyingSince = Date.now()
    const copy = async (): Promise<void> => {
      try {
        for (let ready = takeReady(); ready.length > 0; ready = takeReady()) {
          // Still buffered: they leave with the collector's next export.
          buffered += ready.length
          for (const span of ready) copied.push(span)
          await keepInMesh(ready)
          if (!backingOff() || Date.now() - started > maxDrainMs) break
        }
      } finally {
        if (copyingSince === started) copyingSince = undefined
      }
      // The backoff may have ended during the copy, and its retry run before these spans were set aside.
      if (copied.length > 0 && !backingOff() && !exporting()) return drain()
    }
    return copy()
  }

  /** Exports `spans` to the collector; answers whether it took them. */
  const exportToCollector = async (spans: Array<RecordedSpan>): Promise<boolean> => {
    stats.exports++
    try {
      const data = { resourceSpans: [{ resource, scopeSpans: [{ scope, spans: spans.map(toOtlp) }] }] }
      await post("/v1/traces", serialize.traces(data as never) as never)
      stats.exported += spans.length
      backoffMs = 0
      return true
    } catch (error) {
      stats.failedExports++
      drop(spans.length)
      backoffMs = Math.min(maxBackoffMs, backoffMs === 0 ? firstBackoffMs : backoffMs * 2)
      backoffUntil = Date.now() + backoffMs
      // Once per isolate and collector: every Durable Object of an isolate has its own exporter.
      const warning = `${settings.serviceName} ${settings.endpoint}`
      if (!warnedIsolate.has(warning)) {
        warnedIsolate.add(warning)
        console.warn(JSON.stringify({
          level: "WARN",
          message: `${settings.serviceName}: the OTLP collector at ${settings.endpoint} failed; spans are dropped and counted ` +
            `(meshwork.telemetry.spans.dropped) and exports back off up to ${maxBackoffMs / 1000} s. Start a collector ` +
            `there (npm run traces, or Jaeger), or remove OTLP_ENDPOINT to turn tracing off.`,
          error: String(error)
        }))
      }
      return false
    }
  }

  /** The spans that ended since the last take. */
  const takeReady = (): Array<RecordedSpan> => {
    const ready = ended
    ended = []
    buffered -= ready.length
    return ready
  }

  /**
   * Rounds, each `exportDelayMs` after the last, that export what is ready,
   * until a round finds nothing (or `maxDrainMs` passed: a request's
   * waitUntil is limited). Requests that end while it runs leave their spans
   * to it, so under load one export carries many requests' spans. After
   * a failure, spans that ended meanwhile wait for the retry at the backoff's
   * end, not for the isolate's next request, which may never come.
   */
  // When the running drain started; a drain whose request was cancelled mid-export
  // never clears it, so one older than it could possibly run is taken as gone.
  let exportingSince: number | undefined
  const exporting = (now = Date.now()) => stillRunning(exportingSince, now)
  const drain = async (deadline = Date.now() + waitUntilBudgetMs): Promise<void> => {
    const started = exportingSince = Date.now()
    try {
      for (;;) {
        // Each round waits for more requests' spans first: under load, a round right after the last
        // one would carry only the few spans that ended during its POST, and a POST's own cost is
        // most of an export's.
        if (settings.exportDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, settings.exportDelayMs))
        const ready = takeReady()
        if (ready.length === 0 && copied.length === 0) return
        const waiting = copied.splice(0)
        buffered -= waiting.length
        if (!(await exportSpans(ready, waiting))) return ended.length > 0 || copied.length > 0 ? retryAfterBackoff(deadline) : undefined
        // Within its request's waitUntil: no round that could not end by the deadline (the next request's end starts one).
        if (Date.now() - started > maxDrainMs || Date.now() + settings.exportDelayMs + settings.timeoutMs > deadline) return
      }
    } finally {
      if (exportingSince === started) exportingSince = undefined
    }
  }

  return {
    settings,
    enabled,
    tracer,
    requestSpan: startSpan,
    stats,
    finish: (now) => {
      // An export in flight takes these spans with its next round; after a failure, the retry at the
      // backoff's end, the mesh's store a copy meanwhile.
      if (exporting(now)) return undefined
      if (!backingOff(now)) return drain()
      const copy = copyWhileBackingOff()
      const retry = retryAfterBackoff()
      return copy === undefined ? retry : retry === undefined ? copy : Promise.allSettled([copy, retry]).then(() => undefined)
    },
    exportMetrics: (now) => {
      if (flushMetrics === undefined || backingOff(now)) return undefined
      if (now - lastMetricsExport < settings.metricsIntervalMs) return undefined
      lastMetricsExport = now
      return Effect.runPromise(flushMetrics.pipe(Effect.timeoutOption(Duration.millis(settings.timeoutMs)), Effect.asVoid))
    }
  }
}
