/**
 * The mesh's admin API, served by a public Worker under `/api/admin` (admins
 * only; the gateway authenticates and rate limits the request first):
 *
 *   GET    /api/admin/status                      traffic splits and flags
 *   GET    /api/admin/traffic                     every service's split
 *   PUT    /api/admin/traffic/{service}           { stable, canary?, weight, autoRollback? }
 *   POST   /api/admin/traffic/{service}/rollback  weight 0 for the canary (routers follow within their cache time)
 *   GET    /api/admin/flags                       every flag
 *   PUT    /api/admin/flags/{name}                { enabled, percentage, users?, roles? }
 *   DELETE /api/admin/flags/{name}
 *   POST   /api/admin/cache/purge                 { urls?, tags? }
 *
 * Splits and flags live in the `MESH_CONFIG` KV namespace the routers and
 * services read (TrafficManager.ts, FeatureFlags.ts).
 */
import { Effect, Schema } from "effect"
import * as Bindings from "../../runtime/Bindings.ts"
import * as Problem from "../../runtime/Problem.ts"
import { EdgeCache } from "../edge/EdgeCache.ts"
import { hasRole, type Identity } from "../security/Identity.ts"
import * as FeatureFlags from "./FeatureFlags.ts"
import * as Traffic from "./TrafficManager.ts"

export const adminPrefix = "/api/admin"

/** What a purge names: URLs (every user's and encoding's copy) and tags (`Cache-Tag`). */
const Purge = Schema.Struct({
  urls: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isStartingWith("/"))).check(Schema.isMaxLength(1000))),
  tags: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isMinLength(1))).check(Schema.isMaxLength(1000)))
})

const SetSplit = Schema.Struct({
  stable: Traffic.VersionName,
  canary: Schema.optionalKey(Traffic.VersionName),
  weight: Traffic.TrafficSplit.fields.weight,
  autoRollback: Schema.optionalKey(Traffic.AutoRollback)
})

const body = <S extends Schema.Codec<any, any>>(request: Request, schema: S) =>
  Effect.tryPromise({ try: () => request.json(), catch: () => new Problem.BadRequest({ detail: "The body must be JSON" }) }).pipe(
    Effect.flatMap((json) =>
      Schema.decodeUnknownEffect(schema)(json).pipe(Effect.mapError((error) => new Problem.BadRequest({ detail: error.message })))
    )
  ) as Effect.Effect<S["Type"], Problem.BadRequest>

const name = (value: string | undefined, schema: Schema.Codec<string, string>, what: string) =>
  Schema.decodeUnknownEffect(schema)(value).pipe(Effect.mapError(() => new Problem.BadRequest({ detail: `Not a ${what} name: ${value}` })))

/** A configuration store failure, as the admin sees it. */
const storeDown = () => Effect.fail(new Problem.ServiceUnavailable({ detail: "The mesh configuration store failed; try again" }))

const config = Bindings.kv("MESH_CONFIG").pipe(
  Effect.catchTag("meshwork/Bindings/MissingBinding", () =>
    Effect.fail(new Problem.ServiceUnavailable({ detail: "The mesh configuration store (MESH_CONFIG) is not bound" })))
)

/** 405 with `Allow`: `allowed` is "<METHODS> <path>", e.g. "GET, PUT /api/admin/traffic/{service}". */
const notAllowed = (allowed: string) =>
  Effect.fail(new Problem.MethodNotAllowed({ allow: allowed.split(" ").slice(0, -1).join(" ").split(", "), detail: allowed }))

/** Answers an `/api/admin/...` request. */
export const meshAdmin = (request: Request, identity: Identity) =>
  answer(request, identity).pipe(Effect.catchTag("meshwork/ConfigStore/ConfigStoreError", storeDown))

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
          yield* Effect.logWarning(`Rolled ${service} back by hand`)
          return Response.json(rolledBack)
        }
        if (action !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        if (method === "GET") {
          const split = yield* Traffic.readSplit(kv, service)
          return split === undefined ? yield* new Problem.NotFound({ detail: `${service} has no traffic split` }) : Response.json(split)
        }
        if (method !== "PUT") return yield* notAllowed("GET, PUT /api/admin/traffic/{service}")
        const split = yield* body(request, SetSplit)
        if (split.canary === undefined && split.weight > 0) {
          return yield* new Problem.BadRequest({ detail: "A weight above 0 needs a canary" })
        }
        if (split.canary === split.stable) return yield* new Problem.BadRequest({ detail: "The canary and the stable version differ" })
        yield* Traffic.writeSplit(kv, service, split)
        return Response.json(split)
      }
      case "flags": {
        const kv = yield* config
        if (item === undefined) {
          return method === "GET" ? Response.json(yield* FeatureFlags.readFlags(kv)) : yield* notAllowed("GET /api/admin/flags")
        }
        if (action !== undefined) return yield* new Problem.NotFound({ detail: `No admin resource ${path}` })
        const flag = yield* name(item, FeatureFlags.FlagName, "flag")
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
