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
 * purges its own URL before it is answered, so its writer reads it back. Entries are indexed by tag in a Durable Object
 * (`CacheTagIndexObject`, bound as CACHE_TAGS) when stored. The Cache API is
 * per data center: a purge clears this location; purging every location is
 * Cloudflare's zone purge API, which this does not call.
 */
import { Clock, Config, Context, Effect, Layer, Schema } from "effect"
import * as Bindings from "../runtime/Bindings.ts"
import * as DurableObjects from "../runtime/DurableObjects.ts"
import type { Identity } from "./Identity.ts"
import { matchesPrefix } from "./Routing.ts"
import * as Sharding from "./Sharding.ts"

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
  const swr = seconds(directives.get("stale-while-revalidate")) ?? 0
  const sie = seconds(directives.get("stale-if-error")) ?? 0
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
  params.sort(([a, x], [b, y]) => (a < b ? -1 : a > b ? 1 : x < y ? -1 : x > y ? 1 : 0))
  const query = new URLSearchParams(params).toString()
  return `${url.pathname}${query === "" ? "" : `?${query}`}`
}

const keyBase = "https://edge-cache.meshwork.internal"

/** The Cache API key of a request: normalised URL, encoding, and the user when keys are per user. */
export const cacheKey = (request: Request, route: CacheRoute, identity: Identity): string => {
  const url = normalisedUrl(new URL(request.url), route.dropParams ?? [])
  const user = route.keys === "per-user" && identity.kind !== "anonymous" ? identity.sub : "-"
  return `${keyBase}/${encodeURIComponent(user)}/${encodingOf(request.headers.get("accept-encoding"))}${url}`
}

/** The tag every copy of a URL is indexed under, so it can be purged by URL. */
export const urlTag = (url: string, dropParams: ReadonlyArray<string> = []) => `url:${normalisedUrl(new URL(url, keyBase), dropParams)}`

// The tag index: which cache keys carry a tag.

interface TagTable {
  readonly add: (tag: string, key: string) => void
  readonly take: (tag: string) => Array<string>
}

class TagIndex extends Context.Service<TagIndex, TagTable>()("meshwork/layers/EdgeCache/TagIndex") {
  static readonly layer = Layer.effect(
    TagIndex,
    DurableObjects.State.useSync((state) => {
      const sql = state.storage.sql
      sql.exec("CREATE TABLE IF NOT EXISTS tagged (tag TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tag, key))")
      return TagIndex.of({
        add: (tag, key) => void sql.exec("INSERT OR IGNORE INTO tagged (tag, key) VALUES (?, ?)", tag, key),
        take: (tag) =>
          state.storage.transactionSync(() => {
            const keys = sql.exec<{ key: string }>("SELECT key FROM tagged WHERE tag = ?", tag).toArray().map((row) => row.key)
            sql.exec("DELETE FROM tagged WHERE tag = ?", tag)
            return keys
          })
      })
    })
  )
}

/** Which cache keys carry each tag; one object per tag. Export it and bind it as CACHE_TAGS. */
export class CacheTagIndexObject extends DurableObjects.make({ name: "CacheTagIndexObject", layer: TagIndex.layer }) {
  add(tags: ReadonlyArray<string>, key: string): Promise<void> {
    return this.run(TagIndex.use((index) => Effect.sync(() => tags.forEach((tag) => index.add(tag, key)))))
  }
  take(tag: string): Promise<Array<string>> {
    return this.run(TagIndex.use((index) => Effect.sync(() => index.take(tag))))
  }
}

type TagStub = Pick<CacheTagIndexObject, "add" | "take">

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
}

export class EdgeCache extends Context.Service<EdgeCache, {
  /** The cache route of a request, if it has one. */
  readonly routeFor: (request: Request) => CacheRoute | undefined
  /** Serves `request` through the cache; `fetch` asks the upstream. */
  readonly serve: <E, R>(
    request: Request,
    route: CacheRoute,
    identity: Identity,
    fetch: Effect.Effect<Response, E, R>
  ) => Effect.Effect<Response, E, R | Bindings.Invocation>
  /** Deletes every cached copy of the given URLs and of the entries carrying the given tags; answers how many. */
  readonly purge: (what: { readonly urls?: ReadonlyArray<string>; readonly tags?: ReadonlyArray<string> }) => Effect.Effect<number>
}>()("meshwork/layers/EdgeCache") {
  static readonly make = (options: CacheOptions): EdgeCache["Service"] => {
    const ordered = [...options.routes].sort((a, b) => b.prefix.length - a.prefix.length)
    const cache = options.cache
    /** Keys being revalidated in this isolate. */
    const revalidating = new Set<string>()
    const tagIndex = (tag: string): TagStub | undefined =>
      options.tags === undefined ? undefined : Sharding.objectFor(options.tags, "cache-tag", Sharding.perKey, tag) as unknown as TagStub

    const withStatus = (response: Response, status: CacheStatus, age?: number): Response => {
      const copy = new Response(response.body, response)
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

    /** Stores a copy of `response` if it may be kept; the response to send is returned untouched. */
    const store = (key: string, url: string, route: CacheRoute, response: Response, now: number) =>
      Effect.suspend(() => {
        const kept = freshness(response, route.cacheControl, now)
        if (typeof kept === "string") return Effect.void
        const copy = new Response(response.clone().body, response)
        copy.headers.set(meta.cacheControl, response.headers.get("cache-control") ?? route.cacheControl ?? "")
        copy.headers.set(meta.storedAt, String(kept.storedAt))
        copy.headers.set(meta.freshUntil, String(kept.freshUntil))
        copy.headers.set(meta.swr, String(kept.staleWhileRevalidateUntil))
        copy.headers.set(meta.sie, String(kept.staleIfErrorUntil))
        // The Cache API keeps it as long as any of our windows needs it.
        const keepSeconds = Math.ceil((Math.max(kept.staleWhileRevalidateUntil, kept.staleIfErrorUntil) - now) / 1000)
        copy.headers.set("cache-control", `max-age=${keepSeconds}`)
        const tags = [urlTag(url, route.dropParams), ...tagsOf(response)]
        return Effect.all([
          Effect.promise(() => cache.put(key, copy)),
          Effect.forEach(tags, (tag) => {
            const index = tagIndex(tag)
            return index === undefined ? Effect.void : Effect.promise(() => index.add([tag], key))
          }, { concurrency: "unbounded", discard: true })
        ], { concurrency: "unbounded", discard: true }).pipe(
          Effect.catchCause((cause) => Effect.logWarning("Edge cache store failed", cause))
        )
      })

    /** Fetches and stores under `ctx.waitUntil`, so the client has its answer first. */
    const fetchAndStore = <E, R>(key: string, url: string, route: CacheRoute, fetch: Effect.Effect<Response, E, R>) =>
      Effect.gen(function*() {
        const response = yield* fetch
        const now = yield* Clock.currentTimeMillis
        if (typeof freshness(response, route.cacheControl, now) !== "string") {
          yield* Bindings.waitUntil(store(key, url, route, response.clone(), now))
        }
        return response
      })

    const takeTag = (tag: string) => {
      const index = tagIndex(tag)
      return index === undefined ? Effect.succeed<Array<string>>([]) : Effect.promise(() => index.take(tag))
    }

    const purge = ({ urls = [], tags = [] }: { readonly urls?: ReadonlyArray<string>; readonly tags?: ReadonlyArray<string> }) =>
      Effect.gen(function*() {
        const allTags = [...tags, ...urls.map((url) => {
          const route = ordered.find((candidate) => matchesPrefix(new URL(url, keyBase).pathname, candidate.prefix))
          return urlTag(url, route?.dropParams)
        })]
        const keys = new Set((yield* Effect.forEach(allTags, takeTag, { concurrency: "unbounded" })).flat())
        const deleted = yield* Effect.forEach(keys, (key) => Effect.promise(() => cache.delete(key)), { concurrency: "unbounded" })
        return deleted.filter(Boolean).length
      })

    const serve = <E, R>(request: Request, route: CacheRoute, identity: Identity, fetch: Effect.Effect<Response, E, R>) =>
      Effect.gen(function*() {
        if (!safe.has(request.method)) {
          // A write that succeeded invalidates what is cached for its URL (RFC 9111, 4.4), before it is answered.
          const response = yield* fetch
          if (response.status < 400) yield* purge({ urls: [new URL(request.url).pathname] })
          return response
        }
        if (request.method !== "GET" || (identity.kind !== "anonymous" && route.keys !== "per-user")) {
          return withStatus(yield* fetch, "BYPASS")
        }
        const key = cacheKey(request, route, identity)
        const url = request.url
        const stored = yield* Effect.promise(() => cache.match(key))
        const now = yield* Clock.currentTimeMillis
        if (stored === undefined) return withStatus(yield* fetchAndStore(key, url, route, fetch), "MISS")

        const entry = readFreshness(stored)
        if (now < entry.freshUntil) return fromCache(stored, "HIT", now)
        if (now < entry.staleWhileRevalidateUntil) {
          if (!revalidating.has(key)) {
            revalidating.add(key)
            yield* Bindings.waitUntil(
              Effect.exit(fetch).pipe(
                Effect.flatMap((exit) =>
                  failed(exit)
                    ? Effect.logWarning("Edge cache revalidation failed; the stale entry stays")
                    : Effect.flatMap(Clock.currentTimeMillis, (at) =>
                      exit._tag === "Success" ? store(key, url, route, exit.value, at) : Effect.void)
                ),
                Effect.ensuring(Effect.sync(() => revalidating.delete(key)))
              )
            )
          }
          return fromCache(stored, "STALE", now)
        }
        const exit = yield* Effect.exit(fetchAndStore(key, url, route, fetch))
        if (failed(exit) && now < entry.staleIfErrorUntil) {
          if (exit._tag === "Success") yield* Effect.promise(() => exit.value.body?.cancel() ?? Promise.resolve())
          return fromCache(stored, "STALE", now)
        }
        if (exit._tag === "Failure") return yield* exit
        return withStatus(exit.value, "REVALIDATED")
      })

    return EdgeCache.of({
      routeFor: (request) => {
        const path = new URL(request.url).pathname
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
