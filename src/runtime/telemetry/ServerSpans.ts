/** Server spans: what the runtime wraps each request and object call in, and the export after it. */
import * as Cause from "effect/Cause"
import type * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import type { Service } from "./Exporter.ts"
import { type Carrier, errorTag, parseTraceparent, ServerSpan, TraceState } from "./TraceContext.ts"

// ---------------------------------------------------------------------------
// Metrics

/**
 * Requests served, by method, route and status. The runtime counts each
 * series itself (`Series` below) and registers it with Effect's registry:
 * read these metrics, do not update them with the runtime's attributes.
 */
export const requests = Metric.counter("meshwork.http.server.requests", {
  description: "Requests served",
  incremental: true
})

const boundaries = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]

/** Server latency, in seconds (OpenTelemetry's `http.server.request.duration`), counted as `requests` is. */
export const requestDuration = Metric.histogram("http.server.request.duration", {
  description: "Duration of HTTP server requests, in seconds",
  boundaries
})

/**
 * The request count and latency of one method, route and status in this
 * isolate. The runtime counts here, and Effect's metric registry reads the
 * figures when the metrics are exported (`Metric.registerUnsafe`): an update
 * through `Metric.updateUnsafe` makes a Context and looks the series up in the
 * registry, twice per request.
 */
class Series {
  count = 0
  readonly counts = new Uint32Array(boundaries.length + 1)
  sum = 0
  min = Number.MAX_VALUE
  max = -Number.MAX_VALUE

  constructor(attributes: Record<string, string>) {
    Metric.registerUnsafe(Metric.withAttributes(requests, attributes), metricContext, {
      get: () => ({ count: this.count, incremental: true }),
      update: () => undefined,
      modify: () => undefined
    })
    Metric.registerUnsafe(Metric.withAttributes(requestDuration, attributes), metricContext, {
      get: () => {
        let below = 0
        return {
          buckets: boundaries.map((boundary, i): [number, number] => [boundary, below += this.counts[i]!]),
          count: this.count,
          min: this.min,
          max: this.max,
          sum: this.sum
        }
      },
      update: () => undefined,
      modify: () => undefined
    })
  }

  record(seconds: number) {
    let bucket = 0
    while (bucket < boundaries.length && seconds > boundaries[bucket]!) bucket++
    this.counts[bucket]!++
    this.count++
    this.sum += seconds
    if (seconds < this.min) this.min = seconds
    if (seconds > this.max) this.max = seconds
  }
}

/**
 * The spans made here are timed on `clock`, the Effect clock of the Worker's
 * services, which the handler's own spans are timed on too. Not `Date.now()`,
 * though it costs half as much: Effect's default clock anchors its monotonic
 * reading to the wall clock once, and in workerd the two were seen a
 * millisecond apart at that moment (the test "times server spans on the
 * clock their children are timed on"), so a child could start before its
 * server span.
 */
export type SpanClock = Pick<Clock.Clock, "currentTimeNanosUnsafe">

/** Ends `span` now with `exit`. */
export const endSpan = (span: Tracer.Span, exit: Exit.Exit<unknown, unknown>, clock: SpanClock): void =>
  span.end(clock.currentTimeNanosUnsafe(), exit)

/** Starts the span of a request served by this Worker; its parent is the caller's span when trusted. */
export const startServerSpan = (service: Service, request: Request, trustTraceparent: boolean, clock: SpanClock) => {
  // Each property of the request read once.
  const headers = request.headers
  const method = request.method
  const incoming = parseTraceparent(headers.get("traceparent"))
  const trusted = incoming !== undefined && trustTraceparent
  const span = service.requestSpan({
    name: method,
    parent: trusted ? Option.some(incoming) : Option.none(),
    annotations: Context.empty(),
    // An untrusted client trace is linked, not continued.
    links: incoming !== undefined && !trusted ? [{ span: incoming, attributes: { "meshwork.link": "client traceparent" } }] : [],
    startTime: clock.currentTimeNanosUnsafe(),
    kind: "server",
    root: !trusted,
    sampled: trusted ? incoming.sampled : true
  }, request.url)
  span.attribute("http.request.method", method)
  const agent = headers.get("user-agent")
  if (agent !== null) span.attribute("user_agent.original", agent)
  const tracestate = trusted ? headers.get("tracestate") ?? undefined : undefined
  return { span, tracestate }
}

/** Starts the span of a call carried in by `carrier` (a Durable Object call, a queue message). */
export const startSpan = (service: Service, name: string, kind: Tracer.SpanKind, carrier: Carrier | undefined, clock: SpanClock) => {
  const parent = parseTraceparent(carrier?.traceparent)
  return service.tracer.span({
    name,
    parent: parent === undefined ? Option.none() : Option.some(parent),
    annotations: Context.empty(),
    links: [],
    startTime: clock.currentTimeNanosUnsafe(),
    kind,
    root: parent === undefined,
    sampled: parent?.sampled ?? true
  })
}

/** Runs `effect` inside `span` (its parent span, `ServerSpan`, and the carried `tracestate`). */
export const within = <A, E, R>(effect: Effect.Effect<A, E, R>, span: Tracer.Span, tracestate: string | undefined) =>
  effect.pipe(
    // No stack trace: it would name this runtime's frame, and capturing one per request costs more than the rest of the span.
    Effect.withParentSpan(span, { captureStackTrace: false }),
    Effect.provideService(ServerSpan, span),
    Effect.provideService(TraceState, tracestate)
  )

const knownMethods = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"])

/** Ends a request's span with its answer, and records the request metrics. */
export const endServerSpan = (span: Tracer.Span, exit: Exit.Exit<Response, unknown>, response: Response, clock: SpanClock): void => {
  // Each read of a Response's status is a call into the runtime.
  const status = response.status
  span.attribute("http.response.status_code", status)
  if (Exit.isFailure(exit)) {
    const error = Cause.findErrorOption(exit.cause)
    const tag = Option.isSome(error) ? errorTag(error.value) : undefined
    if (tag !== undefined) span.attribute("error.type", tag)
    else if (!span.attributes.has("error.type") && Cause.hasDies(exit.cause)) span.attribute("error.type", "Defect")
  }
  if (status >= 500 && !span.attributes.has("error.type")) span.attribute("error.type", String(status))
  const end = clock.currentTimeNanosUnsafe()
  span.end(end, exit)
  const route = span.attributes.get("http.route")
  const method = String(span.attributes.get("http.request.method"))
  const start = span.status._tag === "Ended" ? span.status.startTime : end
  // A client chooses the method: unknown ones are one series, as OpenTelemetry asks.
  seriesOf(knownMethods.has(method) ? method : "_OTHER", typeof route === "string" ? route : "unmatched", status)
    .record(Number(end - start) / 1e9)
}

const metricContext = Context.empty()

/**
 * Routes are a Worker's own and statuses few; past this many series an
 * isolate counts further ones in one, marked `otel.metric.overflow` as
 * OpenTelemetry's cardinality limit does.
 */
const maxSeries = 1000
// By method, then route, then status: three lookups by strings the isolate already holds (and a
// number) cost less than making and hashing one key per request.
const series = new Map<string, Map<string, Map<number, Series>>>()
let seriesCount = 0
let overflow: Series | undefined
const seriesOf = (method: string, route: string, status: number): Series => {
  const found = series.get(method)?.get(route)?.get(status)
  if (found !== undefined) return found
  if (seriesCount >= maxSeries) return overflow ??= new Series({ "otel.metric.overflow": "true" })
  let byRoute = series.get(method)
  if (byRoute === undefined) series.set(method, byRoute = new Map())
  let byStatus = byRoute.get(route)
  if (byStatus === undefined) byRoute.set(route, byStatus = new Map())
  const made = new Series({ "http.request.method": method, "http.route": route, "http.response.status_code": String(status) })
  byStatus.set(status, made)
  seriesCount++
  return made
}

/**
 * How long an export waits for the invocation's `waitUntil` work (a cache
 * store waits for the client to read the body; a revalidation may take 30 s).
 * Spans that work ends later leave with a later export of the isolate.
 */
const maxWaitForWorkMs = 5000

/** Exports the spans that ended and (now and then) the metrics; undefined when there is nothing to wait for. */
const exportNow = (service: Service): Promise<void> | undefined => {
  // One clock read for both checks.
  const now = Date.now()
  const spans = service.finish(now)
  const metrics = service.exportMetrics(now)
  if (spans === undefined && metrics === undefined) return undefined
  return Promise.allSettled([spans, metrics]).then(() => undefined)
}

/** Waits for `work` (within `maxWaitForWorkMs`), then exports as `exportNow` does. */
const exportAfter = (service: Service, work: () => Promise<void>): Promise<void> => {
  let timer: ReturnType<typeof setTimeout> | undefined
  const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, maxWaitForWorkMs)))
  return Promise.race([work(), waited])
    .then(() => {
      if (timer !== undefined) clearTimeout(timer)
      return exportNow(service)
    })
    .then(() => undefined, () => undefined)
}

/** Settles once every promise in `pending` has, including ones added meanwhile. */
const allSettled = async (pending: Array<Promise<unknown>>) => {
  let seen = 0
  while (seen < pending.length) {
    const batch = pending.slice(seen)
    seen = pending.length
    await Promise.allSettled(batch)
  }
}

/**
 * One invocation (a request, an object call, a queue batch). Its `waitUntil`,
 * the `Invocation` to hand the handler, also remembers the work; `done()`,
 * once the invocation has answered, exports the spans that ended under
 * `ctx.waitUntil`, after that work (and work it added) settled.
 */
export const invocation = (service: Service, ctx: { waitUntil(promise: Promise<unknown>): void }) => {
  let pending: Array<Promise<unknown>> | undefined
  return {
    waitUntil(promise: Promise<unknown>) {
      ;(pending ??= []).push(promise)
      ctx.waitUntil(promise)
    },
    done: () => {
      // Without waitUntil work (most requests), no timer and no race: under load an export in
      // flight takes this request's spans, and the request has nothing to wait for.
      const work = pending
      const exported = work === undefined ? exportNow(service) : exportAfter(service, () => allSettled(work))
      if (exported !== undefined) ctx.waitUntil(exported)
    }
  }
}

