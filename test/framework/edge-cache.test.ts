/**
 * The edge cache (src/layers/edge/EdgeCache.ts) over the real Cache API, on
 * virtual time, with an upstream the tests control; then the gateway's
 * cache of product reads, through the mesh.
 */
import { expect, it } from "@effect/vitest"
import { listDurableObjectIds, runInDurableObject } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Context, Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { describe } from "vitest"
import {
  type CacheRoute,
  defaultTagShards,
  EdgeCache,
  freshness,
  makeTagIndex,
  normalisedUrl,
  purgeMemoryMillis,
  sweepMillis,
  tagIndexPrefix
} from "../../src/layers/edge/EdgeCache.ts"
import type { Identity } from "../../src/layers/security/Identity.ts"
import * as Sharding from "../../src/layers/state/Sharding.ts"
import { Invocation } from "../../src/runtime/Bindings.ts"
import { unique } from "../helpers.ts"

const anonymous: Identity = { kind: "anonymous" }
const ada: Identity = { kind: "user", sub: "ada", roles: ["user"] }
const bob: Identity = { kind: "user", sub: "bob", roles: ["user"] }

interface Upstream {
  calls: number
  /** The body of the next answers, when not `body <n>`. */
  body?: (() => BodyInit) | undefined
  /** What the next calls answer: a status and headers, or a failure. */
  answer: { readonly status: number; readonly headers: Record<string, string> } | "unreachable"
}

const swr = "max-age=10, stale-while-revalidate=20, stale-if-error=60"

/** A cache over a fresh Cache API cache, an upstream that counts its calls, and the background work to await. */
const setup = (routes: ReadonlyArray<CacheRoute> = [{ prefix: "/p", keys: "per-user", dropParams: ["utm_source"] }]) =>
  Effect.gen(function*() {
    const cache = yield* Effect.promise(() => caches.open(`edge-${unique()}`))
    const edge = EdgeCache.make({ routes, cache, tags: env.CACHE_TAGS })
    const upstream: Upstream = { calls: 0, answer: { status: 200, headers: { "cache-control": swr } } }
    const background: Array<Promise<unknown>> = []
    const invocation = Context.make(Invocation, { waitUntil: (promise) => void background.push(promise) })
    /** The requests the upstream got. */
    const seen: Array<Request> = []
    const fetch = (request: Request) => Effect.suspend(() => {
      seen.push(request)
      upstream.calls++
      const answer = upstream.answer
      if (answer === "unreachable") return Effect.fail("unreachable" as const)
      return Effect.succeed(new Response(upstream.body?.() ?? `body ${upstream.calls}`, { status: answer.status, headers: answer.headers }))
    })
    /** One GET through the cache: its X-Cache and body. */
    const get = (path: string, identity: Identity = ada, headers: Record<string, string> = {}) =>
      Effect.gen(function*() {
        const request = new Request(`https://mesh.test${path}`, { headers })
        const route = edge.routeFor(request)!
        const response = yield* edge.serve(request, route, identity, fetch).pipe(Effect.provideContext(invocation))
        return { status: response.status, cache: response.headers.get("x-cache"), body: yield* Effect.promise(() => response.text()), response }
      })
    const settle = Effect.promise(async () => {
      while (background.length > 0) await Promise.all(background.splice(0))
    })
    return { edge, upstream, get, settle, fetch, invocation, seen }
  })

const at = (seconds: number) => TestClock.setTime(1_000_000_000_000 + seconds * 1000)

describe("edge cache on controlled time", () => {
  it.effect("serves fresh as HIT, stale at once with exactly one revalidation, then the new copy", () =>
    Effect.gen(function*() {
      const { upstream, get, settle } = yield* setup()
      yield* at(0)
      expect(yield* get("/p/1")).toMatchObject({ cache: "MISS", body: "body 1" })
      yield* settle
      yield* at(5)
      const hit = yield* get("/p/1")
      expect(hit).toMatchObject({ cache: "HIT", body: "body 1" })
      expect(hit.response.headers.get("age")).toBe("5")
      // The client sees the upstream's Cache-Control, not the cache's bookkeeping.
      expect(hit.response.headers.get("cache-control")).toBe(swr)
      expect([...hit.response.headers.keys()].filter((name) => name.startsWith("x-meshwork"))).toEqual([])
      expect(upstream.calls).toBe(1)

      yield* at(15)
      expect(yield* get("/p/1")).toMatchObject({ cache: "STALE", body: "body 1" })
      yield* settle
      expect(upstream.calls).toBe(2)
      expect(yield* get("/p/1")).toMatchObject({ cache: "HIT", body: "body 2" })
      expect(upstream.calls).toBe(2)
    }))

  it.effect("revalidates once for 20 concurrent stale requests", () =>
    Effect.gen(function*() {
      const { upstream, get, settle } = yield* setup()
      yield* at(0)
      yield* get("/p/2")
      yield* settle
      yield* at(12)
      const answers = yield* Effect.all(Array.from({ length: 20 }, () => get("/p/2")), { concurrency: "unbounded" })
      expect(answers.every((answer) => answer.cache === "STALE" && answer.body === "body 1")).toBe(true)
      yield* settle
      expect(upstream.calls).toBe(2)
    }))

  it.effect("serves stale while the upstream fails, within stale-if-error, then the error", () =>
    Effect.gen(function*() {
      const { upstream, get, settle, edge, fetch, invocation } = yield* setup()
      yield* at(0)
      yield* get("/p/3")
      yield* settle
      // A failing revalidation in the background keeps the stale entry.
      upstream.answer = { status: 503, headers: {} }
      yield* at(20)
      expect(yield* get("/p/3")).toMatchObject({ cache: "STALE", body: "body 1" })
      yield* settle
      // Past stale-while-revalidate: fetched at once; failing, the entry is served within stale-if-error.
      yield* at(40)
      expect(yield* get("/p/3")).toMatchObject({ cache: "STALE", body: "body 1" })
      upstream.answer = "unreachable"
      yield* at(69)
      expect(yield* get("/p/3")).toMatchObject({ cache: "STALE", body: "body 1" })
      // Past stale-if-error: the failure itself.
      yield* at(71)
      const request = new Request("https://mesh.test/p/3")
      const failed = yield* Effect.flip(edge.serve(request, edge.routeFor(request)!, ada, fetch).pipe(Effect.provideContext(invocation)))
      expect(failed).toBe("unreachable")
      upstream.answer = { status: 503, headers: {} }
      expect(yield* get("/p/3")).toMatchObject({ status: 503, cache: "REVALIDATED" })
      // And once the upstream is back, a new copy.
      upstream.answer = { status: 200, headers: { "cache-control": swr } }
      expect(yield* get("/p/3")).toMatchObject({ cache: "REVALIDATED", status: 200 })
      yield* settle
      expect(yield* get("/p/3")).toMatchObject({ cache: "HIT" })
    }))

  it.effect("never keeps private, no-store, Set-Cookie, non-200 or Vary: Cookie answers", () =>
    Effect.gen(function*() {
      const { upstream, get, settle } = yield* setup()
      yield* at(0)
      const refused: Array<Record<string, string>> = [
        { "cache-control": "private, max-age=60" },
        { "cache-control": "no-store" },
        { "cache-control": "max-age=60", "set-cookie": "session=1" },
        { "cache-control": "max-age=60", vary: "Cookie" },
        {}
      ]
      for (const [i, headers] of refused.entries()) {
        upstream.answer = { status: 200, headers }
        expect((yield* get(`/p/refused-${i}`)).cache).toBe("MISS")
        yield* settle
        expect((yield* get(`/p/refused-${i}`)).cache).toBe("MISS")
      }
      upstream.answer = { status: 404, headers: { "cache-control": "max-age=60" } }
      yield* get("/p/missing")
      yield* settle
      expect((yield* get("/p/missing")).cache).toBe("MISS")
      expect(upstream.calls).toBe(refused.length * 2 + 2)
    }))

  it.effect("caches an authenticated request only on a per-user route, one copy per user", () =>
    Effect.gen(function*() {
      const { upstream, get, settle } = yield* setup([{ prefix: "/shared" }, { prefix: "/mine", keys: "per-user" }])
      yield* at(0)
      expect((yield* get("/shared/x", ada)).cache).toBe("BYPASS")
      expect((yield* get("/shared/x", ada)).cache).toBe("BYPASS")
      expect((yield* get("/shared/x", anonymous)).cache).toBe("MISS")
      yield* settle
      expect((yield* get("/shared/x", anonymous)).cache).toBe("HIT")

      expect((yield* get("/mine/x", ada)).cache).toBe("MISS")
      yield* settle
      expect(yield* get("/mine/x", ada)).toMatchObject({ cache: "HIT", body: "body 4" })
      expect((yield* get("/mine/x", bob)).cache).toBe("MISS")
      expect(upstream.calls).toBe(5)
    }))

  it.effect("normalises keys: sorted query, dropped parameters, one copy per accepted encoding", () =>
    Effect.gen(function*() {
      const { upstream, get, settle } = yield* setup()
      upstream.answer = { status: 200, headers: { "cache-control": "max-age=60", vary: "Accept-Encoding" } }
      yield* at(0)
      expect((yield* get("/p/q?b=2&a=1", ada, { "accept-encoding": "gzip" })).cache).toBe("MISS")
      yield* settle
      expect((yield* get("/p/q?a=1&utm_source=mail&b=2", ada, { "accept-encoding": "gzip, deflate" })).cache).toBe("HIT")
      expect((yield* get("/p/q?a=1&b=2", ada, { "accept-encoding": "br, gzip" })).cache).toBe("MISS")
      expect((yield* get("/p/q?a=1&b=3", ada, { "accept-encoding": "gzip" })).cache).toBe("MISS")
      expect(upstream.calls).toBe(3)
      // Sorted by name; a parameter's values keep their order.
      expect(normalisedUrl(new URL("https://x/p?z=1&a=2&a=1&utm_source=y"), ["utm_source"])).toBe("/p?a=2&a=1&z=1")
    }))

  it.effect("purges by URL (every user's copy) and by tag, and a successful write purges its URL", () =>
    Effect.gen(function*() {
      const { edge, upstream, get, settle, invocation } = yield* setup()
      upstream.answer = { status: 200, headers: { "cache-control": "max-age=60", "cache-tag": "products, product:7" } }
      yield* at(0)
      yield* get("/p/7", ada)
      yield* get("/p/7", bob)
      yield* get("/p/8", ada)
      yield* settle
      expect(yield* edge.purge({ urls: ["/p/7"] })).toBe(2)
      expect((yield* get("/p/7", ada)).cache).toBe("MISS")
      expect((yield* get("/p/8", ada)).cache).toBe("HIT")
      yield* settle
      expect(yield* edge.purge({ tags: ["products"] })).toBe(2)
      expect((yield* get("/p/8", ada)).cache).toBe("MISS")
      yield* settle

      const write = new Request("https://mesh.test/p/8", { method: "PATCH" })
      yield* edge.serve(write, edge.routeFor(write)!, ada, () => Effect.succeed(new Response(null, { status: 204 }))).pipe(
        Effect.provideContext(invocation)
      )
      expect((yield* get("/p/8", ada)).cache).toBe("MISS")
    }))
})

describe("edge cache revalidation and purges", () => {
  it.effect("revalidates without the client's conditional headers, and drops a copy the upstream no longer has", () =>
    Effect.gen(function*() {
      const { upstream, get, settle, seen } = yield* setup()
      yield* at(0)
      yield* get("/p/cond")
      yield* settle
      yield* at(15)
      expect((yield* get("/p/cond", ada, { "if-none-match": '"old"', range: "bytes=0-1" })).cache).toBe("STALE")
      yield* settle
      expect(seen.at(-1)!.headers.get("if-none-match")).toBeNull()
      expect(seen.at(-1)!.headers.get("range")).toBeNull()

      upstream.answer = { status: 404, headers: {} }
      yield* at(27)
      expect((yield* get("/p/cond")).cache).toBe("STALE")
      yield* settle
      expect((yield* get("/p/cond")).cache).toBe("MISS")
    }))

  it.effect("never serves a must-revalidate answer stale", () =>
    Effect.gen(function*() {
      const { upstream, get, settle } = yield* setup()
      upstream.answer = { status: 200, headers: { "cache-control": "max-age=10, must-revalidate, stale-while-revalidate=60, stale-if-error=60" } }
      yield* at(0)
      yield* get("/p/strict")
      yield* settle
      yield* at(11)
      upstream.answer = { status: 503, headers: {} }
      expect(yield* get("/p/strict")).toMatchObject({ cache: "REVALIDATED", status: 503 })
    }))

  it.effect("drops a copy fetched before a purge that it would otherwise have outlived", () =>
    Effect.gen(function*() {
      const { edge, get, settle, upstream } = yield* setup()
      // The upstream's body arrives only when the test says: the copy cannot be stored before.
      let release: () => void = () => {}
      upstream.body = () =>
        new ReadableStream({
          start: (controller) => {
            release = () => {
              controller.enqueue(new TextEncoder().encode("old"))
              controller.close()
            }
          }
        })
      yield* at(0)
      const miss = yield* get("/p/race").pipe(Effect.forkChild)
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
      // The purge comes while the copy is on its way into the cache.
      yield* at(1)
      yield* edge.purge({ urls: ["/p/race"] })
      release()
      expect((yield* Fiber.join(miss)).cache).toBe("MISS")
      yield* settle
      upstream.body = undefined
      expect((yield* get("/p/race")).cache).toBe("MISS")
      yield* settle
      expect((yield* get("/p/race")).cache).toBe("HIT")
    }))
})

describe("the tag index stays bounded", () => {
  /** The tag index's objects that exist now (workerd keeps one for every object ever started). */
  const objects = Effect.promise(async () => new Set((await listDurableObjectIds(env.CACHE_TAGS)).map((id) => id.toString())))
  const shardIds = new Set(
    Sharding.allObjectNames(tagIndexPrefix, Sharding.shards(defaultTagShards)).map((name) => env.CACHE_TAGS.idFromName(name).toString())
  )
  const shard = (n: number) => env.CACHE_TAGS.get(env.CACHE_TAGS.idFromName(`${tagIndexPrefix}/${n}`))
  /** Rows of the index, in every shard, whose tag matches `like`. */
  const rows = (like: string) =>
    Effect.promise(async () => {
      let total = 0
      for (let n = 0; n < defaultTagShards; n++) {
        total += await runInDurableObject(shard(n), (_, state) =>
          state.storage.sql.exec<{ n: number }>("SELECT count(*) AS n FROM entries WHERE tag LIKE ?", like).one().n)
      }
      return total
    })

  it.effect("indexes 400 reads of random query strings in at most 16 objects, and forgets them when they expire", () =>
    Effect.gen(function*() {
      const { edge, upstream, get, settle } = yield* setup()
      const product = `bounded-${unique()}`
      upstream.answer = { status: 200, headers: { "cache-control": "max-age=60", "cache-tag": `product:${product}` } }
      yield* at(0)
      const before = yield* objects
      yield* Effect.forEach(Array.from({ length: 400 }, () => crypto.randomUUID()), (query) =>
        Effect.andThen(get(`/p/${product}?q=${query}`), settle), { concurrency: 50 })
      const created = [...(yield* objects)].filter((id) => !before.has(id))
      // At most the shards, whatever the number of URLs and tags (before: one object per tag, 401 here).
      expect(created.every((id) => shardIds.has(id))).toBe(true)
      expect(created.length).toBeLessThanOrEqual(defaultTagShards)
      // Each copy is indexed under its URL and its product's tag, and purges still find every copy.
      expect(yield* rows(`url:/p/${product}?%`)).toBe(400)
      expect(yield* rows(`product:${product}`)).toBe(400)
      expect(yield* edge.purge({ urls: [`/p/${product}?q=nope`] })).toBe(0)
      expect(yield* edge.purge({ tags: [`product:${product}`] })).toBe(400)
      expect(yield* rows(`product:${product}`)).toBe(0)

      // The copies live a minute; every shard holding their rows has its alarm set by then, and the
      // alarm's sweep, once the minute is over (on the objects' clocks), leaves none of them.
      const expired = Date.now() + 60_000
      for (let n = 0; n < defaultTagShards; n++) {
        yield* Effect.promise(() =>
          runInDurableObject(shard(n), (_, state) =>
            Effect.runPromise(Effect.gen(function*() {
              const held = state.storage.sql.exec<{ n: number }>("SELECT count(*) AS n FROM entries WHERE tag LIKE ?", `url:/p/${product}?%`)
                .one().n
              const alarm = yield* Effect.promise(() => state.storage.getAlarm())
              if (held > 0) expect(alarm).not.toBeNull()
              if (alarm !== null) expect(alarm).toBeLessThanOrEqual(expired + sweepMillis)
              yield* TestClock.setTime(expired + 1)
              yield* makeTagIndex(state).sweep
            }).pipe(Effect.provide(TestClock.layer())))
          )
        )
      }
      expect(yield* rows(`url:/p/${product}?%`)).toBe(0)
    }), { timeout: 120_000 })

  it.effect("remembers a purge for a bounded time, and then refuses copies fetched before it", () =>
    Effect.gen(function*() {
      const stub = env.CACHE_TAGS.get(env.CACHE_TAGS.idFromName(`purge-memory-${unique()}`))
      yield* Effect.promise(() =>
        runInDurableObject(stub, (_, state) =>
          Effect.runPromise(Effect.gen(function*() {
            // The object's own clock, an hour ahead: its real alarm stays out of the way.
            const start = Math.ceil(Date.now() / 1000) * 1000 + 3_600_000
            yield* TestClock.setTime(start)
            const index = makeTagIndex(state)
            const count = (table: string) => state.storage.sql.exec<{ n: number }>(`SELECT count(*) AS n FROM ${table}`).one().n
            expect(yield* index.add("t", "a", start - 1_000, start + 59_000)).toBe(true)
            expect(yield* index.purge("t", start)).toEqual(["a"])
            // Fetched before the purge, stored after it: dropped. Fetched after: kept.
            expect(yield* index.add("t", "b", start - 1, start + 59_999)).toBe(false)
            expect(yield* index.add("t", "c", start + 1, start + 60_001)).toBe(true)
            expect({ entries: count("entries"), purges: count("purges") }).toEqual({ entries: 3, purges: 1 })
            expect(yield* Effect.promise(() => state.storage.getAlarm())).toBe(start + 60_000 + sweepMillis)

            yield* TestClock.adjust(60_001)
            yield* index.sweep
            expect({ entries: count("entries"), purges: count("purges") }).toEqual({ entries: 0, purges: 1 })
            expect(yield* Effect.promise(() => state.storage.getAlarm())).toBe(start + purgeMemoryMillis + sweepMillis)
            yield* TestClock.adjust(purgeMemoryMillis)
            yield* index.sweep
            expect({ entries: count("entries"), purges: count("purges") }).toEqual({ entries: 0, purges: 0 })
            expect(yield* Effect.promise(() => state.storage.getAlarm())).toBeNull()
            // The purge is forgotten, not its effect: a copy fetched before it (of any tag of the shard, since
            // the shard no longer knows which) is refused; one fetched after it is kept.
            expect(yield* index.add("t", "d", start - 1, start + 60_000)).toBe(false)
            expect(yield* index.add("other", "e", start - 1, start + 60_000)).toBe(false)
            expect(yield* index.add("other", "f", start, start + 60_000)).toBe(true)
            const now = start + 60_001 + purgeMemoryMillis
            expect(yield* index.add("t", "g", now, now + 60_000)).toBe(true)
          }).pipe(Effect.provide(TestClock.layer())))
        )
      )
    }))
})

describe("freshness", () => {
  it("reads s-maxage over max-age, and the stale windows", () => {
    const response = (cacheControl: string) => new Response("x", { headers: { "cache-control": cacheControl } })
    expect(freshness(response("max-age=10, s-maxage=20, stale-while-revalidate=5"), undefined, 0)).toEqual({
      storedAt: 0,
      freshUntil: 20_000,
      staleWhileRevalidateUntil: 25_000,
      staleIfErrorUntil: 20_000
    })
    expect(freshness(response("max-age=0"), undefined, 0)).toBe("no freshness")
    expect(freshness(response("no-cache, max-age=10"), undefined, 0)).toBe("no-cache")
    expect(freshness(new Response("x"), "max-age=5", 0)).toMatchObject({ freshUntil: 5_000 })
  })
})

