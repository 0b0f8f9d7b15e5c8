/**
 * The mesh's admin API, served by a public Worker under `/api/admin` (admins
 * only; the gateway authenticates and rate limits the request first):
 *
 *   GET    /api/admin/status                      traffic splits and flags
 *   GET    /api/admin/audit?limit=50              the newest changes made here (Audit.ts records every one)
 *   GET    /api/admin/health                      the mesh's detailed health (HealthReport.ts)
 *   GET    /api/admin/live?minutes=5              live figures across isolates: calls by upstream and version, policy decisions, breaker transitions (MeshStats.ts)
 *   GET    /api/admin/traces?limit=20&series=&errors=true   the mesh's sample of recent traces, newest first (TraceSample.ts)
 *   GET    /api/admin/traces/{traceId}            one kept trace, with its spans
 *   GET    /api/admin/traffic                     every service's split
 *   PUT    /api/admin/traffic/{service}           { stable, canary?, weight, autoRollback?, outlierDetection?, mirror?, faults? }
 *   POST   /api/admin/traffic/{service}/rollback  weight 0 for the canary (routers follow within their cache time)
 *   GET    /api/admin/traffic/{service}/mirror    requests mirrored to the canary: matched, mismatched, the newest mismatches (zeros before the first)
 *   GET    /api/admin/flags                       every flag
 *   PUT    /api/admin/flags/{name}                { enabled, percentage, users?, roles? }
 *   DELETE /api/admin/flags/{name}
 *   POST   /api/admin/cache/purge                 { urls?, tags? }
 *
 * Splits and flags live in the `MESH_CONFIG` KV namespace the routers and
 * services read (TrafficManager.ts, FeatureFlags.ts). A split may name only
 * a service the mesh routes and versions that service has: the admin API
 * learns both from the mesh's health report, which lists every route and
 * version the routers serve. Bodies are JSON, at most `maxBodyBytes`, and
 * input that does not decode is the services' 400 (`errors: [{ path, message }]`).
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as LiveStats from "../observability/LiveStats.ts"
import * as MeshStats from "../observability/MeshStats.ts"
import { maxTraces } from "../observability/TraceSample.ts"
import { readLimited } from "../../runtime/Http.ts"
import * as Problem from "../../runtime/Problem.ts"
import { EdgeCache } from "../edge/EdgeCache.ts"
import * as HealthReport from "../routing/HealthReport.ts"
import { RoutingTable } from "../routing/RoutingTable.ts"
import { hasRole, type Identity, IdentityKey } from "../security/Identity.ts"
import * as Audit from "./Audit.ts"
import * as FeatureFlags from "./FeatureFlags.ts"
import * as Traffic from "./TrafficManager.ts"

export const adminPrefix = "/api/admin"

/** Largest request body the admin API reads (128 KiB: a flag with 1000 user ids fits). */
export const maxBodyBytes = 128 * 1024

/** What a purge names: URLs (every user's and encoding's copy) and tags (`Cache-Tag`). */
const Purge = Schema.Struct({
  urls: Schema.optionalKey(
    Schema.Array(Schema.String.check(Schema.isStartingWith("/"), Schema.isMaxLength(2048))).check(Schema.isMaxLength(1000))
  ),
  tags: Schema.optionalKey(
    Schema.Array(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(1024))).check(Schema.isMaxLength(1000))
  )
})


const isJson = (contentType: string | null) =>
  contentType !== null && contentType.split(";", 1)[0]!.trim().toLowerCase() === "application/json"

/**
 * The request's JSON body decoded with `schema`, as a service reads one
 * (Http.serve): 415 unless `application/json`, 413 past `maxBodyBytes`,
 * 400 when it does not parse or decode.
 */
const body = <S extends Schema.Codec<any, any>>(request: Request, schema: S) =>
  Effect.gen(function*() {
    if (!isJson(request.headers.get("content-type"))) {
      if (request.body !== null) yield* Effect.promise(() => request.body!.cancel())
      return yield* new Problem.UnsupportedMediaType({ detail: "Request bodies must be application/json" })
    }
    const declared = Number(request.headers.get("content-length") ?? "0")
    if (declared > maxBodyBytes) {
      if (request.body !== null) yield* Effect.promise(() => request.body!.cancel())
      return yield* new Problem.PayloadTooLarge({ limit: maxBodyBytes })
    }
    const bytes = request.body === null ? new Uint8Array(0) : yield* readLimited(request.body, maxBodyBytes)
    const json = yield* Effect.try({
      try: () => JSON.parse(new TextDecoder().decode(bytes)) as unknown,
      catch: () => new Problem.BadRequest({ detail: "The request could not be parsed" })
    })
    return yield* Schema.decodeUnknownEffect(schema)(json).pipe(
      Effect.mapError((error) => Problem.validationFailed(Problem.issuesOf("payload", error)))
    )
  }) as Effect.Effect<S["Type"], Problem.BadRequest | Problem.UnsupportedMediaType | Problem.PayloadTooLarge>

/** A name from the path, decoded with `schema`; else the 400 naming the parameter. */
const name = (value: string | undefined, schema: Schema.Codec<string, string>, parameter: string) =>
  Schema.decodeUnknownEffect(schema)(value).pipe(
    Effect.mapError((error) => Problem.validationFailed(Problem.issuesOf("params", error).map((issue) => ({ ...issue, path: ["params", parameter] }))))
  )

/** A W3C trace id: 32 lower-case hex digits. */
const TraceId = Schema.String.check(Schema.isPattern(/^[0-9a-f]{32}$/))

const invalidPayload = (field: string, message: string) => Problem.validationFailed([{ path: ["payload", field], message }])

/** A configuration store failure, as the admin sees it. */
const storeDown = () => Effect.fail(new Problem.ServiceUnavailable({ detail: "The mesh configuration store failed; try again" }))

const config = Bindings.kv("MESH_CONFIG").pipe(
  Effect.catchTag("meshwork/Bindings/MissingBinding", () =>
    Effect.fail(new Problem.ServiceUnavailable({ detail: "The mesh configuration store (MESH_CONFIG) is not bound" })))
)

/**
 * The detailed health of everything behind this Worker: its routing table's
 * upstreams probed, every version and readiness check, as this Worker's mesh
 * identity (IdentityKey) names it.
 */
const meshHealth = Effect.gen(function*() {
  const table = yield* Effect.serviceOption(RoutingTable)
  if (table._tag === "None") {
    return yield* new Problem.ServiceUnavailable({ detail: "This Worker has no routing table to report on" })
  }
  const keys = yield* IdentityKey
  return yield* HealthReport.report(keys.self, table.value.upstreams)
})

/**
 * Checks that the mesh routes `service` and that it has the versions a split
 * names: 404 for a service no route serves, 400 for a version it lacks, 503
 * when the report could not be complete (a proxy that did not answer).
 */
const checkSplit = (service: string, split: Traffic.SplitSettings) =>
  Effect.gen(function*() {
    const report = yield* meshHealth
    const versions = HealthReport.servicesOf(report).get(service)
    if (versions === undefined) {
      const unanswered = Object.entries(report.upstreams ?? {}).filter(([, entry]) => entry.status === "down").map(([name]) => name)
      return yield* unanswered.length > 0
        ? new Problem.ServiceUnavailable({
          detail: `The mesh's routes could not all be read (${unanswered.join(", ")} did not answer); try again`
        })
        : new Problem.NotFound({ detail: `No route serves a service named ${service}` })
    }
    if (versions.length === 0) {
      return yield* Problem.validationFailed([{ path: ["params", "service"], message: `${service} has no versions to split between` }])
    }
    const missing = [
      ...(["stable", "canary"] as const).flatMap((field) => {
        const version = split[field]
        return version !== undefined && !versions.includes(version) ? [{ path: ["payload", field], version }] : []
      }),
      ...Object.keys(split.faults ?? {}).filter((version) => !versions.includes(version)).map((version) => ({ path: ["payload", "faults", version], version }))
    ]
    if (missing.length > 0) {
      return yield* Problem.validationFailed(missing.map(({ path, version }) => ({
        path,
        message: `${service} has no version ${version}; its versions are ${versions.join(", ")}`
      })))
    }
    // Traffic goes only to a version whose probes and readiness checks pass now: a promotion
    // (or a canary weight) that would send users to a version that is down is refused, and says why.
    const receiving = [split.stable, ...(split.canary !== undefined && split.weight > 0 ? [split.canary] : [])]
    for (const version of receiving) {
      const entry = Object.entries(report.upstreams ?? {}).find(([name, candidate]) =>
        name.split("@", 1)[0] === service && candidate.version === version)?.[1]
      if (entry !== undefined && entry.status !== "up") {
        return yield* new Problem.Conflict({
          detail: `${service}@${version} is not ready, so no traffic is sent to it: ${entry.detail ?? "its health check failed"}`
        })
      }
    }
  })

/** A split an admin sets is judged on its own answers: the routers' shared count (ROLLOUTS, when bound) starts afresh. */
const restartCounting = (service: string) =>
  Effect.flatMap(Effect.option(Bindings.durableObject("ROLLOUTS")), (rollouts) =>
    rollouts._tag === "None" ? Effect.void : Traffic.restartCounting(rollouts.value, service))

/** 405 with `Allow`: `allowed` is "<METHODS> <path>", e.g. "GET, PUT /api/admin/traffic/{service}". */
const notAllowed = (allowed: string) =>
  Effect.fail(new Problem.MethodNotAllowed({ allow: allowed.split(" ").slice(0, -1).join(" ").split(", "), detail: allowed }))

/** Answers an `/api/admin/...` request. */
export const meshAdmin = (request: Request, identity: Identity) =>
  Audit.audited(request, identity, answer(request, identity)).pipe(Effect.catchTag("meshwork/ConfigStore/ConfigStoreError", storeDown))

const answer = (request: Request, identity: Identity) =>
  Effect.gen(function*() {
    if (!hasRole(identity, "admin")) return yield* new Problem.Forbidden({ detail: "The admin API requires the admin role" })
    const path = new URL(request.url).pathname.slice(adminPrefix.length)
    const [, section, item, action, ...rest] = path.split("/")
    const method = request.method
    if (rest.length > 0) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })

    switch (section) {
      case "status": {
        if (method !== "GET" || item !== undefined) return yield* notAllowed("GET /api/admin/status")
        const kv = yield* config
        return Response.json({ traffic: yield* Traffic.readAllSplits(kv), flags: yield* FeatureFlags.readFlags(kv) })
      }
      case "audit": {
        if (item !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method !== "GET") return yield* notAllowed("GET /api/admin/audit")
        const limit = Number(new URL(request.url).searchParams.get("limit") ?? "50")
        return Response.json({ entries: yield* Audit.read(yield* config, Number.isInteger(limit) ? limit : 50) }, { headers: { "cache-control": "no-store" } })
      }
      case "live": {
        if (item !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method !== "GET") return yield* notAllowed("GET /api/admin/live")
        const minutes = Number(new URL(request.url).searchParams.get("minutes") ?? "5")
        if (!Number.isInteger(minutes) || minutes < 1 || minutes > 15) {
          return yield* Problem.validationFailed([{ path: ["query", "minutes"], message: "Expected a whole number of minutes from 1 to 15" }])
        }
        const stats = yield* Effect.serviceOption(LiveStats.LiveStats)
        if (stats._tag === "None") {
          return yield* new Problem.NotFound({ detail: "This Worker keeps no live figures (LiveStats.layer and a MESH_STATS binding)" })
        }
        // This Worker's own figures, and those of the Workers it routes to (the router reports what it forwards).
        const table = yield* Effect.serviceOption(RoutingTable)
        const workers = [...new Set([stats.value.name, ...(table._tag === "Some" ? table.value.upstreams.map((upstream) => upstream.service) : [])])]
        const report = yield* MeshStats.readReport(stats.value.namespace, workers, minutes, yield* Clock.currentTimeMillis)
        return Response.json(report, { headers: { "cache-control": "no-store" } })
      }
      case "traces": {
        if (action !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method !== "GET") return yield* notAllowed(item === undefined ? "GET /api/admin/traces" : "GET /api/admin/traces/{traceId}")
        const namespace = yield* Effect.option(Bindings.durableObject("MESH_STATS"))
        if (namespace._tag === "None") {
          return yield* new Problem.NotFound({ detail: "The mesh keeps its traces in the MESH_STATS Durable Object, which this Worker does not bind" })
        }
        const store = namespace.value.get(namespace.value.idFromName(Telemetry.traceStoreName)) as unknown as Pick<MeshStats.MeshStatsObject, "traces" | "trace">
        const unavailable = () => new Problem.ServiceUnavailable({ detail: "The mesh's trace sample could not be read; try again" })
        const noStore = { headers: { "cache-control": "no-store" } }
        if (item !== undefined) {
          const traceId = yield* name(item, TraceId, "traceId")
          const trace = yield* Effect.tryPromise({ try: () => store.trace(traceId), catch: unavailable })
          return trace === undefined
            ? yield* new Problem.NotFound({ detail: `The mesh keeps no trace ${traceId} (it keeps the newest ${maxTraces} of 15 minutes)` })
            : Response.json(trace, noStore)
        }
        const query = new URL(request.url).searchParams
        const limit = Number(query.get("limit") ?? "20")
        if (!Number.isInteger(limit) || limit < 1 || limit > maxTraces) {
          return yield* Problem.validationFailed([{ path: ["query", "limit"], message: `Expected a whole number from 1 to ${maxTraces}` }])
        }
        const traces = yield* Effect.tryPromise({
          try: () => store.traces({ limit, series: query.get("series") ?? undefined, errors: query.get("errors") === "true" }),
          catch: unavailable
        })
        return Response.json({ traces }, noStore)
      }
      case "health": {
        if (item !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method !== "GET") return yield* notAllowed("GET /api/admin/health")
        return HealthReport.toResponse(yield* meshHealth)
      }
      case "traffic": {
        const kv = yield* config
        if (item === undefined) {
          return method === "GET" ? Response.json(yield* Traffic.readAllSplits(kv)) : yield* notAllowed("GET /api/admin/traffic")
        }
        const service = yield* name(item, Traffic.ServiceName, "service")
        if (action === "rollback") {
          if (method !== "POST") return yield* notAllowed("POST /api/admin/traffic/{service}/rollback")
          const rolledBack = yield* Traffic.rollback(kv, service, `manual, by ${identity.kind === "user" ? identity.sub : "?"}`)
          if (rolledBack === undefined) return yield* new Problem.NotFound({ detail: `${service} has no canary to roll back` })
          yield* restartCounting(service)
          yield* Effect.logWarning(`Rolled ${service} back by hand`)
          return Response.json(rolledBack)
        }
        if (action === "mirror") {
          if (method !== "GET") return yield* notAllowed("GET /api/admin/traffic/{service}/mirror")
          // The routers count mirrored requests in each service's RolloutObject, bound here too as ROLLOUTS.
          const rollouts = yield* Effect.option(Bindings.durableObject("ROLLOUTS"))
          if (rollouts._tag === "None") {
            return yield* new Problem.NotFound({ detail: "Mirrored requests are counted in the ROLLOUTS Durable Object, which this Worker does not bind" })
          }
          const report = yield* Traffic.readMirrorReport(rollouts.value, service).pipe(
            Effect.mapError(() => new Problem.ServiceUnavailable({ detail: `${service}'s mirror counts could not be read; try again` }))
          )
          if (report !== undefined) return Response.json(report, { headers: { "cache-control": "no-store" } })
          // Nothing mirrored yet: zero counts for the split's canary, if it has one.
          const split = yield* Traffic.readSplit(kv, service)
          if (split?.canary === undefined) return yield* new Problem.NotFound({ detail: `${service} has no canary to mirror to` })
          return Response.json({ canary: split.canary, matched: 0, mismatched: 0, recent: [] } satisfies Traffic.MirrorReport, {
            headers: { "cache-control": "no-store" }
          })
        }
        if (action !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method === "GET") {
          const split = yield* Traffic.readSplit(kv, service)
          return split === undefined ? yield* new Problem.NotFound({ detail: `${service} has no traffic split` }) : Response.json(split)
        }
        if (method !== "PUT") return yield* notAllowed("GET, PUT /api/admin/traffic/{service}")
        const split = yield* body(request, Traffic.SplitSettings)
        if (split.canary === undefined && split.weight > 0) return yield* invalidPayload("canary", "A weight above 0 needs a canary")
        if (split.canary === split.stable) return yield* invalidPayload("canary", "The canary and the stable version differ")
        if (split.canary === undefined && (split.mirror?.percentage ?? 0) > 0) return yield* invalidPayload("mirror", "Mirroring needs a canary to mirror to")
        yield* checkSplit(service, split)
        yield* Traffic.writeSplit(kv, service, split)
        yield* restartCounting(service)
        return Response.json(split)
      }
      case "flags": {
        const kv = yield* config
        if (item === undefined) {
          return method === "GET" ? Response.json(yield* FeatureFlags.readFlags(kv)) : yield* notAllowed("GET /api/admin/flags")
        }
        if (action !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        const flag = yield* name(item, FeatureFlags.FlagName, "name")
        switch (method) {
          case "GET": {
            const found = yield* FeatureFlags.readFlag(kv, flag)
            return found === undefined ? yield* new Problem.NotFound({ detail: `No flag ${flag}` }) : Response.json(found)
          }
          case "PUT": {
            const value = yield* body(request, FeatureFlags.Flag)
            yield* FeatureFlags.writeFlag(kv, flag, value)
            return Response.json(value)
          }
          case "DELETE":
            yield* FeatureFlags.deleteFlag(kv, flag)
            return new Response(null, { status: 204 })
          default:
            return yield* notAllowed("GET, PUT, DELETE /api/admin/flags/{name}")
        }
      }
      case "cache": {
        if (item !== "purge" || action !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method !== "POST") return yield* notAllowed("POST /api/admin/cache/purge")
        const what = yield* body(request, Purge)
        const cache = yield* Effect.serviceOption(EdgeCache)
        return Response.json({ purged: cache._tag === "Some" ? yield* cache.value.purge(what) : 0 })
      }
      default:
        return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
    }
  })
