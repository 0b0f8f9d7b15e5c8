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
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import type { Versions } from "../release/TrafficManager.ts"
import { BreakerSettings } from "../resilience/CircuitBreakers.ts"
import { BulkheadSettings } from "../resilience/Bulkheads.ts"
import { FaultSettings } from "../resilience/FaultInjection.ts"
import { RetrySettings } from "../resilience/Retries.ts"

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
  /** A cap on calls in flight, used when the Worker's layer has `Bulkheads`. */
  bulkhead: Schema.optionalKey(BulkheadSettings),
  /**
   * Versions of the service by name, each with its binding (blue-green,
   * canary); the one whose binding is `binding` is the default. The split
   * between them is the traffic manager's (src/layers/release/TrafficManager.ts).
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
  readonly resolvedVersions?: Versions | undefined
}

/** Whether `path` is `prefix` or lies below it, on a segment boundary. */
export const matchesPrefix = (path: string, prefix: string): boolean =>
  path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* "/" */)

export class RoutingTable extends Context.Service<RoutingTable, {
  readonly upstreams: ReadonlyArray<Upstream>
  /** The upstream serving `path`, or `undefined`. */
  readonly match: (path: string) => Upstream | undefined
}>()("meshwork/layers/routing/RoutingTable") {
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
