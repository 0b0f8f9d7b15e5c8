/**
 * The routing table: which service answers which path prefix, over which
 * service binding. It is configuration (the `ROUTES` var of the router's
 * wrangler config), decoded with Schema when the Worker's layer is built, and
 * every binding it names is checked then, not at request time.
 *
 * ```toml
 * [vars]
 * ROUTES = [
 *   { service = "users", prefix = "/api/users", binding = "USERS" },
 * ]
 * ```
 *
 * Matching is on path-segment boundaries: `/api/users` matches `/api/users`
 * and `/api/users/7`, never `/api/usersadmin`. The longest prefix wins.
 */
import { Clock, Config, Context, Effect, Exit, Layer, Option, Schema } from "effect"
import * as Bindings from "../runtime/Bindings.ts"
import * as Problem from "../runtime/Problem.ts"
import * as Health from "./Health.ts"
import * as Identity from "./Identity.ts"
import * as Traffic from "./Traffic.ts"
import * as Telemetry from "./Telemetry.ts"
import * as Proxy from "./Proxy.ts"
import { BreakerSettings } from "./CircuitBreakers.ts"
import { FaultSettings } from "./Faults.ts"
import { RetrySettings } from "./Retry.ts"

/** `/segment(/segment)*`: no trailing slash, no empty or dot segments. */
export const PathPrefix = Schema.String.check(
  Schema.isPattern(/^(?:\/(?!\.{1,2}(?:\/|$))[A-Za-z0-9._~!$&'()*+,;=:@-]+)+$/)
)

export const Route = Schema.Struct({
  service: Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]*$/)),
  prefix: PathPrefix,
  binding: Schema.String.check(Schema.isPattern(/^[A-Z][A-Z0-9_]*$/)),
  /** Each attempt's timeout, in ms; the fetch is aborted when it passes. */
  timeoutMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600_000 }))),
  /** Retry settings, used when the Worker's layer has `Retries`. */
  retry: Schema.optionalKey(RetrySettings),
  /** Circuit breaker settings, used when the Worker's layer has `CircuitBreakers`. */
  breaker: Schema.optionalKey(BreakerSettings),
  /** Injected faults, used only when the Worker's layer has `FaultInjection`. */
  faults: Schema.optionalKey(FaultSettings),
  /**
   * Versions of the service by name, each with its binding (blue-green,
   * canary); the one whose binding is `binding` is the default. The split
   * between them is the traffic manager's (src/layers/Traffic.ts).
   */
  versions: Schema.optionalKey(Schema.Record(
    Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,31}$/)),
    Schema.String.check(Schema.isPattern(/^[A-Z][A-Z0-9_]*$/))
  ))
})
export type Route = typeof Route.Type

export const RouteTable = Schema.Array(Route).check(
  Schema.makeFilter((routes) => new Set(routes.map((route) => route.prefix)).size === routes.length, {
    expected: "routes with distinct prefixes"
  })
)

/** A route with its upstream binding resolved, and its versions'. */
export interface Upstream extends Route {
  readonly fetcher: Fetcher
  readonly resolvedVersions?: Traffic.Versions | undefined
}

/** Whether `path` is `prefix` or lies below it, on a segment boundary. */
export const matchesPrefix = (path: string, prefix: string): boolean =>
  path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* "/" */)

export class RoutingTable extends Context.Service<RoutingTable, {
  readonly upstreams: ReadonlyArray<Upstream>
  /** The upstream serving `path`, or `undefined`. */
  readonly match: (path: string) => Upstream | undefined
}>()("meshwork/layers/RoutingTable") {
  /** Builds the table from `upstreams`, longest prefix first. */
  static readonly make = (upstreams: ReadonlyArray<Upstream>): RoutingTable["Service"] => {
    const ordered = [...upstreams].sort((a, b) => b.prefix.length - a.prefix.length)
    return RoutingTable.of({
      upstreams: ordered,
      match: (path) => ordered.find((upstream) => matchesPrefix(path, upstream.prefix))
    })
  }

  /** The table from the `ROUTES` config, with every binding checked. */
  static readonly layer = Layer.effect(
    RoutingTable,
    Effect.gen(function*() {
      const routes = yield* Config.schema(RouteTable, "ROUTES")
      const upstreams = yield* Effect.forEach(routes, (route) =>
        Effect.gen(function*() {
          const fetcher = yield* Bindings.fetcher(route.binding)
          if (route.versions === undefined) return { ...route, fetcher } satisfies Upstream
          const fetchers = new Map<string, Fetcher>()
          for (const [version, binding] of Object.entries(route.versions)) fetchers.set(version, yield* Bindings.fetcher(binding))
          const defaultVersion = Object.entries(route.versions).find(([, binding]) => binding === route.binding)?.[0]
          if (defaultVersion === undefined) {
            return yield* Effect.die(new Error(`Route ${route.service}: no version has the route's binding ${route.binding}`))
          }
          return { ...route, fetcher, resolvedVersions: { service: route.service, fetchers, defaultVersion } } satisfies Upstream
        }))
      return RoutingTable.make(upstreams)
    })
  )
}

type ProxyError =
  | Problem.BadRequest
  | Problem.NotFound
  | Problem.MethodNotAllowed
  | Problem.BadGateway
  | Problem.GatewayTimeout
  | Problem.ServiceUnavailable
  | Problem.PayloadTooLarge

/** Forwards a request to its upstream; what a proxy's own step wraps. */
export type Forward = (request: Request) => Effect.Effect<Response, ProxyError, Bindings.Invocation>

/**
 * Forwards to the route's upstream, or, for a route with versions and a
 * traffic manager in the layer, to the version it picks: each version has
 * its own breaker and retry budget (`users@green`), its outcome is counted
 * for automatic rollback, and the answer says which version served it.
 */
const forwardTo = (upstream: Upstream, request: Request) =>
  Effect.gen(function*() {
    const versions = upstream.resolvedVersions
    const traffic = versions === undefined ? undefined : yield* Traffic.trafficManager
    if (versions === undefined || traffic === undefined) return yield* Proxy.forward(upstream, request)
    const identity = Option.getOrUndefined(yield* Effect.serviceOption(Identity.CurrentIdentity))
    const chosen = yield* traffic.choose(versions, identity, request)
    const service = chosen.version === versions.defaultVersion ? upstream.service : `${upstream.service}@${chosen.version}`
    const exit = yield* Effect.exit(Proxy.forward({ ...upstream, service, fetcher: chosen.fetcher }, request))
    // Only the version's own failures count against it: not a request refused before it was sent.
    const failed = exit._tag === "Success"
      ? exit.value.status >= 500
      : Exit.findErrorOption(exit).pipe(
        Option.exists((error) =>
          error instanceof Problem.BadGateway || error instanceof Problem.GatewayTimeout || error instanceof Problem.ServiceUnavailable
        )
      )
    yield* traffic.record(versions, chosen.version, failed)
    if (exit._tag === "Failure") return yield* exit
    const response = new Response(exit.value.body, exit.value)
    response.headers.set(Traffic.versionHeader, chosen.version)
    return response
  })

/**
 * The fetch handler of a proxy Worker (the gateway, the router): refuse
 * ambiguous paths, answer `GET /health` with the upstreams' health, forward
 * everything else to the upstream whose prefix matches, through `around`, the
 * Worker's own step (the gateway authenticates and rate limits there), 404
 * otherwise.
 */
export const proxy = <E = never, R = never>(
  service: string,
  around: (request: Request, forward: Forward) => Effect.Effect<Response, E | ProxyError, Bindings.Invocation | R> = (request, forward) =>
    forward(request)
) => {
  // The gateway's /health is public: one probe of the mesh per 5 s per isolate, however often it is asked.
  let cached: { readonly report: Health.HealthReport; readonly at: number } | undefined
  const health = (upstreams: ReadonlyArray<Upstream>) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      cached !== undefined && now - cached.at < Health.cacheMillis
        ? Effect.succeed(cached.report)
        : Effect.tap(Health.report(service, upstreams), (report) => Effect.sync(() => (cached = { report, at: now }))))
  return (request: Request): Effect.Effect<Response, ProxyError | E, RoutingTable | Identity.IdentityKey | Bindings.Invocation | R> =>
  RoutingTable.use((table): Effect.Effect<Response, ProxyError | E, Identity.IdentityKey | Bindings.Invocation | R> => {
    const path = new URL(request.url).pathname
    if (path === "/health") {
      return request.method === "GET" || request.method === "HEAD"
        ? Effect.andThen(Telemetry.annotateServerSpan("http.route", "/health"), Effect.map(health(table.upstreams), Health.toResponse))
        : Effect.fail(new Problem.MethodNotAllowed({ detail: "GET /health" }))
    }
    return Effect.flatMap(Proxy.checkPath(path), (): Effect.Effect<Response, ProxyError | E, Bindings.Invocation | R> => {
      const upstream = table.match(path)
      return upstream === undefined
        ? Effect.fail(new Problem.NotFound({ detail: `No service serves ${path}` }))
        : Effect.andThen(Telemetry.annotateServerSpan("http.route", `${upstream.prefix}/*`), around(request, (prepared) => forwardTo(upstream, prepared)))
    })
  })
}
