/**
 * Rate limiting: every store against its real backend in workerd (memory, a
 * Durable Object, a real redis-server, Cloudflare's ratelimits binding), the
 * algorithms on virtual time.
 */
import { expect, it } from "@effect/vitest"
import { describe } from "vitest"
import { env } from "cloudflare:workers"
import { Effect, Exit, Layer } from "effect"
import { TestClock } from "effect/testing"
import { evictDurableObject } from "cloudflare:test"
import { rateLimitKey } from "../../src/layers/security/ClientKey.ts"
import { batchedLimiter, type RateLimitPolicy, RateLimits } from "../../src/layers/security/RateLimits.ts"
import { Redis } from "../../src/runtime/Redis.ts"
import { envLayer } from "../../src/runtime/Worker.ts"
import { hasRedis, redisUrl } from "../helpers.ts"

const limitsWith = (policies: ReadonlyArray<RateLimitPolicy>, vars: Record<string, unknown> = {}) =>
  RateLimits.layer.pipe(
    Layer.provide(envLayer({
      RATE_LIMITS: policies,
      RATE_LIMITER: env.RATE_LIMITER,
      RATE_LIMIT: env.RATE_LIMIT,
      REDIS_URL: redisUrl,
      ...vars
    }))
  )

const policy = (store: NonNullable<RateLimitPolicy["store"]>, overrides: Partial<RateLimitPolicy> = {}): RateLimitPolicy => ({
  name: "burst",
  prefix: "/api",
  limit: 10,
  windowSeconds: 60,
  store,
  ...overrides
})

const burst = (count: number, key: string) =>
  Effect.gen(function*() {
    const limits = yield* RateLimits
    const request = new Request("http://gw/api/things")
    const chosen = limits.policyFor(request)!
    const exits = yield* Effect.forEach(
      Array.from({ length: count }),
      () => Effect.exit(limits.consume(chosen, key)),
      { concurrency: "unbounded" }
    )
    return {
      admitted: exits.filter(Exit.isSuccess).length,
      refused: exits.filter((exit) => Exit.isFailure(exit) && String(exit.cause).includes("TooManyRequests")).length
    }
  })

it.effect.each(([["memory"], ["durable-object"], ["durable-object-batched"], ["redis"], ["cloudflare"]] as const).filter(([store]) => store !== "redis" || hasRedis))(
  "admits exactly N of 2N concurrent requests in a window (%s store)",
  ([store]) =>
    Effect.gen(function*() {
      // All 20 arrive in the same millisecond (virtual time does not move): all are counted.
      const result = yield* burst(20, `client-${crypto.randomUUID()}`)
      expect(result).toEqual({ admitted: 10, refused: 10 })
    }).pipe(Effect.provide(limitsWith([policy(store)])))
)

// A fixed window that resets at 60 s lets a client spend its limit just before and again
// just after the reset. A token bucket refills evenly: right after spending the whole
// limit at 59.9 s, the reset instant brings nothing back.
it.effect("a token bucket allows no double burst across a window boundary", () =>
  Effect.gen(function*() {
    const limits = yield* RateLimits
    const chosen = limits.policyFor(new Request("http://gw/api/x"))!
    const key = "edge-of-window"
    const spend = (n: number) =>
      Effect.map(
        Effect.forEach(Array.from({ length: n }), () => Effect.exit(limits.consume(chosen, key))),
        (exits) => exits.filter(Exit.isSuccess).length
      )
    yield* TestClock.adjust("59900 millis")
    expect(yield* spend(10)).toBe(10) // the whole limit, at the end of a minute
    yield* TestClock.adjust("200 millis")
    expect(yield* spend(10)).toBe(0) // just past where a fixed window would reset
    yield* TestClock.adjust("6 seconds")
    expect(yield* spend(10)).toBe(1) // one token back per 6 s (10 per minute)
  }).pipe(Effect.provide(limitsWith([policy("memory", { algorithm: "token-bucket" })]))))

it.effect("a fixed window resets after its window: the documented double burst", () =>
  Effect.gen(function*() {
    const limits = yield* RateLimits
    const chosen = limits.policyFor(new Request("http://gw/api/x"))!
    const spend = (n: number) =>
      Effect.map(
        Effect.forEach(Array.from({ length: n }), () => Effect.exit(limits.consume(chosen, "fixed"))),
        (exits) => exits.filter(Exit.isSuccess).length
      )
    expect(yield* spend(10)).toBe(10)
    expect(yield* spend(1)).toBe(0)
    yield* TestClock.adjust("60 seconds")
    expect(yield* spend(10)).toBe(10)
  }).pipe(Effect.provide(limitsWith([policy("memory", { algorithm: "fixed-window" })]))))

describe.skipIf(!hasRedis)("the Redis store", () => {
  it.effect.each([["fixed-window"], ["token-bucket"]] as const)(
    "the Redis store admits exactly N of 2N with a refill time that is not whole milliseconds (%s)",
    ([algorithm]) =>
      Effect.gen(function*() {
        // 3 per 10 s: one token every 3333.33 ms.
        expect(yield* burst(6, `fractional-${crypto.randomUUID()}`)).toEqual({ admitted: 3, refused: 3 })
      }).pipe(Effect.provide(limitsWith([policy("redis", { algorithm, limit: 3, windowSeconds: 10 })])))
  )

  it.effect("the Redis store keeps its counters in Redis, expiring on Redis's clock", () =>
    Effect.gen(function*() {
      const key = `redis-${crypto.randomUUID()}`
      const result = yield* burst(15, key)
      expect(result.admitted).toBe(10)
      const redis = Redis.make(redisUrl)
      const ttl = Number(yield* redis.send("PTTL", `meshwork:ratelimit:burst:${key}`))
      expect(ttl).toBeGreaterThan(0)
      expect(ttl).toBeLessThanOrEqual(60_000 + 6_000)
    }).pipe(Effect.provide(limitsWith([policy("redis")]))))

  it.effect("the Redis store admits exactly N through the pooled connections of a Durable Object (REDIS_POOL)", () =>
    Effect.gen(function*() {
      const key = `pooled-${crypto.randomUUID()}`
      expect(yield* burst(25, key)).toEqual({ admitted: 10, refused: 15 })
      // The counter lives in Redis, written through the pool's connections.
      const ttl = Number(yield* Redis.make(redisUrl).send("PTTL", `meshwork:ratelimit:burst:${key}`))
      expect(ttl).toBeGreaterThan(0)
      const pooled = String(yield* Redis.make(redisUrl).send("CLIENT", "LIST"))
        .split("\n").filter((line) => line.includes(" name=meshwork-pool "))
      expect(pooled.length).toBeGreaterThan(0)
      expect(pooled.length).toBeLessThanOrEqual(4)
    }).pipe(Effect.provide(limitsWith([policy("redis")], { REDIS_POOL: env.REDIS_POOL }))))
})

it.effect.each([
  ["open", "lets the request through"],
  ["closed", "refuses it with 503"]
] as const)("when the store is down and the policy fails %s, it %s", ([mode]) =>
  Effect.gen(function*() {
    const limits = yield* RateLimits
    const chosen = limits.policyFor(new Request("http://gw/api/x"))!
    const exit = yield* Effect.exit(limits.consume(chosen, "anyone"))
    if (mode === "open") expect(Exit.isSuccess(exit)).toBe(true)
    else expect(String(Exit.isFailure(exit) && exit.cause)).toContain("ServiceUnavailable")
  }).pipe(Effect.provide(limitsWith([policy("redis", { onStoreError: mode })], { REDIS_URL: "redis://127.0.0.1:1" }))))

it("counts a signed-in client by user, anyone else by address", () => {
  const request = new Request("http://gw/api/x", { headers: { "cf-connecting-ip": "203.0.113.7" } })
  expect(rateLimitKey({ kind: "user", sub: "u1", roles: [] }, request)).toBe("user:u1")
  expect(rateLimitKey({ kind: "anonymous" }, request)).toBe("ip:203.0.113.7")
})

it("counts IPv6 clients by their /64, so rotating through one's own prefix gains nothing", () => {
  const keyOf = (address: string) =>
    rateLimitKey({ kind: "anonymous" }, new Request("http://gw/api/x", { headers: { "cf-connecting-ip": address } }))
  const bucket = "ip:2001:db8:1:2::/64"
  for (const address of ["2001:db8:1:2::1", "2001:0DB8:0001:0002:ffff:ffff:ffff:ffff", "2001:db8:1:2:a:b:c:d", "2001:db8:1:2::1%eth0", "2001:db8:1:2::192.0.2.1"]) {
    expect(keyOf(address)).toBe(bucket)
  }
  expect(keyOf("2001:db8:1:3::1")).toBe("ip:2001:db8:1:3::/64")
  expect(keyOf("2001:db8::1")).toBe("ip:2001:db8:0:0::/64")
  expect(keyOf("::1")).toBe("ip:0:0:0:0::/64")
  // IPv4-mapped IPv6 is the IPv4 address; IPv4 and anything else stay as they are.
  expect(keyOf("::ffff:203.0.113.7")).toBe("ip:203.0.113.7")
  expect(keyOf("::ffff:cb00:7107")).toBe("ip:203.0.113.7")
  expect(keyOf("203.0.113.7")).toBe("ip:203.0.113.7")
  expect(keyOf("1::2::3")).toBe("ip:1::2::3")
  expect(keyOf("2001:db8:1:2:3:4:5:6:7")).toBe("ip:2001:db8:1:2:3:4:5:6:7")
  expect(rateLimitKey({ kind: "anonymous" }, new Request("http://gw/api/x"))).toBe("ip:unknown")
})

it.effect.each([["token-bucket"], ["fixed-window"]] as const)("the Durable Object store forgets no count when its object is evicted (%s)", ([algorithm]) =>
  Effect.gen(function*() {
    const key = `evicted-${crypto.randomUUID()}`
    const first = yield* burst(6, key)
    expect(first).toEqual({ admitted: 6, refused: 0 })
    // Every key has its own object, named by the policy and the key.
    yield* Effect.promise(() => evictDurableObject(env.RATE_LIMITER.get(env.RATE_LIMITER.idFromName(`burst:${key}`))))
    expect(yield* burst(6, key)).toEqual({ admitted: 4, refused: 2 })
  }).pipe(Effect.provide(limitsWith([policy("durable-object", { algorithm })]))))

describe("the batched Durable Object store", () => {
  /** The RATE_LIMITER namespace, counting the calls made to its objects. */
  const counted = () => {
    const counter = { calls: 0 }
    const namespace = {
      idFromName: (name: string) => env.RATE_LIMITER.idFromName(name),
      get: (id: DurableObjectId) => {
        const stub = env.RATE_LIMITER.get(id) as unknown as { tokenBucket: (...args: Array<unknown>) => Promise<unknown> }
        return {
          tokenBucket: (...args: Array<unknown>) => {
            counter.calls++
            return stub.tokenBucket(...args)
          }
        }
      }
    } as unknown as DurableObjectNamespace
    return { counter, namespace }
  }
  const hundred = policy("durable-object-batched", { limit: 100, windowSeconds: 3600 })
  const send = (limiter: ReturnType<typeof batchedLimiter>, client: string) =>
    Effect.map(Effect.exit(limiter(hundred, client)), Exit.isSuccess)

  it.live("admits exactly the limit from one isolate, calling its object about once per tenth of the limit", () =>
    Effect.gen(function*() {
      const { counter, namespace } = counted()
      const limiter = batchedLimiter(namespace)
      const client = `batched-${crypto.randomUUID()}`
      let admitted = 0
      for (let n = 0; n < 150; n++) if (yield* send(limiter, client)) admitted++
      expect(admitted).toBe(100)
      // The first request, then every tenth let through (and once a second): not a call per request.
      expect(counter.calls).toBeLessThanOrEqual(15)
    }))

  it.live("keeps a client within a tenth of its limit per isolate across two isolates, and the count survives eviction", () =>
    Effect.gen(function*() {
      const { counter, namespace } = counted()
      const isolates = [batchedLimiter(namespace), batchedLimiter(namespace)]
      const client = `batched-${crypto.randomUUID()}`
      let admitted = 0
      for (let n = 0; n < 300; n++) if (yield* send(isolates[n % 2]!, client)) admitted++
      // Counted per isolate, each would admit 100; shared, at most a tenth more per isolate.
      expect(admitted).toBeGreaterThanOrEqual(100)
      expect(admitted).toBeLessThanOrEqual(120)
      expect(counter.calls).toBeLessThan(60)
      // The bucket lives in the object's storage: evicted, a fresh isolate still finds it spent.
      yield* Effect.promise(() => evictDurableObject(env.RATE_LIMITER.get(env.RATE_LIMITER.idFromName(`burst:${client}`))))
      expect(yield* send(batchedLimiter(namespace), client)).toBe(false)
    }))
})
