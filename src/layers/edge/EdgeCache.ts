/**
 * An edge cache over the Cache API, with the stale-while-revalidate and
 * stale-if-error the Cache API itself ignores.
 *
 * ```toml
 * # the gateway's wrangler.toml
 * CACHE_ROUTES = [
 *   { prefix = "/api/products", keys = "per-user", dropParams = ["utm_source", "utm_medium"] },
 * ]
 * ```
 *
 * Freshness comes from the upstream's `Cache-Control` (`s-maxage`, else
 * `max-age`; `stale-while-revalidate`; `stale-if-error`), else from the
 * route's `cacheControl`. For a GET on a cached route:
 *
 * - fresh entry: served (`X-Cache: HIT`);
 * - stale, within `stale-while-revalidate`: served at once (`STALE`), and
 *   revalidated under `ctx.waitUntil`, one revalidation per key at a time in
 *   an isolate;
 * - older: fetched again (`REVALIDATED`); if the upstream fails (unreachable,
 *   timed out, 5xx) and the entry is within `stale-if-error`, the entry is
 *   served (`STALE`), else the error;
 * - none: fetched (`MISS`).
 *
 * Never stored: responses other than 200, with `Set-Cookie`, `no-store`,
 * `private`, `no-cache`, no freshness, or a `Vary` on anything but
 * `Accept-Encoding`. A request with an identity is served from the cache only
 * when its route has `keys = "per-user"` (the user's id is part of the key);
 * others pass through (`X-Cache: BYPASS`). Keys are normalised: query
 * parameters sorted, the route's `dropParams` removed, and the
 * `Accept-Encoding` reduced to br, gzip or identity.
 *
 * Purge: by URL (every user's and encoding's copy) or by tag (the upstream's
 * `Cache-Tag` header). A write (POST, PUT, PATCH, DELETE) that succeeds
 * purges its own URL before it is answered, so its writer reads it back. Entries are indexed by tag when stored,
 * in Durable Objects (`CacheTagIndexObject`, bound as CACHE_TAGS) over which
 * tags are sharded by hash; an index entry expires with its copy, and a purge
 * is remembered for `purgeMemoryMillis`, so the index stays bounded. The Cache API is
 * per data center: a purge clears this location; purging every location is
 * Cloudflare's zone purge API, which this does not call.
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import type { Identity } from "../security/Identity.ts"
import { matchesPrefix } from "../routing/RoutingTable.ts"
import * as Sharding from "../state/Sharding.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as Editable from "../../runtime/Editable.ts"
import { pathOf } from "../../runtime/Url.ts"
import * as LiveStats from "../observability/LiveStats.ts"

/** Edge cache lookups by result (HIT, STALE, MISS, BYPASS...): the hit ratio is HIT+STALE over all. */
export const cacheResults = Metric.counter("meshwork.cache.requests", {
  description: "Edge cache lookups by result",
  incremental: true
})

export const CacheRoute = Schema.Struct({
  prefix: Schema.String.check(Schema.isStartingWith("/")),
  /** `shared`: anonymous requests only; `per-user`: the user's id is part of the key. */
  keys: Schema.optionalKey(Schema.Literals(["shared", "per-user"])),
  /** Query parameters left out of the key (tracking parameters and the like). */
  dropParams: Schema.optionalKey(Schema.Array(Schema.String)),
  /** Used when the upstream sends no `Cache-Control`. */
  cacheControl: Schema.optionalKey(Schema.String)
})
export type CacheRoute = typeof CacheRoute.Type

export type CacheStatus = "HIT" | "MISS" | "STALE" | "REVALIDATED" | "BYPASS"

export const header = "x-cache"

const safe = new Set(["GET", "HEAD", "OPTIONS"])

/** Where an entry stands, in epoch milliseconds. */
interface Freshness {
  readonly storedAt: number
  readonly freshUntil: number
  readonly staleWhileRevalidateUntil: number
  readonly staleIfErrorUntil: number
}

const meta = {
  storedAt: "x-meshwork-cache-stored-at",
  freshUntil: "x-meshwork-cache-fresh-until",
  swr: "x-meshwork-cache-swr-until",
  sie: "x-meshwork-cache-sie-until",
  cacheControl: "x-meshwork-cache-control"
} as const

/** The directives of a `Cache-Control` header, lower-cased, `true` for those without a value. */
export const parseCacheControl = (value: string | null): ReadonlyMap<string, string | true> => {
  const directives = new Map<string, string | true>()
  for (const part of (value ?? "").split(",")) {
    const [name, ...rest] = part.split("=")
    const key = name?.trim().toLowerCase()
    if (key === undefined || key === "") continue
    const argument = rest.join("=").trim().replace(/^"(.*)"$/, "$1")
    directives.set(key, rest.length === 0 ? true : argument)
  }
  return directives
}

const seconds = (value: string | true | undefined): number | undefined => {
  if (typeof value !== "string" || !/^\d{1,10}$/.test(value)) return undefined
  return Number(value)
}

/** How long a response may be kept, or why it may not. */
export const freshness = (response: Response, routeDefault: string | undefined, now: number): Freshness | string => {
  if (response.status !== 200) return `status ${response.status}`
  if (response.headers.has("set-cookie")) return "Set-Cookie"
  const vary = (response.headers.get("vary") ?? "").split(",").map((name) => name.trim().toLowerCase()).filter((name) => name !== "")
  if (vary.some((name) => name !== "accept-encoding")) return `Vary: ${vary.join(", ")}`
  const directives = parseCacheControl(response.headers.get("cache-control") ?? routeDefault ?? null)
  for (const refused of ["no-store", "private", "no-cache"]) if (directives.has(refused)) return refused
  const maxAge = seconds(directives.get("s-maxage")) ?? seconds(directives.get("max-age"))
  if (maxAge === undefined || maxAge === 0) return "no freshness"
  const freshUntil = now + maxAge * 1000
  // must-revalidate: never served stale, whatever else the header says.
  const strict = directives.has("must-revalidate") || directives.has("proxy-revalidate")
  const swr = strict ? 0 : seconds(directives.get("stale-while-revalidate")) ?? 0
  const sie = strict ? 0 : seconds(directives.get("stale-if-error")) ?? 0
  return {
    storedAt: now,
    freshUntil,
    staleWhileRevalidateUntil: freshUntil + swr * 1000,
    staleIfErrorUntil: freshUntil + sie * 1000
  }
}

const encodingOf = (acceptEncoding: string | null): string => {
  const accepted = (acceptEncoding ?? "").toLowerCase()
  return accepted.includes("br") ? "br" : accepted.includes("gzip") ? "gzip" : "identity"
}

/** The normalised URL of a request: its path and its sorted query, without the dropped parameters. */
export const normalisedUrl = (url: URL, dropParams: ReadonlyArray<string>): string => {
  const params = [...url.searchParams].filter(([name]) => !dropParams.includes(name))
  // By name only: a parameter's values keep their order (upstreams may read the first).
  params.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  const query = new URLSearchParams(params).toString()
  return `${url.pathname}${query === "" ? "" : `?${query}`}`
}

const keyBase = "https://edge-cache.meshwork.internal"

/** The Cache API key of a request: normalised URL, encoding, and the user when keys are per user. */
export const cacheKey = (request: Request, route: CacheRoute, identity: Identity): string => {
  const url = normalisedUrl(new URL(request.url), route.dropParams ?? [])
  const user = route.keys === "per-user" && identity.kind !== "anonymous" ? `${identity.kind}:${identity.sub}` : "-"
  return `${keyBase}/${encodeURIComponent(user)}/${encodingOf(request.headers.get("accept-encoding"))}${url}`
}

/** The tag every copy of a URL is indexed under, so it can be purged by URL. */
export const urlTag = (url: string, dropParams: ReadonlyArray<string> = []) => `url:${normalisedUrl(new URL(url, keyBase), dropParams)}`

// The tag index: which cache keys carry a tag, and when the tag was last purged.

/** How many objects hold the tag index by default: tags are hashed onto `cache-tags/<shard>`. */
export const defaultTagShards = 16

/**
 * How long a purge is remembered. The memory matters only for a copy fetched
 * before the purge and stored after it, and a store follows its fetch within
 * seconds (it runs under `waitUntil`, which ends 30 s after the response).
 * Once a shard forgets a purge, a copy fetched before it is dropped, whatever
 * its tags (the shard can no longer tell whether it was purged).
 */
export const purgeMemoryMillis = 10 * 60_000

/** Expired rows are deleted by the alarm at most this long after they expire, many at a time. */
export const sweepMillis = 5_000

/** The tag index of one shard, over its SQLite storage. Time is Effect's `Clock` (the object's own clock). */
export interface TagIndexTable {
  /**
   * Indexes `key` under `tag` for as long as the copy lives (`expiresAt -
   * fetchedAt`, from now); answers false when the tag was purged after
   * `fetchedAt` (the copy is older than the purge: drop it).
   */
  readonly add: (tag: string, key: string, fetchedAt: number, expiresAt: number) => Effect.Effect<boolean>
  /** Marks the tag purged at `at` (the caller's clock, as `fetchedAt`), and answers the keys to delete. */
  readonly purge: (tag: string, at: number) => Effect.Effect<Array<string>>
  /** Forgets keys whose copies were deleted. */
  readonly forget: (tag: string, keys: ReadonlyArray<string>) => Effect.Effect<void>
  /** Deletes expired entries and purges past their memory, and sets the alarm for the next: the alarm handler. */
  readonly sweep: Effect.Effect<void>
}

/**
 * Rows: one per (tag, cached copy), kept until the copy expires; one per
 * purged tag, kept for `purgeMemoryMillis`; and the horizon, the latest purge
 * forgotten: a copy fetched before it may have been purged, so it is refused.
 */
export const makeTagIndex = (state: DurableObjectState): TagIndexTable => {
  const storage = state.storage
  const sql = storage.sql
  sql.exec(`CREATE TABLE IF NOT EXISTS entries (
    tag TEXT NOT NULL, key TEXT NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (tag, key))`)
  sql.exec("CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at)")
  sql.exec("CREATE TABLE IF NOT EXISTS purges (tag TEXT PRIMARY KEY, purged_at INTEGER NOT NULL, forget_at INTEGER NOT NULL)")
  sql.exec("CREATE INDEX IF NOT EXISTS purges_by_expiry ON purges (forget_at)")
  sql.exec("CREATE TABLE IF NOT EXISTS horizon (id INTEGER PRIMARY KEY CHECK (id = 0), purged_at INTEGER NOT NULL)")
  const purgedAt = (tag: string) =>
    sql.exec<{ purged_at: number }>("SELECT purged_at FROM purges WHERE tag = ?", tag).toArray()[0]?.purged_at ?? 0
  const horizon = () => sql.exec<{ purged_at: number }>("SELECT purged_at FROM horizon WHERE id = 0").toArray()[0]?.purged_at ?? 0
  /** Makes sure the alarm runs by `at` plus the sweep interval, so one alarm deletes many rows. */
  const sweepBy = (at: number) =>
    Effect.promise(async () => {
      const current = await storage.getAlarm()
      if (current === null || current > at + sweepMillis) await storage.setAlarm(at + sweepMillis)
    })
  const now = Clock.currentTimeMillis
  return {
    add: (tag, key, fetchedAt, expiresAt) =>
      Effect.flatMap(now, (now) => {
        // The copy lives `expiresAt - fetchedAt` from its put, just before this: counted on this object's clock.
        const until = now + Math.max(0, expiresAt - fetchedAt)
        const current = storage.transactionSync(() => {
          sql.exec(
            "INSERT INTO entries (tag, key, expires_at) VALUES (?, ?, ?) ON CONFLICT (tag, key) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)",
            tag,
            key,
            until
          )
          return purgedAt(tag) <= fetchedAt && horizon() <= fetchedAt
        })
        return Effect.as(sweepBy(until), current)
      }),
    purge: (tag, at) =>
      Effect.flatMap(now, (now) => {
        const forgetAt = now + purgeMemoryMillis
        const keys = storage.transactionSync(() => {
          sql.exec(
            `INSERT INTO purges (tag, purged_at, forget_at) VALUES (?, ?, ?) ON CONFLICT (tag) DO UPDATE
               SET purged_at = MAX(purged_at, excluded.purged_at), forget_at = MAX(forget_at, excluded.forget_at)`,
            tag,
            at,
            forgetAt
          )
          return sql.exec<{ key: string }>("SELECT key FROM entries WHERE tag = ? AND expires_at >= ?", tag, now).toArray().map((row) => row.key)
        })
        return Effect.as(sweepBy(forgetAt), keys)
      }),
    forget: (tag, keys) =>
      Effect.sync(() =>
        storage.transactionSync(() => {
          for (const key of keys) sql.exec("DELETE FROM entries WHERE tag = ? AND key = ?", tag, key)
        })
      ),
    sweep: Effect.flatMap(now, (now) => {
      const next = storage.transactionSync(() => {
        sql.exec("DELETE FROM entries WHERE expires_at < ?", now)
        const forgotten = sql.exec<{ at: number | null }>("SELECT MAX(purged_at) AS at FROM purges WHERE forget_at <= ?", now).one().at
        if (forgotten !== null) {
          sql.exec(
            "INSERT INTO horizon (id, purged_at) VALUES (0, ?) ON CONFLICT (id) DO UPDATE SET purged_at = MAX(purged_at, excluded.purged_at)",
            forgotten
          )
          sql.exec("DELETE FROM purges WHERE forget_at <= ?", now)
        }
        return sql.exec<{ next: number | null }>(
          "SELECT MIN(at) AS next FROM (SELECT MIN(expires_at) AS at FROM entries UNION ALL SELECT MIN(forget_at) FROM purges)"
        ).one().next
      })
      return Effect.promise(() => next === null ? storage.deleteAlarm() : storage.setAlarm(next + sweepMillis))
    })
  }
}

class TagIndex extends Context.Service<TagIndex, TagIndexTable>()("meshwork/layers/edge/EdgeCache/TagIndex") {
  static readonly layer = Layer.effect(TagIndex, DurableObjects.State.useSync(makeTagIndex))
}

/**
 * Which cache keys carry each tag; tags are hashed onto a fixed number of
 * these objects, and entries expire with their copies (by alarm). Export it
 * and bind it as CACHE_TAGS.
 */
export class CacheTagIndexObject extends DurableObjects.make({
  name: "CacheTagIndexObject",
  layer: TagIndex.layer,
  alarm: () => TagIndex.use((index) => index.sweep)
}) {
  add(tag: string, key: string, fetchedAt: number, expiresAt: number): Promise<boolean> {
    return this.run(TagIndex.use((index) => index.add(tag, key, fetchedAt, expiresAt)))
  }
  purge(tag: string, at: number): Promise<Array<string>> {
    return this.run(TagIndex.use((index) => index.purge(tag, at)))
  }
  forget(tag: string, keys: ReadonlyArray<string>): Promise<void> {
    return this.run(TagIndex.use((index) => index.forget(tag, keys)))
  }
}

/** The tag index objects' names: `cache-tags/<shard>`. */
export const tagIndexPrefix = "cache-tags"

type TagStub = Pick<CacheTagIndexObject, "add" | "purge" | "forget">

/** Request headers a revalidation must not carry: it wants the whole, current representation. */
const conditionalHeaders = ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"]

/** The request without its conditional and range headers. */
export const unconditional = (request: Request): Request => {
  if (!conditionalHeaders.some((name) => request.headers.has(name))) return request
  const copy = new Request(request)
  for (const name of conditionalHeaders) copy.headers.delete(name)
  return copy
}

/** How long a revalidation may take before another may start. */
const revalidationMillis = 30_000

/** The tags of a response: its `Cache-Tag` header, comma separated. */
const tagsOf = (response: Response): Array<string> =>
  (response.headers.get("cache-tag") ?? "").split(",").map((tag) => tag.trim()).filter((tag) => tag !== "" && tag.length <= 256)

/** An upstream failure, as stale-if-error sees it: a 5xx answer or a failed fetch. */
const failed = (exit: { readonly _tag: "Success"; readonly value: Response } | { readonly _tag: "Failure" }) =>
  exit._tag === "Failure" || exit.value.status >= 500

export interface CacheOptions {
  readonly routes: ReadonlyArray<CacheRoute>
  readonly cache: Cache
  /** The tag index; without it, purges by URL and by tag find nothing. */
  readonly tags?: DurableObjectNamespace | undefined
  /** How many objects the tag index is sharded over (`cache-tags/<shard>`). Default `defaultTagShards` (16). */
  readonly tagShards?: number | undefined
}

export class EdgeCache extends Context.Service<EdgeCache, {
  /** The cache route of a request, if it has one. */
  readonly routeFor: (request: Request) => CacheRoute | undefined
  /** Serves `request` through the cache; `fetch` asks the upstream for a request (the client's, or a revalidation). */
  readonly serve: <E, R>(
    request: Request,
    route: CacheRoute,
    identity: Identity,
    fetch: (request: Request) => Effect.Effect<Response, E, R>
  ) => Effect.Effect<Response, E, R | Bindings.Invocation>
  /**
   * Deletes every cached copy of the given URLs (path and exact query) and of
   * the entries carrying the given tags, in this data center; answers how many.
   */
  readonly purge: (what: { readonly urls?: ReadonlyArray<string>; readonly tags?: ReadonlyArray<string> }) => Effect.Effect<number>
}>()("meshwork/layers/edge/EdgeCache") {
  static readonly make = (options: CacheOptions): EdgeCache["Service"] => {
    const ordered = [...options.routes].sort((a, b) => b.prefix.length - a.prefix.length)
    const cache = options.cache
    /** Keys being revalidated in this isolate, with when it started. */
    const revalidating = new Map<string, number>()
    const shards = Sharding.shards(options.tagShards ?? defaultTagShards)
    const tagIndex = (tag: string): TagStub | undefined =>
      options.tags === undefined ? undefined : Sharding.objectFor(options.tags, tagIndexPrefix, shards, tag) as unknown as TagStub
    /** A Cache API or tag index call: its failure is logged and becomes `fallback`, never the request's failure. */
    const attempt = <A>(what: string, f: () => Promise<A>, fallback: A) =>
      Effect.tryPromise(f).pipe(
        Effect.catch((error) => Effect.as(Effect.logWarning(`Edge cache: ${what} failed`, error), fallback))
      )

    const withStatus = (response: Response, status: CacheStatus, age?: number): Response => {
      const copy = Editable.response(response)
      copy.headers.set(header, status)
      if (age !== undefined) copy.headers.set("age", String(Math.max(0, Math.floor(age / 1000))))
      return copy
    }

    /** The cached copy as the client sees it: its own Cache-Control back, our bookkeeping gone. */
    const fromCache = (stored: Response, status: CacheStatus, now: number): Response => {
      const copy = withStatus(stored, status, now - Number(stored.headers.get(meta.storedAt)))
      const original = copy.headers.get(meta.cacheControl)
      if (original === null || original === "") copy.headers.delete("cache-control")
      else copy.headers.set("cache-control", original)
      for (const name of Object.values(meta)) copy.headers.delete(name)
      return copy
    }

    const readFreshness = (stored: Response): Freshness => ({
      storedAt: Number(stored.headers.get(meta.storedAt)),
      freshUntil: Number(stored.headers.get(meta.freshUntil)),
      staleWhileRevalidateUntil: Number(stored.headers.get(meta.swr)),
      staleIfErrorUntil: Number(stored.headers.get(meta.sie))
    })

    const urlTagOf = (url: string) => {
      const route = ordered.find((candidate) => matchesPrefix(new URL(url, keyBase).pathname, candidate.prefix))
      return urlTag(url, route?.dropParams)
    }

    /**
     * Stores `response` (a copy of which the client gets), kept as `kept` says.
     * The copy is put first and indexed after: a purge of one of its tags
     * since `fetchedAt` either finds it in the index, or makes the index
     * answer that it is too old, and it is deleted here.
     */
    const store = (key: string, url: string, route: CacheRoute, response: Response, fetchedAt: number, kept: Freshness) =>
      Effect.gen(function*() {
        const copy = new Response(response.body, response)
        copy.headers.set(meta.cacheControl, response.headers.get("cache-control") ?? route.cacheControl ?? "")
        copy.headers.set(meta.storedAt, String(kept.storedAt))
        copy.headers.set(meta.freshUntil, String(kept.freshUntil))
        copy.headers.set(meta.swr, String(kept.staleWhileRevalidateUntil))
        copy.headers.set(meta.sie, String(kept.staleIfErrorUntil))
        // The Cache API keeps it as long as any of our windows needs it.
        const expiresAt = Math.max(kept.freshUntil, kept.staleWhileRevalidateUntil, kept.staleIfErrorUntil)
        copy.headers.set("cache-control", `max-age=${Math.ceil((expiresAt - fetchedAt) / 1000)}`)
        yield* attempt("put", () => cache.put(key, copy), undefined)
        const tags = [urlTag(url, route.dropParams), ...tagsOf(response)]
        const current = yield* Effect.forEach(tags, (tag) => {
          const index = tagIndex(tag)
          return index === undefined ? Effect.succeed(true) : attempt("index", () => index.add(tag, key, fetchedAt, expiresAt), false)
        }, { concurrency: "unbounded" })
        if (current.includes(false)) yield* attempt("delete", () => cache.delete(key), false)
      })

    /** Stores `response` if it may be kept at all (a revalidation's answer). */
    const storeIfKept = (key: string, url: string, route: CacheRoute, response: Response, fetchedAt: number) => {
      const kept = freshness(response, route.cacheControl, fetchedAt)
      return typeof kept === "string" ? Effect.void : store(key, url, route, response, fetchedAt, kept)
    }

    /** Fetches; a response that may be kept is stored under `ctx.waitUntil`, so the client has its answer first. */
    const fetchAndStore = <E, R>(key: string, url: string, route: CacheRoute, fetch: Effect.Effect<Response, E, R>) =>
      Effect.gen(function*() {
        const fetchedAt = yield* Clock.currentTimeMillis
        const response = yield* fetch
        const kept = freshness(response, route.cacheControl, fetchedAt)
        if (typeof kept !== "string") yield* Bindings.waitUntil(store(key, url, route, response.clone(), fetchedAt, kept))
        return response
      })

    const purge = ({ urls = [], tags = [] }: { readonly urls?: ReadonlyArray<string>; readonly tags?: ReadonlyArray<string> }) =>
      Effect.gen(function*() {
        const at = yield* Clock.currentTimeMillis
        const counts = yield* Effect.forEach([...tags, ...urls.map(urlTagOf)], (tag) => {
          const index = tagIndex(tag)
          if (index === undefined) return Effect.succeed(0)
          return Effect.gen(function*() {
            const keys = yield* attempt("purge", () => index.purge(tag, at), [])
            // Copies first, index rows after: a key whose delete failed stays indexed for the next purge.
            const deleted = yield* Effect.forEach(
              keys,
              (key) => Effect.map(attempt("delete", () => cache.delete(key), undefined), (existed) => ({ key, existed })),
              { concurrency: 16 }
            )
            const done = deleted.filter((result) => result.existed !== undefined)
            if (done.length > 0) yield* attempt("forget", () => index.forget(tag, done.map((result) => result.key)), undefined)
            return done.filter((result) => result.existed === true).length
          })
        }, { concurrency: "unbounded" })
        return counts.reduce((sum, count) => sum + count, 0)
      })

    const serve = <E, R>(
      request: Request,
      route: CacheRoute,
      identity: Identity,
      fetch: (request: Request) => Effect.Effect<Response, E, R>
    ) =>
      Effect.gen(function*() {
        if (!safe.has(request.method)) {
          // A write that succeeded invalidates what is cached for its URL (RFC 9111, 4.4), before it is answered.
          const response = yield* fetch(request)
          if (response.status < 400) yield* purge({ urls: [new URL(request.url).pathname] })
          return response
        }
        if (request.method !== "GET" || (identity.kind !== "anonymous" && route.keys !== "per-user")) {
          return withStatus(yield* fetch(request), "BYPASS")
        }
        const key = cacheKey(request, route, identity)
        const url = request.url
        // A cache that cannot be read is a miss, not a failure.
        const stored = yield* attempt("match", () => cache.match(key), undefined)
        const now = yield* Clock.currentTimeMillis
        if (stored === undefined) return withStatus(yield* fetchAndStore(key, url, route, fetch(request)), "MISS")

        const entry = readFreshness(stored)
        if (now < entry.freshUntil) return fromCache(stored, "HIT", now)
        const refresh = fetch(unconditional(request))
        if (now < entry.staleWhileRevalidateUntil) {
          const started = revalidating.get(key)
          if (started === undefined || now - started > revalidationMillis) {
            revalidating.set(key, now)
            yield* Bindings.waitUntil(
              Effect.exit(refresh).pipe(
                Effect.flatMap((exit) => {
                  if (exit._tag === "Success" && (exit.value.status === 404 || exit.value.status === 410)) {
                    // Gone upstream: so is the copy.
                    return attempt("delete", () => cache.delete(key), false)
                  }
                  return failed(exit)
                    ? Effect.logWarning("Edge cache revalidation failed; the stale entry stays")
                    : exit._tag === "Success"
                    ? storeIfKept(key, url, route, exit.value, now)
                    : Effect.void
                }),
                Effect.timeout(revalidationMillis),
                Effect.ensuring(Effect.sync(() => revalidating.delete(key)))
              )
            )
          }
          return fromCache(stored, "STALE", now)
        }
        const exit = yield* Effect.exit(fetchAndStore(key, url, route, refresh))
        if (failed(exit) && now < entry.staleIfErrorUntil) {
          if (exit._tag === "Success") yield* Effect.promise(() => exit.value.body?.cancel() ?? Promise.resolve())
          return fromCache(stored, "STALE", now)
        }
        if (exit._tag === "Failure") return yield* exit
        return withStatus(exit.value, "REVALIDATED")
      }).pipe(Effect.tap((response) => {
        const status = response.headers.get(header)
        if (status === null) return Effect.void
        return Effect.all([
          Telemetry.event("cache.lookup", { "meshwork.cache.result": status, "meshwork.cache.route": route.prefix }),
          Telemetry.record(cacheResults, 1, { result: status }),
          LiveStats.count("cache", status)
        ], { discard: true })
      }))

    return EdgeCache.of({
      routeFor: (request) => {
        const path = pathOf(request.url)
        return ordered.find((route) => matchesPrefix(path, route.prefix))
      },
      serve,
      purge
    })
  }

  /** The gateway's cache: `CACHE_ROUTES` (default none), the Cache API's default cache, tags in CACHE_TAGS. */
  static readonly layer = Layer.effect(
    EdgeCache,
    Effect.gen(function*() {
      const routes = yield* Config.schema(Schema.Array(CacheRoute), "CACHE_ROUTES").pipe(Config.withDefault([]))
      const tags = yield* Effect.option(Bindings.durableObject("CACHE_TAGS"))
      return EdgeCache.make({ routes, cache: caches.default, tags: tags._tag === "Some" ? tags.value : undefined })
    })
  )
}
