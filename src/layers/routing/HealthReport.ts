/**
 * Reachability of a Worker's upstreams, for `GET /health`.
 *
 * Each upstream's own `/health` is probed in parallel, each with a timeout.
 * A proxy upstream (the router) reports its upstreams in turn; those entries
 * are merged into this report, so the gateway's `/health` lists every Worker
 * of the mesh. The report is 200 when every upstream is up, else 503. A
 * proxy reuses its report for 5 s.
 */
import { Duration, Effect, Schema } from "effect"
import { CircuitBreakers } from "../resilience/CircuitBreakers.ts"
import * as Identity from "../security/Identity.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

export const UpstreamHealth = Schema.Struct({
  status: Schema.Literals(["up", "down"]),
  latencyMs: Schema.optionalKey(Schema.Number),
  detail: Schema.optionalKey(Schema.String),
  /** The state of the caller's circuit breaker for this upstream, if it has one. */
  breaker: Schema.optionalKey(Schema.Literals(["Closed", "Open", "HalfOpen"]))
})
export type UpstreamHealth = typeof UpstreamHealth.Type

export const HealthReport = Schema.Struct({
  service: Schema.String,
  status: Schema.Literals(["ok", "degraded"]),
  upstreams: Schema.optionalKey(Schema.Record(Schema.String, UpstreamHealth))
})
export type HealthReport = typeof HealthReport.Type

const decodeReport = Schema.decodeUnknownEffect(Schema.fromJsonString(HealthReport))

/** An upstream to probe: its name and its binding. */
export interface Probed {
  readonly service: string
  readonly fetcher: Fetcher
}

export const defaultProbeTimeout = Duration.seconds(2)

/** How long a proxy reuses its last report: /health is public, probing the mesh is not free. */
export const cacheMillis = 5_000

const down = (detail: string): UpstreamHealth => ({ status: "down", detail })

/**
 * Probes one upstream (probes carry this Worker's assertion like any internal
 * call); never fails: an unreachable upstream is `down`.
 */
export const probe = (
  upstream: Probed,
  timeout: Duration.Duration = defaultProbeTimeout
) =>
  Effect.gen(function*() {
    const assertion = yield* Identity.signFor(upstream.service, "GET", "/health")
    const trace = yield* Telemetry.activeCarrier
    const started = Date.now()
    const response = yield* Effect.tryPromise((signal) =>
      upstream.fetcher.fetch(`http://${upstream.service}.internal/health`, {
        signal,
        headers: { ...trace, [Identity.header]: assertion }
      })
    )
    const latencyMs = Date.now() - started
    const report = yield* Effect.flatMap(Effect.promise(() => response.text()), decodeReport)
    const self: UpstreamHealth = response.ok && report.status === "ok"
      ? { status: "up", latencyMs }
      : { status: "down", latencyMs, detail: `${upstream.service} reported ${report.status} (HTTP ${response.status})` }
    return { [upstream.service]: self, ...report.upstreams }
  }).pipe(
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () => Effect.succeed({ [upstream.service]: down(`no answer within ${Duration.format(timeout)}`) })
    }),
    Effect.catch(() => Effect.succeed({ [upstream.service]: down("unreachable or not a health report") }))
  )

/** `entries` with the caller's breaker state added to its direct upstreams. */
const withBreakers = (upstreams: ReadonlyArray<Pick<Probed, "service">>, entries: Record<string, UpstreamHealth>) =>
  Effect.flatMap(Effect.serviceOption(CircuitBreakers), (breakers) =>
    breakers._tag === "None"
      ? Effect.succeed(entries)
      : Effect.map(
        Effect.forEach(upstreams, (upstream) => Effect.map(breakers.value.state(upstream.service), (state) => [upstream.service, state] as const)),
        (states) => {
          const next = { ...entries }
          for (const [name, state] of states) {
            const entry = next[name]
            if (state !== undefined && entry !== undefined) next[name] = { ...entry, breaker: state }
          }
          return next
        }
      ))

/** The health report of `service`, probing all of `upstreams`. */
export const report = (service: string, upstreams: ReadonlyArray<Probed>) =>
  Effect.flatMap(
    Effect.forEach(upstreams, (upstream) => probe(upstream), { concurrency: "unbounded" }),
    (entries) =>
      Effect.map(withBreakers(upstreams, Object.assign({}, ...entries)), (merged): HealthReport => {
        const ok = Object.values(merged).every((entry) => entry.status === "up")
        return { service, status: ok ? "ok" : "degraded", upstreams: merged }
      })
  )

export const toResponse = (report: HealthReport): Response =>
  Response.json(report, { status: report.status === "ok" ? 200 : 503, headers: { "cache-control": "no-store" } })
