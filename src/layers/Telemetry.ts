/**
 * Observability for every Worker and Durable Object: traces exported as
 * OTLP/HTTP (what Jaeger v2 takes on :4318), W3C trace context carried over
 * every hop, JSON logs that name their trace, and OTLP metrics.
 *
 * `Worker.make` and `DurableObjects.make` install this layer themselves, with
 * the Worker's name as `service.name`; a Worker only configures it:
 *
 * | var | default | |
 * |---|---|---|
 * | `OTLP_ENDPOINT` | `http://127.0.0.1:4318` | the collector; `off` turns tracing off (no spans of the runtime's, nothing exported) |
 * | `OTLP_PROTOCOL` | `json` | or `protobuf` (Effect's protobuf encoder costs more CPU in workerd than `JSON.stringify`: measured) |
 * | `OTLP_HEADERS` | none | `key=value,key=value`, e.g. a hosted collector's API key (a secret) |
 * | `OTLP_TIMEOUT_MS` | `2000` | longest an export may take; then its spans are dropped and counted |
 * | `SERVICE_VERSION` | `0.1.0` | `service.version` |
 * | `DEPLOYMENT_ENVIRONMENT` | `development` | `deployment.environment` |
 * | `TRACE_SAMPLE_RATIO` | `1` | head sampling of new traces; a trace carried in keeps its parent's decision |
 * | `TRUST_CLIENT_TRACEPARENT` | `false` | public Workers only: continue a client's trace, rather than start one linked to it |
 * | `METRICS_INTERVAL_SECONDS` | `60` | an isolate exports its metrics at most this often |
 *
 * How a Worker exports: spans are kept in the isolate, grouped by trace id,
 * and when a request ends (after its `waitUntil` work too) the spans of every
 * trace with no request still running in the isolate leave in one POST,
 * under `ctx.waitUntil`, within `OTLP_TIMEOUT_MS`; while one is in flight,
 * requests that end leave their spans to its next round, so under load one
 * POST carries many requests. The response never waits for it. A failed or timed-out export drops its spans and counts them
 * (`meshwork.telemetry.spans.dropped`, and `stats`); at most `maxBufferedSpans`
 * wait in an isolate, further ones are dropped and counted too.
 */
import { Cause, Clock, Config, Context, Duration, Effect, ErrorReporter, Exit, Layer, Logger, Metric, Option, Tracer } from "effect"
import { FetchHttpClient } from "effect/http"
import { OtlpExporter, OtlpMetrics, OtlpResource, OtlpSerialization } from "effect/observability"
import { WorkerEnv } from "../runtime/Bindings.ts"

// ---------------------------------------------------------------------------
// Trace context (W3C Trace Context level 1)

/** What crosses a hop: the W3C headers of the sending span, ready to spread into a request's headers. */
export interface Carrier {
  readonly traceparent: string
  readonly tracestate?: string
}

const traceparentPattern = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/

/**
 * The span a `traceparent` names, or undefined when it is missing or invalid
 * (version ff, all-zero ids, or a version-00 header with extra fields).
 */
export const parseTraceparent = (header: string | null | undefined): Tracer.ExternalSpan | undefined => {
  const match = header == null ? null : traceparentPattern.exec(header.trim())
  if (match === null) return undefined
  const [, version, traceId, spanId, flags, rest] = match
  if (version === "ff" || (version === "00" && rest !== undefined)) return undefined
  if (/^0+$/.test(traceId!) || /^0+$/.test(spanId!)) return undefined
  return Tracer.externalSpan({ traceId: traceId!, spanId: spanId!, sampled: (parseInt(flags!, 16) & 1) === 1 })
}

/** The `traceparent` naming `span`. */
export const formatTraceparent = (span: Tracer.AnySpan): string =>
  `00-${span.traceId.padStart(32, "0")}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** The `tracestate` received with the current request, handed on unchanged to every hop. */
export const TraceState = Context.Reference<string | undefined>("meshwork/layers/Telemetry/TraceState", {
  defaultValue: () => undefined
})

/** The span of the request (or Durable Object call) being served: its `error.type` is set from typed failures. */
export const ServerSpan = Context.Reference<Tracer.Span | undefined>("meshwork/layers/Telemetry/ServerSpan", {
  defaultValue: () => undefined
})

/** The trace context to send with a call made now, if there is a current span. */
export const carrier: Effect.Effect<Carrier | undefined> = Effect.withFiber((fiber) => {
  const span = Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
  if (span === undefined) return Effect.succeed(undefined)
  const tracestate = fiber.getRef(TraceState)
  return Effect.succeed(tracestate === undefined ? { traceparent: formatTraceparent(span) } : { traceparent: formatTraceparent(span), tracestate })
})

/** `carrier` when tracing is on (a tracer other than Effect's native one is installed), else undefined. */
export const activeCarrier: Effect.Effect<Carrier | undefined> = Effect.withFiber((fiber) =>
  fiber.getRef(Tracer.Tracer) === Tracer.nativeTracer ? Effect.succeed(undefined) : carrier
)

/** The current `traceparent`, if there is a current span. */
export const traceparent: Effect.Effect<string | undefined> = Effect.map(carrier, (c) => c?.traceparent)

/** `headers` (copied) carrying `carrier` in place of any trace context they had. */
export const withCarrier = (headers: Headers, carrier: Carrier): Headers => {
  const copy = new Headers(headers)
  copy.delete("tracestate")
  for (const [name, value] of Object.entries(carrier)) copy.set(name, value)
  return copy
}

/**
 * Sets an attribute of the request being served: its `http.route` (a proxy's
 * routing prefix), or its `error.type` when the handler turns a typed error
 * into a response itself.
 */
export const annotateServerSpan = (key: "http.route" | "error.type", value: string): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    fiber.getRef(ServerSpan)?.attribute(key, value)
    return Effect.void
  })

/** A policy's decision, recorded as an event on the current span. */
export const event = (name: string, attributes: Record<string, unknown>): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    const span = Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
    if (span !== undefined && span._tag === "Span") {
      span.event(name, Context.get(fiber.context, Clock.Clock).currentTimeNanosUnsafe(), attributes)
    }
    return Effect.void
  })

// ---------------------------------------------------------------------------
// Metrics

/** Requests served, by method, route and status. */
export const requests = Metric.counter("meshwork.http.server.requests", {
  description: "Requests served",
  incremental: true
})

/** Server latency, in seconds (OpenTelemetry's `http.server.request.duration`). */
export const requestDuration = Metric.histogram("http.server.request.duration", {
  description: "Duration of HTTP server requests, in seconds",
  boundaries: [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
})

/** A circuit breaker's state per upstream: 0 closed, 1 half-open, 2 open. */
export const breakerState = Metric.gauge("meshwork.breaker.state", {
  description: "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open"
})

/** Requests refused by a rate limit, by limit name. */
export const rateLimitRejections = Metric.counter("meshwork.ratelimit.rejections", {
  description: "Requests refused by a rate limit",
  incremental: true
})

/** Edge cache lookups by result (HIT, STALE, MISS, BYPASS...): the hit ratio is HIT+STALE over all. */
export const cacheResults = Metric.counter("meshwork.cache.requests", {
  description: "Edge cache lookups by result",
  incremental: true
})

/** Spans this isolate could not export (collector down, slow, refusing, or the buffer full). */
export const droppedSpans = Metric.counter("meshwork.telemetry.spans.dropped", {
  description: "Spans dropped by the exporter",
  incremental: true
})

/** Updates `metric` with `attributes`, from inside an effect. */
export const record = <In>(metric: Metric.Metric<In, unknown>, value: In, attributes: Record<string, string>) =>
  Metric.update(Metric.withAttributes(metric, attributes), value)

// ---------------------------------------------------------------------------
// Settings

export interface Settings {
  readonly serviceName: string
  readonly serviceVersion: string
  readonly environment: string
  /** The collector's base URL, or undefined when exporting is off. */
  readonly endpoint: string | undefined
  readonly protocol: "json" | "protobuf"
  readonly headers: Readonly<Record<string, string>>
  readonly timeoutMs: number
  readonly sampleRatio: number
  readonly trustClientTraceparent: boolean
  readonly metricsIntervalMs: number
  readonly maxBufferedSpans: number
}

/** `key=value,key=value` (values may be percent-encoded), as OTEL_EXPORTER_OTLP_HEADERS has it. */
const parseHeaders = (value: string): Record<string, string> => {
  const decode = (part: string) => {
    try {
      return decodeURIComponent(part.trim())
    } catch {
      return part.trim()
    }
  }
  const headers: Record<string, string> = {}
  for (const pair of value.split(",")) {
    const at = pair.indexOf("=")
    if (at > 0) headers[decode(pair.slice(0, at))] = decode(pair.slice(at + 1))
  }
  return headers
}

/** The defaults of every setting but the service's name. */
const defaults = {
  serviceVersion: "0.1.0",
  environment: "development",
  endpoint: "http://127.0.0.1:4318",
  protocol: "json",
  headers: {},
  timeoutMs: 2000,
  sampleRatio: 1,
  trustClientTraceparent: false,
  metricsIntervalMs: 60_000,
  maxBufferedSpans: 4096
} as const satisfies Omit<Settings, "serviceName">

/** The settings of `serviceName`, from the Worker's vars. */
export const settings = (serviceName: string) =>
  Config.all({
    endpoint: Config.String("OTLP_ENDPOINT").pipe(Config.withDefault(defaults.endpoint)),
    protocol: Config.Literals(["json", "protobuf"], "OTLP_PROTOCOL").pipe(Config.withDefault(defaults.protocol)),
    headers: Config.String("OTLP_HEADERS").pipe(Config.withDefault("")),
    timeoutMs: Config.Int("OTLP_TIMEOUT_MS").pipe(Config.withDefault(defaults.timeoutMs)),
    serviceVersion: Config.String("SERVICE_VERSION").pipe(Config.withDefault(defaults.serviceVersion)),
    environment: Config.String("DEPLOYMENT_ENVIRONMENT").pipe(Config.withDefault(defaults.environment)),
    sampleRatio: Config.Number("TRACE_SAMPLE_RATIO").pipe(Config.withDefault(defaults.sampleRatio)),
    trustClientTraceparent: Config.Boolean("TRUST_CLIENT_TRACEPARENT").pipe(Config.withDefault(defaults.trustClientTraceparent)),
    metricsIntervalSeconds: Config.Number("METRICS_INTERVAL_SECONDS").pipe(Config.withDefault(defaults.metricsIntervalMs / 1000))
  }).pipe(Effect.map((c): Settings => {
    const endpoint = c.endpoint.trim().replace(/\/+$/, "")
    return {
      serviceName,
      serviceVersion: c.serviceVersion,
      environment: c.environment,
      endpoint: endpoint === "" || endpoint === "off" ? undefined : endpoint,
      protocol: c.protocol,
      headers: parseHeaders(c.headers),
      timeoutMs: Math.max(1, c.timeoutMs),
      sampleRatio: Math.min(1, Math.max(0, c.sampleRatio)),
      trustClientTraceparent: c.trustClientTraceparent,
      metricsIntervalMs: Math.max(0, c.metricsIntervalSeconds * 1000),
      maxBufferedSpans: defaults.maxBufferedSpans
    }
  }))

// ---------------------------------------------------------------------------
// Spans and their export

/** A span that, once ended and if sampled, waits in the isolate's buffer. */
class RecordedSpan extends Tracer.NativeSpan {
  constructor(options: ConstructorParameters<typeof Tracer.NativeSpan>[0], readonly sink: (span: RecordedSpan) => void) {
    super(options)
  }
  override end(endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    if (this.status._tag === "Ended") return
    super.end(endTime, exit)
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

/** The OTLP status: HTTP spans by their status code (server 5xx, client 4xx and 5xx), others by their exit. */
const spanStatus = (span: RecordedSpan, exit: Exit.Exit<unknown, unknown>): { code: number; message?: string } => {
  const status = span.attributes.get("http.response.status_code")
  const errorType = span.attributes.get("error.type")
  if (typeof status === "number") {
    const failed = status >= 500 || (span.kind === "client" && status >= 400)
    return failed ? { code: errorStatus, message: String(errorType ?? status) } : { code: 0 }
  }
  if (Exit.isSuccess(exit)) return { code: 0 }
  if (Cause.hasInterruptsOnly(exit.cause)) return { code: 0 }
  const error = Cause.squash(exit.cause)
  return { code: errorStatus, message: error instanceof Error ? error.message : String(error) }
}

const toOtlp = (span: RecordedSpan) => {
  const status = span.status as Extract<Tracer.SpanStatus, { _tag: "Ended" }>
  const events = (span._events ?? []).map(([name, time, attributes]) => ({
    name,
    timeUnixNano: String(time),
    attributes: OtlpResource.entriesToAttributes(Object.entries(attributes)),
    droppedAttributesCount: 0
  }))
  if (Exit.isFailure(status.exit) && !span.attributes.has("error.type")) {
    const error = Cause.squash(status.exit.cause)
    if (!Cause.hasInterruptsOnly(status.exit.cause)) {
      events.push({
        name: "exception",
        timeUnixNano: String(status.endTime),
        attributes: OtlpResource.entriesToAttributes(Object.entries({
          "exception.type": errorTag(error) ?? (error instanceof Error ? error.name : typeof error),
          "exception.message": error instanceof Error ? error.message : String(error)
        })),
        droppedAttributesCount: 0
      })
    }
  }
  const parent = Option.getOrUndefined(span.parent)
  return {
    traceId: span.traceId.padStart(32, "0"),
    spanId: span.spanId,
    parentSpanId: parent?.spanId,
    name: spanName(span),
    kind: spanKinds[span.kind],
    startTimeUnixNano: String(status.startTime),
    endTimeUnixNano: String(status.endTime),
    attributes: OtlpResource.entriesToAttributes(span.attributes),
    droppedAttributesCount: 0,
    events,
    droppedEventsCount: 0,
    status: spanStatus(span, status.exit),
    links: span.links.map((link) => ({
      traceId: link.span.traceId.padStart(32, "0"),
      spanId: link.span.spanId,
      attributes: OtlpResource.entriesToAttributes(Object.entries(link.attributes)),
      droppedAttributesCount: 0
    })),
    droppedLinksCount: 0
  }
}

/** The `_tag` of a typed error, if it has one. */
export const errorTag = (error: unknown): string | undefined => {
  if (typeof error !== "object" || error === null) return undefined
  const tag = (error as { readonly _tag?: unknown })._tag
  return typeof tag === "string" ? tag : undefined
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
  /** False when `OTLP_ENDPOINT` is off: the runtime then serves without spans of its own. */
  readonly enabled: boolean
  readonly tracer: Tracer.Tracer
  readonly stats: Readonly<Stats>
  /** A request (or object call) of `traceId` starts in this isolate. */
  readonly begin: (traceId: string) => void
  /**
   * A request of `traceId` ended (undefined: an invocation of no one trace,
   * like a queue batch): exports the spans of every trace no request in this
   * isolate is still serving. Never rejects; settles within the timeout.
   */
  readonly finish: (traceId: string | undefined) => Promise<void>
  /** Exports the isolate's metrics if `METRICS_INTERVAL_SECONDS` have passed since the last export. */
  readonly exportMetrics: () => Promise<void>
}

export class Telemetry extends Context.Service<Telemetry, Service>()("meshwork/layers/Telemetry") {}

/** How long one request's waitUntil keeps exporting spans that other requests left to it. */
const maxDrainMs = 10_000

/** A trace whose requests have run this long no longer holds back its spans (a request may never settle). */
const maxOpenMs = 60_000

const makeService = (settings: Settings, flushMetrics: Effect.Effect<void> | undefined): Service => {
  const stats: Stats = { exported: 0, dropped: 0, exports: 0, failedExports: 0 }
  type OtlpSpan = ReturnType<typeof toOtlp>
  // Spans are converted when they end: a span's Exit holds its request's values, which must not outlive it.
  const buckets = new Map<string, Array<OtlpSpan>>()
  // Requests in flight per trace, and when the trace's first one began: a request whose
  // handler never settles (its client went away) must not hold its trace's spans for good.
  const open = new Map<string, { count: number; since: number }>()
  let buffered = 0
  let lastMetricsExport = 0
  const enabled = settings.endpoint !== undefined
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
    if (buffered >= settings.maxBufferedSpans) return drop(1)
    buffered++
    const otlp = toOtlp(span)
    const bucket = buckets.get(otlp.traceId)
    if (bucket === undefined) buckets.set(otlp.traceId, [otlp])
    else bucket.push(otlp)
  }

  const tracer = Tracer.make({
    span(options) {
      // Head sampling: a new trace is sampled at the configured ratio; a
      // child (local or carried in) keeps its parent's decision.
      const sampled = Option.isNone(options.parent)
        ? options.sampled && (settings.sampleRatio >= 1 || Math.random() < settings.sampleRatio)
        : options.sampled
      return new RecordedSpan({ ...options, sampled }, sink)
    }
  })

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

  const exportSpans = async (spans: Array<OtlpSpan>): Promise<void> => {
    stats.exports++
    try {
      const data = { resourceSpans: [{ resource, scopeSpans: [{ scope, spans }] }] }
      await post("/v1/traces", serialize.traces(data as never) as never)
      stats.exported += spans.length
    } catch (error) {
      stats.failedExports++
      drop(spans.length)
      if (stats.failedExports === 1 || stats.failedExports % 100 === 0) {
        console.warn(JSON.stringify({
          level: "WARN",
          message: `${settings.serviceName}: spans dropped, the OTLP collector at ${settings.endpoint} failed`,
          error: String(error),
          dropped: stats.dropped
        }))
      }
    }
  }

  /** The spans of every trace no request in this isolate is still serving. */
  const takeReady = (): Array<OtlpSpan> => {
    const ready: Array<OtlpSpan> = []
    const now = Date.now()
    // Unsampled traces have no bucket to clear theirs: sweep the stale ones now and then.
    if (open.size > 1000) for (const [id, running] of open) if (now - running.since >= maxOpenMs) open.delete(id)
    for (const [id, spans] of buckets) {
      const running = open.get(id)
      if (running !== undefined && now - running.since < maxOpenMs) continue
      open.delete(id)
      buckets.delete(id)
      for (const span of spans) ready.push(span)
    }
    buffered -= ready.length
    return ready
  }

  /**
   * Exports what is ready, then what became ready meanwhile, until nothing
   * is (or `maxDrainMs` passed: a request's waitUntil is limited). Requests
   * that end while it runs leave their spans to it, so under load one export
   * carries many requests' spans, each request's all in the same one.
   */
  // When the running drain started; a drain whose request was cancelled mid-export
  // never clears it, so one older than it could possibly run is taken as gone.
  let exportingSince: number | undefined
  const exporting = () => exportingSince !== undefined && Date.now() - exportingSince < maxDrainMs + settings.timeoutMs
  const drain = async (): Promise<void> => {
    const started = exportingSince = Date.now()
    try {
      for (let ready = takeReady(); ready.length > 0; ready = takeReady()) {
        await exportSpans(ready)
        if (Date.now() - started > maxDrainMs) return
      }
    } finally {
      if (exportingSince === started) exportingSince = undefined
    }
  }

  return {
    settings,
    enabled,
    tracer,
    stats,
    begin: (traceId) => {
      const running = open.get(traceId)
      if (running === undefined) open.set(traceId, { count: 1, since: Date.now() })
      else running.count++
    },
    finish: (traceId) => {
      const running = traceId === undefined ? undefined : open.get(traceId)
      if (running !== undefined && --running.count === 0) open.delete(traceId!)
      // An export in flight takes these spans with its next round.
      return exporting() ? Promise.resolve() : drain()
    },
    exportMetrics: () => {
      if (flushMetrics === undefined) return Promise.resolve()
      const now = Date.now()
      if (now - lastMetricsExport < settings.metricsIntervalMs) return Promise.resolve()
      lastMetricsExport = now
      return Effect.runPromise(flushMetrics.pipe(Effect.timeoutOption(Duration.millis(settings.timeoutMs)), Effect.asVoid))
    }
  }
}

/** Writes each log line as one JSON object naming the trace and span it belongs to. */
export const jsonLogger = (serviceName: string) =>
  Logger.make((options) => {
    const entry = Logger.formatStructured.log(options) as Record<string, unknown>
    const span = Context.getOrUndefined(options.fiber.context, Tracer.ParentSpan)
    // Annotations first: a field of the line's own is never overwritten by one.
    const line = {
      ...(entry["annotations"] as object),
      timestamp: entry["timestamp"],
      level: entry["level"],
      message: entry["message"],
      service: serviceName,
      ...(span === undefined ? {} : { trace_id: span.traceId.padStart(32, "0"), span_id: span.spanId }),
      ...(entry["cause"] === undefined ? {} : { cause: entry["cause"] }),
      ...(Object.keys(entry["spans"] as object).length === 0 ? {} : { spans: entry["spans"] })
    }
    const text = JSON.stringify(line)
    if (options.logLevel === "Error" || options.logLevel === "Fatal") console.error(text)
    else if (options.logLevel === "Warn") console.warn(text)
    else console.log(text)
  })

/** Sets `error.type` on the served span from the tag of a typed failure an HTTP API turned into a response. */
const errorTypeReporter: ErrorReporter.ErrorReporter = {
  [ErrorReporter.TypeId]: ErrorReporter.TypeId,
  report: ({ cause, fiber }) => {
    const span = fiber.getRef(ServerSpan)
    if (span === undefined) return
    for (const reason of cause.reasons) {
      const tag = reason._tag === "Fail" ? errorTag(reason.error) : undefined
      if (tag !== undefined) return span.attribute("error.type", tag)
    }
  }
}

/**
 * The telemetry of the Worker (or Durable Object) `serviceName`: the
 * `Telemetry` service, Effect's tracer, a JSON logger with trace ids (and
 * Effect's span-event logger), the error reporter that names `error.type`,
 * and the OTLP metrics exporter.
 */
export const layer = (serviceName: string, options: { readonly metrics?: boolean } = {}): Layer.Layer<Telemetry, never, WorkerEnv> =>
  Layer.unwrap(Effect.gen(function*() {
    // Telemetry never takes a Worker down: unreadable settings turn it off, with a warning.
    const config = yield* settings(serviceName).pipe(
      Effect.catch((error) =>
        Effect.as(
          Effect.logWarning("Telemetry settings are invalid; tracing is off", error),
          { ...defaults, serviceName, endpoint: undefined } satisfies Settings
        )
      )
    )
    const flushMetrics = config.endpoint !== undefined && options.metrics !== false
      ? yield* Effect.gen(function*() {
        yield* OtlpMetrics.make({
          url: `${config.endpoint}/v1/metrics`,
          headers: config.headers,
          resource: {
            serviceName,
            serviceVersion: config.serviceVersion,
            attributes: {
              "deployment.environment": config.environment,
              "deployment.environment.name": config.environment,
              // Each isolate counts on its own: its series must not be mistaken for another's.
              "service.instance.id": crypto.randomUUID()
            }
          },
          // Never on a timer (an isolate has no timers between requests): requests flush it.
          exportInterval: Duration.infinity,
          shutdownTimeout: 0
        })
        return (yield* OtlpExporter.Flusher).flush
      }).pipe(
        Effect.provide(Layer.mergeAll(
          OtlpExporter.layerFlusher,
          FetchHttpClient.layer,
          config.protocol === "json" ? OtlpSerialization.layerJson : OtlpSerialization.layerProtobuf
        ))
      )
      : undefined
    const service = makeService(config, flushMetrics)
    const logger = Logger.layer([jsonLogger(serviceName), Logger.tracerLogger])
    if (!service.enabled) return Layer.merge(Layer.succeed(Telemetry, service), logger)
    return Layer.mergeAll(
      Layer.succeed(Telemetry, service),
      Layer.succeed(Tracer.Tracer, service.tracer),
      logger,
      ErrorReporter.layer([errorTypeReporter])
    )
  }))

// ---------------------------------------------------------------------------
// Server spans: what the runtime wraps each request and object call in

const clock = Clock.Clock.defaultValue()
const now = (): bigint => clock.currentTimeNanosUnsafe()

/** Ends `span` now with `exit`. */
export const endSpan = (span: Tracer.Span, exit: Exit.Exit<unknown, unknown>): void => span.end(now(), exit)

const traceContextHeaders = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"]

/** `request` without W3C or B3 trace headers (the same request when it has none). */
export const withoutTraceContext = (request: Request): Request => {
  if (!traceContextHeaders.some((name) => request.headers.has(name))) return request
  const headers = new Headers(request.headers)
  for (const name of traceContextHeaders) headers.delete(name)
  return new Request(request, { headers })
}

/** Starts the span of a request served by this Worker; its parent is the caller's span when trusted. */
export const startServerSpan = (service: Service, request: Request, trustTraceparent: boolean) => {
  const incoming = parseTraceparent(request.headers.get("traceparent"))
  const trusted = incoming !== undefined && trustTraceparent
  const url = new URL(request.url)
  const span = service.tracer.span({
    name: request.method,
    parent: trusted ? Option.some(incoming) : Option.none(),
    annotations: Context.empty(),
    // An untrusted client trace is linked, not continued.
    links: incoming !== undefined && !trusted ? [{ span: incoming, attributes: { "meshwork.link": "client traceparent" } }] : [],
    startTime: now(),
    kind: "server",
    root: !trusted,
    sampled: trusted ? incoming.sampled : true
  })
  span.attribute("http.request.method", request.method)
  span.attribute("url.path", url.pathname)
  span.attribute("url.scheme", url.protocol.slice(0, -1))
  span.attribute("server.address", url.hostname)
  const agent = request.headers.get("user-agent")
  if (agent !== null) span.attribute("user_agent.original", agent)
  const tracestate = trusted ? request.headers.get("tracestate") ?? undefined : undefined
  return { span, tracestate }
}

/** Starts the span of a call carried in by `carrier` (a Durable Object call, a queue message). */
export const startSpan = (service: Service, name: string, kind: Tracer.SpanKind, carrier: Carrier | undefined) => {
  const parent = parseTraceparent(carrier?.traceparent)
  return service.tracer.span({
    name,
    parent: parent === undefined ? Option.none() : Option.some(parent),
    annotations: Context.empty(),
    links: [],
    startTime: now(),
    kind,
    root: parent === undefined,
    sampled: parent?.sampled ?? true
  })
}

/** Runs `effect` inside `span` (its parent span, `ServerSpan`, and the carried `tracestate`). */
export const within = <A, E, R>(effect: Effect.Effect<A, E, R>, span: Tracer.Span, tracestate: string | undefined) =>
  effect.pipe(
    Effect.withParentSpan(span),
    Effect.provideService(ServerSpan, span),
    Effect.provideService(TraceState, tracestate)
  )

const knownMethods = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"])

/** Ends a request's span with its answer, and records the request metrics. */
export const endServerSpan = (span: Tracer.Span, exit: Exit.Exit<Response, unknown>, response: Response) => {
  span.attribute("http.response.status_code", response.status)
  if (Exit.isFailure(exit)) {
    const error = Cause.findErrorOption(exit.cause)
    const tag = Option.isSome(error) ? errorTag(error.value) : undefined
    if (tag !== undefined) span.attribute("error.type", tag)
    else if (!span.attributes.has("error.type") && Cause.hasDies(exit.cause)) span.attribute("error.type", "Defect")
  }
  if (response.status >= 500 && !span.attributes.has("error.type")) span.attribute("error.type", String(response.status))
  const end = now()
  span.end(end, exit)
  const route = span.attributes.get("http.route")
  const method = String(span.attributes.get("http.request.method"))
  const attributes = {
    // A client chooses the method: unknown ones are one series, as OpenTelemetry asks.
    "http.request.method": knownMethods.has(method) ? method : "_OTHER",
    "http.route": typeof route === "string" ? route : "unmatched",
    "http.response.status_code": String(response.status)
  }
  const context = Context.empty()
  Metric.withAttributes(requests, attributes).updateUnsafe(1, context)
  const start = span.status._tag === "Ended" ? span.status.startTime : end
  Metric.withAttributes(requestDuration, attributes).updateUnsafe(Number(end - start) / 1e9, context)
}

/**
 * How long an export waits for the invocation's `waitUntil` work (a cache
 * store waits for the client to read the body; a revalidation may take 30 s).
 * Spans that work ends later leave with a later export of the isolate.
 */
const maxWaitForWorkMs = 5000

/** Waits for `work` (within `maxWaitForWorkMs`), then exports the spans of `traceId` and (now and then) the metrics. */
const exportAfter = (service: Service, traceId: string | undefined, work: () => Promise<void>): Promise<void> => {
  let timer: ReturnType<typeof setTimeout> | undefined
  const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, maxWaitForWorkMs)))
  return Promise.race([work(), waited])
    .then(() => {
      if (timer !== undefined) clearTimeout(timer)
      return Promise.all([service.finish(traceId), service.exportMetrics()])
    })
    .then(() => undefined, () => undefined)
}

/**
 * One invocation of `traceId` (undefined: one of no single trace, like a
 * queue batch). Its `waitUntil`, the `Invocation` to hand the handler, also
 * remembers the work; `done()`, once the invocation has answered, exports
 * its spans under `ctx.waitUntil` after that work (and work it added) settled.
 */
export const invocation = (service: Service, ctx: { waitUntil(promise: Promise<unknown>): void }, traceId: string | undefined) => {
  if (traceId !== undefined) service.begin(traceId)
  const pending: Array<Promise<unknown>> = []
  const settled = async () => {
    let seen = 0
    while (seen < pending.length) {
      const batch = pending.slice(seen)
      seen = pending.length
      await Promise.allSettled(batch)
    }
  }
  return {
    waitUntil(promise: Promise<unknown>) {
      pending.push(promise)
      ctx.waitUntil(promise)
    },
    done: () => ctx.waitUntil(exportAfter(service, traceId, settled))
  }
}
