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
 * | `OTLP_ENDPOINT` | none: tracing off | the collector's base URL (`/v1/traces` is added). Without it (or `off`), and without `KEEP_TRACES`, no span is made, nothing exported. `npm start -- --otlp <url>` sets it for the local mesh |
 * | `KEEP_TRACES` | `false` | keep a copy of every sampled span in the mesh (the `(traces)` object of the `MESH_STATS` binding): a bounded sample of recent traces the console draws (`npm start` turns it on). Turns tracing on, collector or not |
 * | `OTLP_PROTOCOL` | `json` | or `protobuf` (Effect's protobuf encoder costs more CPU in workerd than `JSON.stringify`: measured) |
 * | `OTLP_HEADERS` | none | `key=value,key=value`, e.g. a hosted collector's API key (a secret) |
 * | `OTLP_TIMEOUT_MS` | `2000` | longest an export may take; then its spans are dropped and counted |
 * | `OTLP_EXPORT_DELAY_MS` | `50` | how long each export waits for more requests' spans before it leaves (0 to 5000): under load, at most one POST per this long per isolate |
 * | `SERVICE_VERSION` | `0.1.0` | `service.version` |
 * | `DEPLOYMENT_ENVIRONMENT` | `development` | `deployment.environment` |
 * | `TRACE_SAMPLE_RATIO` | `1` | head sampling of new traces; a trace carried in keeps its parent's decision |
 * | `TRUST_CLIENT_TRACEPARENT` | `false` | public Workers only: continue a client's trace, rather than start one linked to it |
 * | `METRICS_INTERVAL_SECONDS` | `60` | an isolate exports its metrics at most this often |
 *
 * How a Worker exports: ended spans wait in the isolate, and when a request
 * ends (after its `waitUntil` work too) every span that ended so far leaves
 * in one POST, `OTLP_EXPORT_DELAY_MS` later, under `ctx.waitUntil`, within
 * `OTLP_TIMEOUT_MS`; while one is waiting or in flight,
 * requests that end leave their spans to its next round, which waits
 * `OTLP_EXPORT_DELAY_MS` again, so under load one POST carries many requests
 * (a POST's own cost is most of an export's). The response never waits for it. A failed or
 * timed-out export drops its spans and counts them
 * (`meshwork.telemetry.spans.dropped`, and `stats`), warns once, and backs
 * the isolate's exports off (1 s doubling to 25 s): an unreachable collector
 * costs one attempt per backoff, never one per request. Spans that end
 * meanwhile wait (at most `maxBufferedSpans`; further ones are dropped and
 * counted) for one retry at the backoff's end, under the `waitUntil` of a
 * request that ended during it; their copy for the mesh (`KEEP_TRACES`)
 * goes at once all the same.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ErrorReporter from "effect/ErrorReporter"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as References from "effect/References"
import * as Tracer from "effect/Tracer"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as OtlpExporter from "effect/observability/OtlpExporter"
import * as OtlpMetrics from "effect/observability/OtlpMetrics"
import * as OtlpSerialization from "effect/observability/OtlpSerialization"
import { WorkerEnv } from "./Bindings.ts"
import { type KeptSpan, makeService, type MeshTraceStore, type Service } from "./telemetry/Exporter.ts"
import { errorTypeReporter, jsonLogger } from "./telemetry/Logger.ts"
import { defaults, type Settings, settings } from "./telemetry/Settings.ts"

export type { KeptSpan, MeshTraceStore, Service, Stats } from "./telemetry/Exporter.ts"
export { droppedSpans } from "./telemetry/Exporter.ts"
export { jsonLogger } from "./telemetry/Logger.ts"
export { requestDuration, requests } from "./telemetry/ServerSpans.ts"
export { type Settings, settings } from "./telemetry/Settings.ts"
export {
  activeCarrier,
  annotateServerSpan,
  type Carrier,
  carrier,
  errorTag,
  event,
  formatTraceparent,
  isTracing,
  parseTraceparent,
  ServerSpan,
  setCarrier,
  traceparent,
  TraceState,
  withCarrier
} from "./telemetry/TraceContext.ts"

/** Updates `metric` with `attributes`, from inside an effect. */
export const record = <In>(metric: Metric.Metric<In, unknown>, value: In, attributes: Record<string, string>) =>
  Metric.update(Metric.withAttributes(metric, attributes), value)

/**
 * The object of the `MESH_STATS` namespace that keeps the mesh's traces
 * (`KEEP_TRACES`); the others are named after Workers, which no name in
 * parentheses is.
 */
export const traceStoreName = "(traces)"

/**
 * Where this Worker keeps its spans in the mesh: the `(traces)` object of its
 * `MESH_STATS` binding, when `KEEP_TRACES` is on (a warning, and nothing
 * kept, without the binding).
 */
const meshTraceStore = (config: Settings): Effect.Effect<MeshTraceStore | undefined, never, WorkerEnv> =>
  Effect.gen(function*() {
    if (!config.keepTraces) return undefined
    const namespace = (yield* WorkerEnv)["MESH_STATS"] as DurableObjectNamespace | undefined
    if (namespace === undefined || typeof namespace.idFromName !== "function") {
      yield* Effect.logWarning(`${config.serviceName}: KEEP_TRACES needs the MESH_STATS Durable Object binding; no traces are kept`)
      return undefined
    }
    return {
      keepSpans: (spans: ReadonlyArray<KeptSpan>) =>
        (namespace.get(namespace.idFromName(traceStoreName)) as unknown as MeshTraceStore).keepSpans(spans)
    }
  })

/** This isolate's telemetry: its settings, tracer and exporter. */
export class Telemetry extends Context.Service<Telemetry, Service>()("meshwork/runtime/Telemetry") {}

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
    const service = makeService(config, flushMetrics, yield* meshTraceStore(config))
    const logger = Logger.layer([jsonLogger(serviceName, config.serviceVersion), Logger.tracerLogger])
    // Off: Effect's own spans (Effect.fn, withSpan) are not even made.
    if (!service.enabled) return Layer.mergeAll(Layer.succeed(Telemetry, service), logger, Layer.succeed(References.TracerEnabled, false))
    return Layer.mergeAll(
      Layer.succeed(Telemetry, service),
      Layer.succeed(Tracer.Tracer, service.tracer),
      logger,
      ErrorReporter.layer([errorTypeReporter])
    )
  }))
