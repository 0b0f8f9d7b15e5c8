/**
 * The detailed health of a Worker's upstreams, for the mesh's operators.
 *
 * Each upstream's own `/health` is probed in parallel, each with a timeout:
 * every version of a route with versions (`users` is the default version,
 * `users@green` another), each service's readiness checks (its D1 query, its
 * Durable Object call) included. A proxy upstream (the router) reports its
 * upstreams in turn; those entries are merged into this report, so the
 * gateway's report lists every Worker of the mesh. The report is `ok` (200)
 * when every entry is up and no circuit breaker is open or half-open, else
 * `degraded` (503).
 *
 * It lists internal Workers, latencies and breaker states: a proxy answers
 * it only to other Workers of the mesh (Proxy.ts), and the gateway to admins
 * (`GET /api/admin/health`, MeshAdmin.ts). Anyone else gets `status` only.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { Check } from "../../runtime/Health.ts"
import type { Versions } from "../release/TrafficManager.ts"
import { CircuitBreakers } from "../resilience/CircuitBreakers.ts"
import * as Identity from "../security/Identity.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

export const UpstreamHealth = Schema.Struct({
  status: Schema.Literals(["up", "down"]),
  latencyMs: Schema.optionalKey(Schema.Number),
  detail: Schema.optionalKey(Schema.String),
  /** The version this entry is, for a route with versions. */
  version: Schema.optionalKey(Schema.String),
  /** The state of the caller's circuit breaker for this upstream, if it has one. */
  breaker: Schema.optionalKey(Schema.Literals(["Closed", "Open", "HalfOpen"])),
  /** The upstream's own readiness checks, as it reported them. */
  checks: Schema.optionalKey(Schema.Record(Schema.String, Check))
})
export type UpstreamHealth = typeof UpstreamHealth.Type

export const HealthReport = Schema.Struct({
  service: Schema.String,
  status: Schema.Literals(["ok", "degraded"]),
  upstreams: Schema.optionalKey(Schema.Record(Schema.String, UpstreamHealth)),
  checks: Schema.optionalKey(Schema.Record(Schema.String, Check))
})
export type HealthReport = typeof HealthReport.Type

const decodeReport = Schema.decodeUnknownEffect(Schema.fromJsonString(HealthReport))

/**
 * An upstream to probe: its name in the report, its binding, and, for one
 * version of a route, the Worker it speaks for (`audience`) and the version.
 */
export interface Probed {
  readonly service: string
  readonly fetcher: Fetcher
  readonly audience?: string | undefined
  readonly version?: string | undefined
}

/** A route's upstream as the routing table has it: every version of it is probed. */
export interface Routed {
  readonly service: string
  readonly fetcher: Fetcher
  readonly resolvedVersions?: Versions | undefined
}

/**
 * What to probe for `upstreams`: each one, and each version of one with
 * versions, named as its breaker is (`users`, `users@green`).
 */
export const probesOf = (upstreams: ReadonlyArray<Routed | Probed>): ReadonlyArray<Probed> =>
  upstreams.flatMap((upstream): ReadonlyArray<Probed> => {
    const versions = "resolvedVersions" in upstream ? upstream.resolvedVersions : undefined
    if (versions === undefined) return [upstream]
    return [...versions.fetchers].map(([version, fetcher]) => ({
      service: version === versions.defaultVersion ? upstream.service : `${upstream.service}@${version}`,
      fetcher,
      audience: upstream.service,
      version
    }))
  })

export const defaultProbeTimeout = Duration.seconds(2)

/** How long a proxy reuses its last report, so a monitor asking often does not multiply traffic inside the mesh. */
export const cacheMillis = 5_000

const down = (detail: string): UpstreamHealth => ({ status: "down", detail })

/**
 * Probes one upstream (probes carry this Worker's assertion like any internal
 * call); never fails: an unreachable upstream is `down`.
 */
export const probe = (
  upstream: Probed,
  timeout: Duration.Duration = defaultProbeTimeout
) => {
  const version = upstream.version === undefined ? {} : { version: upstream.version }
  return Effect.gen(function*() {
    const audience = upstream.audience ?? upstream.service
    const assertion = yield* Identity.signFor(audience, "GET", "/health")
    const trace = yield* Telemetry.activeCarrier
    const started = Date.now()
    const response = yield* Effect.tryPromise((signal) =>
      upstream.fetcher.fetch(`http://${audience}.internal/health`, {
        signal,
        headers: { ...trace, [Identity.header]: assertion }
      })
    )
    const latencyMs = Date.now() - started
    const report = yield* Effect.flatMap(Effect.promise(() => response.text()), decodeReport)
    const checks = report.checks === undefined ? {} : { checks: report.checks }
    const self: UpstreamHealth = response.ok && report.status === "ok"
      ? { status: "up", latencyMs, ...version, ...checks }
      : { status: "down", latencyMs, ...version, ...checks, detail: `${upstream.service} reported ${report.status} (HTTP ${response.status})` }
    return { [upstream.service]: self, ...report.upstreams }
  }).pipe(
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () => Effect.succeed({ [upstream.service]: { ...down(`no answer within ${Duration.format(timeout)}`), ...version } })
    }),
    Effect.catch(() => Effect.succeed({ [upstream.service]: { ...down("unreachable or not a health report"), ...version } }))
  )
}

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

/** Whether an entry is fully serving: up, and its breaker (if any) closed. */
export const isServing = (entry: UpstreamHealth): boolean => entry.status === "up" && (entry.breaker === undefined || entry.breaker === "Closed")

/** The health report of `service`, probing all of `upstreams` (every version of each). */
export const report = (service: string, upstreams: ReadonlyArray<Routed | Probed>) => {
  const probes = probesOf(upstreams)
  return Effect.flatMap(
    Effect.forEach(probes, (upstream) => probe(upstream), { concurrency: "unbounded" }),
    (entries) =>
      Effect.map(withBreakers(probes, Object.assign({}, ...entries)), (merged): HealthReport => {
        const ok = Object.values(merged).every(isServing)
        return { service, status: ok ? "ok" : "degraded", upstreams: merged }
      })
  )
}

export const toResponse = (report: HealthReport): Response =>
  Response.json(report, { status: report.status === "ok" ? 200 : 503, headers: { "cache-control": "no-store" } })

/**
 * What anyone outside the mesh learns at a proxy's `/health`: that the Worker
 * answers. Nothing about what is behind it (which Workers, how fast, which
 * breaker is open: what a client's own load did), and no probe inside the mesh.
 */
export const Liveness = Schema.Struct({ status: Schema.Literal("ok") })

export const liveness = (): Response => Response.json({ status: "ok" }, { headers: { "cache-control": "no-store" } })

/**
 * The services the report lists, and the versions of each (empty for a
 * route without versions): what a traffic split may name.
 */
export const servicesOf = (report: HealthReport): ReadonlyMap<string, ReadonlyArray<string>> => {
  const services = new Map<string, Array<string>>()
  for (const [name, entry] of Object.entries(report.upstreams ?? {})) {
    const service = name.split("@", 1)[0]!
    const versions = services.get(service) ?? []
    if (entry.version !== undefined) versions.push(entry.version)
    services.set(service, versions)
  }
  return services
}
