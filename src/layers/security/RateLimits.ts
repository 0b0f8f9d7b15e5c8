/**
 * Rate limiting at the gateway, per client and per route, on Effect's
 * `RateLimiter` (`effect/persistence`).
 *
 * Policies are the gateway's `RATE_LIMITS` var; the first whose prefix (and
 * methods, if given) matches a request applies:
 *
 * ```toml
 * RATE_LIMITS = [
 *   { name = "login", prefix = "/api/auth/login", methods = ["POST"], limit = 10, windowSeconds = 60, store = "durable-object", onStoreError = "closed" },
 *   { name = "api", prefix = "/api", limit = 600, windowSeconds = 60 },
 * ]
 * ```
 *
 * - The client is the verified user (`user:<id>`), else the caller's address
 *   (`ip:<CF-Connecting-IP>`), IPv6 addresses by their /64.
 * - `algorithm`: `token-bucket` (default: `limit` tokens refilled evenly over
 *   the window, so no burst doubles at a window boundary) or `fixed-window`
 *   (the window starts at a client's first request; a client can spend
 *   `limit` at the end of one window and `limit` again at the start of the
 *   next).
 * - `store`: `memory` (per isolate; Workers run many isolates, so the limit
 *   holds per isolate), `durable-object` (one object per client and policy:
 *   exact across isolates and locations; counters live in the object's
 *   storage, so an eviction forgets none), `durable-object-batched` (the same
 *   objects, a token bucket, but each isolate decides locally between calls:
 *   it calls a client's object once a second, or once it has let a tenth of
 *   the limit through, so a client's limit holds across isolates within a
 *   tenth of it per isolate, without a call per request), `redis` (`REDIS_URL`; atomic Lua scripts on Redis's own clock),
 *   or `cloudflare` (a `ratelimits` binding named by `binding`: Cloudflare's
 *   own limiter, per location and approximate, which gives no remaining
 *   count; its limit and period are set on the binding).
 * - `onStoreError`: `open` (default: let the request through) or `closed`
 *   (refuse it with 503) when the store fails or does not answer within
 *   500 ms.
 * - A request that fails authentication is still counted, against its
 *   address: bad tokens cannot bypass the limit.
 *
 * Responses under a policy carry `RateLimit-Policy` and `RateLimit` (IETF
 * draft-ietf-httpapi-ratelimit-headers); a refused request gets 429
 * problem+json with `Retry-After`.
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { identity } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schema from "effect/Schema"
import * as RateLimiter from "effect/persistence/RateLimiter"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Problem from "../../runtime/Problem.ts"
import { Redis } from "../../runtime/Redis.ts"
import { matchesPrefix, PathPrefix } from "../routing/RoutingTable.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import { pathOf } from "../../runtime/Url.ts"
import * as LiveStats from "../observability/LiveStats.ts"

/** Requests refused by a rate limit, by limit name. */
export const rateLimitRejections = Metric.counter("meshwork.ratelimit.rejections", {
  description: "Requests refused by a rate limit",
  incremental: true
})

export const RateLimitPolicy = Schema.Struct({
  name: Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,31}$/)),
  prefix: PathPrefix,
  methods: Schema.optionalKey(Schema.Array(Schema.Literals(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))),
  limit: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 })),
  windowSeconds: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 86_400 })),
  algorithm: Schema.optionalKey(Schema.Literals(["token-bucket", "fixed-window"])),
  store: Schema.optionalKey(Schema.Literals(["memory", "durable-object", "durable-object-batched", "redis", "cloudflare"])),
  /** The binding a store needs: a `ratelimits` binding, or the Durable Object namespace (default RATE_LIMITER). */
  binding: Schema.optionalKey(Schema.String.check(Schema.isPattern(/^[A-Z][A-Z0-9_]*$/))),
  onStoreError: Schema.optionalKey(Schema.Literals(["open", "closed"]))
})
export type RateLimitPolicy = typeof RateLimitPolicy.Type

/** What a limited request learned: for the `RateLimit` headers. */
export interface RateLimitDecision {
  readonly policy: RateLimitPolicy
  /** Requests left in the window; unknown with the `cloudflare` store. */
  readonly remaining: number | undefined
  readonly resetSeconds: number
}

/** `RateLimit-Policy` and `RateLimit` header values (draft-ietf-httpapi-ratelimit-headers). */
export const rateLimitHeaders = (decision: RateLimitDecision): Record<string, string> => ({
  "ratelimit-policy": `"${decision.policy.name}";q=${decision.policy.limit};w=${decision.policy.windowSeconds}`,
  ratelimit: decision.remaining === undefined
    ? `"${decision.policy.name}";t=${decision.resetSeconds}`
    : `"${decision.policy.name}";r=${Math.max(0, Math.floor(decision.remaining))};t=${decision.resetSeconds}`
})

// ---------------------------------------------------------------------------
// Stores beyond Effect's in-memory one
// ---------------------------------------------------------------------------

const storeError = (message: string, cause?: unknown) =>
  new RateLimiter.RateLimiterError({ reason: new RateLimiter.RateLimitStoreError({ message, cause }) })

/** Adaptive limiting (learning limits from responses) is not offered by these stores. */
const noAdaptive = {
  adaptiveConsume: () => Effect.succeed({ delay: Duration.zero, epoch: 0, phase: "inactive" as const }),
  adaptiveFeedback: () => Effect.void
}

/**
 * A Durable Object per key (bound as RATE_LIMITER; the gateway exports it),
 * counting in its own storage, so an eviction or restart forgets no count.
 * Each call is one synchronous read and write of the object's SQLite-backed
 * key-value storage: atomic under any number of concurrent callers.
 */
export class RateLimiterObject extends DurableObjects.make({
  name: "RateLimiterObject",
  layer: Layer.empty
}) {
  /** A fixed window: `[count after this call (or what it would be, when refused), ms until the window ends]`. */
  fixedWindow(key: string, tokens: number, refillMillis: number, limit: number | undefined): Promise<readonly [number, number]> {
    return this.run(DurableObjects.State.useSync((state) => {
      const kv = state.storage.kv
      const now = Date.now()
      const stored = kv.get<{ count: number; endsAt: number }>(key)
      const counter = stored === undefined || stored.endsAt <= now ? { count: 0, endsAt: now } : stored
      if (limit !== undefined && counter.count + tokens > limit) return [counter.count + tokens, counter.endsAt - now] as const
      const next = { count: counter.count + tokens, endsAt: counter.endsAt + refillMillis * tokens }
      kv.put(key, next)
      return [next.count, next.endsAt - now] as const
    }))
  }

  /** A token bucket refilled one token per `refillMillis`: `[tokens left after this call, ms since the last refill]`. */
  tokenBucket(key: string, tokens: number, refillMillis: number, limit: number, allowOverflow: boolean): Promise<readonly [number, number]> {
    return this.run(DurableObjects.State.useSync((state) => {
      const kv = state.storage.kv
      const now = Date.now()
      const bucket = kv.get<{ tokens: number; lastRefill: number }>(key) ?? { tokens: limit, lastRefill: now }
      const refills = Math.floor((now - bucket.lastRefill) / refillMillis)
      if (refills > 0) {
        bucket.tokens = Math.min(limit, bucket.tokens + refills)
        bucket.lastRefill += refills * refillMillis
      }
      if (bucket.tokens >= limit) bucket.lastRefill = now
      const left = bucket.tokens - tokens
      if (allowOverflow || left >= 0) bucket.tokens = left
      kv.put(key, bucket)
      return [left, Math.max(0, now - bucket.lastRefill)] as const
    }))
  }
}

type RateLimiterStub = Pick<RateLimiterObject, "fixedWindow" | "tokenBucket">

/** A store whose keys each live in their own Durable Object: exact across every isolate. */
export const durableObjectStore = (namespace: DurableObjectNamespace): RateLimiter.RateLimiterStore["Service"] => {
  const stub = (key: string) => namespace.get(namespace.idFromName(key)) as unknown as RateLimiterStub
  const call = <A>(f: () => Promise<A>) =>
    Effect.tryPromise({ try: f, catch: (cause) => storeError("The rate limit object did not answer", cause) })
  return RateLimiter.RateLimiterStore.of({
    fixedWindow: (o) =>
      call(() => stub(o.key).fixedWindow(o.key, o.tokens, Duration.toMillis(o.refillRate), o.limit)),
    tokenBucket: (o) =>
      call(() => stub(o.key).tokenBucket(o.key, o.tokens, Duration.toMillis(o.refillRate), o.limit, o.allowOverflow)),
    ...noAdaptive
  })
}

/**
 * Fixed window on Redis, as Effect's own Redis store does it: the counter's
 * time to live grows by the refill time per token, so expiry is Redis's clock.
 */
const fixedWindowLua = `
local current = tonumber(redis.call("GET", KEYS[1]))
local tokens = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
if not current then
  local ttl = math.max(1, math.ceil(refill * tokens))
  redis.call("SET", KEYS[1], tokens, "PX", ttl)
  return { tostring(tokens), ttl }
end
local ttl = tonumber(redis.call("PTTL", KEYS[1]))
if ttl < 0 then ttl = 0 end
local next = current + tokens
if limit and next > limit then return { tostring(next), ttl } end
ttl = math.max(1, math.ceil(ttl + refill * tokens))
redis.call("SET", KEYS[1], next, "PX", ttl)
return { tostring(next), ttl }
`

/**
 * Token bucket on Redis, read and written in one script, timed by Redis's own
 * clock (TIME), never the Workers' (Effect's Redis store takes the caller's).
 */
const tokenBucketLua = `
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local tokens = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local overflow = ARGV[4] == "1"
local current = tonumber(redis.call("GET", KEYS[1])) or limit
local last = tonumber(redis.call("GET", KEYS[2])) or now
local added = math.floor((now - last) / refill)
if added > 0 then
  current = math.min(limit, current + added)
  last = last + added * refill
end
if current >= limit then last = now end
local next = current - tokens
local stored = current
if next >= 0 or overflow then stored = next end
local ttl = math.max(1, math.ceil(math.ceil(limit - stored) * refill - (now - last) + refill))
redis.call("SET", KEYS[1], stored, "PX", ttl)
redis.call("SET", KEYS[2], last, "PX", ttl)
return { tostring(next), math.max(0, now - last) }
`

const pair = (reply: unknown): readonly [number, number] => {
  if (!Array.isArray(reply) || reply.length !== 2) throw new Error(`Unexpected script reply ${JSON.stringify(reply)}`)
  return [Number(reply[0]), Number(reply[1])]
}

/** A store in Redis: one atomic script per decision, so a parallel burst cannot slip between a read and a write. */
export const redisStore = (redis: Redis["Service"], prefix = "meshwork:ratelimit:"): RateLimiter.RateLimiterStore["Service"] => {
  const run = (script: string, keys: ReadonlyArray<string>, args: ReadonlyArray<string>) =>
    redis.eval(script, keys, args).pipe(
      Effect.flatMap((reply) => Effect.try({ try: () => pair(reply), catch: (cause) => storeError("Unexpected Redis reply", cause) })),
      Effect.catchTag("meshwork/Redis/RedisError", (error) => Effect.fail(storeError(`Redis: ${error.message}`, error)))
    )
  return RateLimiter.RateLimiterStore.of({
    fixedWindow: (o) =>
      run(fixedWindowLua, [`${prefix}${o.key}`], [
        String(o.tokens),
        String(Duration.toMillis(o.refillRate)),
        ...(o.limit === undefined ? [] : [String(o.limit)])
      ]),
    tokenBucket: (o) =>
      run(tokenBucketLua, [`${prefix}${o.key}`, `${prefix}${o.key}:refill`], [
        String(o.tokens),
        String(Duration.toMillis(o.refillRate)),
        String(o.limit),
        o.allowOverflow ? "1" : "0"
      ]),
    ...noAdaptive
  })
}

// ---------------------------------------------------------------------------
// The gateway's limiter
// ---------------------------------------------------------------------------

type Limiter = (policy: RateLimitPolicy, key: string) => Effect.Effect<RateLimitDecision, RateLimiter.RateLimiterError>

/** How long a store may take to decide before the policy's `onStoreError` applies. */
export const storeTimeoutMillis = 500

const withStoreTimeout = (policy: RateLimitPolicy) =>
  Effect.timeoutOrElse({
    duration: Duration.millis(storeTimeoutMillis),
    orElse: () => Effect.fail(storeError(`The ${policy.store} store did not answer in time`))
  })

/**
 * Effect's in-memory store, bounded: it keeps counters for at most `maxKeys`
 * clients (Effect's never forgets one), then starts afresh. A public gateway
 * sees unbounded distinct addresses; the limit it keeps is per isolate anyway.
 */
export const boundedMemoryStore = (maxKeys = 50_000): Effect.Effect<RateLimiter.RateLimiterStore["Service"]> =>
  Effect.gen(function*() {
    const fresh = Effect.provide(RateLimiter.RateLimiterStore, RateLimiter.layerStoreMemory)
    let store = yield* fresh
    const keys = new Set<string>()
    const using = <A, E>(key: string, f: (store: RateLimiter.RateLimiterStore["Service"]) => Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        if (keys.has(key) || keys.size < maxKeys) {
          keys.add(key)
          return f(store)
        }
        keys.clear()
        keys.add(key)
        return Effect.flatMap(fresh, (next) => f(store = next))
      })
    return RateLimiter.RateLimiterStore.of({
      fixedWindow: (o) => using(o.key, (s) => s.fixedWindow(o)),
      tokenBucket: (o) => using(o.key, (s) => s.tokenBucket(o)),
      ...noAdaptive
    })
  })

const effectLimiter = (store: RateLimiter.RateLimiterStore["Service"]): Effect.Effect<Limiter> =>
  Effect.map(Effect.provideService(RateLimiter.make, RateLimiter.RateLimiterStore, store), (limiter) =>
    (policy, key) =>
      Effect.map(
        limiter.consume({
          key: `${policy.name}:${key}`,
          limit: policy.limit,
          window: Duration.seconds(policy.windowSeconds),
          algorithm: policy.algorithm ?? "token-bucket",
          onExceeded: "fail"
        }),
        (result): RateLimitDecision => ({
          policy,
          remaining: result.remaining,
          resetSeconds: Math.ceil(Duration.toSeconds(result.resetAfter))
        })
      ))

/** Cloudflare's `ratelimits` binding: allowed or not, nothing more. */
const cloudflareLimiter = (binding: RateLimit): Limiter => (policy, key) =>
  Effect.tryPromise({
    try: () => binding.limit({ key: `${policy.name}:${key}` }),
    catch: (cause) => storeError("The ratelimits binding did not answer", cause)
  }).pipe(
    Effect.flatMap(({ success }) =>
      success
        ? Effect.succeed<RateLimitDecision>({ policy, remaining: undefined, resetSeconds: policy.windowSeconds })
        : Effect.fail(
          new RateLimiter.RateLimiterError({
            reason: new RateLimiter.RateLimitExceeded({
              key,
              retryAfter: Duration.seconds(policy.windowSeconds),
              limit: policy.limit,
              remaining: 0
            })
          })
        )
    )
  )

/** A batched client's bucket as this isolate knows it. */
interface Batched {
  /** Tokens left in the object's bucket at the last call (after what it was told), possibly below 0. */
  left: number
  /** When the last call answered. */
  at: number
  /** Requests let through here since then, not yet told to the object. */
  pending: number
}

/** A batched bucket's refusal: `left` tokens (below 1) refill one per `refillMillis`. */
const batchedRefusal = (policy: RateLimitPolicy, client: string, left: number, refillMillis: number) =>
  Effect.fail(
    new RateLimiter.RateLimiterError({
      reason: new RateLimiter.RateLimitExceeded({
        key: client,
        retryAfter: Duration.millis(Math.ceil((1 - left) * refillMillis)),
        limit: policy.limit,
        remaining: 0
      })
    })
  )

/** How often a batched bucket calls its object at most, while a client keeps sending. */
export const batchSyncMillis = 1000

/**
 * `durable-object-batched`: each client's token bucket lives in its
 * RateLimiterObject (in storage, shared by every isolate), and this isolate
 * decides from what the object said at the last call, refilled since, less
 * what it let through since. It calls the object (spending what it let
 * through, and the request at hand) on a client's first request, then at
 * most once a second, and whenever it has let a tenth of the limit through
 * since the last call. The object is told every request let through, so an
 * isolate can overshoot a client's limit by at most a tenth of it before it
 * learns what the others spent. Keeps at most `maxKeys` clients per isolate.
 */
export const batchedLimiter = (namespace: DurableObjectNamespace, maxKeys = 50_000): Limiter => {
  const buckets = new Map<string, Batched>()
  const stub = (key: string) => namespace.get(namespace.idFromName(key)) as unknown as RateLimiterStub
  return (policy, client) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) => {
      const key = `${policy.name}:${client}`
      const refillMillis = (policy.windowSeconds * 1000) / policy.limit
      const resetSeconds = policy.windowSeconds
      const known = buckets.get(key)
      if (known !== undefined) {
        const available = Math.min(policy.limit, known.left + (now - known.at) / refillMillis) - known.pending
        if (now - known.at < batchSyncMillis && known.pending < Math.max(1, policy.limit / 10)) {
          if (available < 1) return batchedRefusal(policy, client, available, refillMillis)
          known.pending++
          return Effect.succeed<RateLimitDecision>({ policy, remaining: Math.floor(available - 1), resetSeconds })
        }
      }
      // The object is told what this isolate let through, and this request; its answer is the truth again.
      const spend = (known?.pending ?? 0) + 1
      return Effect.tryPromise({
        try: () => stub(key).tokenBucket(key, spend, refillMillis, policy.limit, true),
        catch: (cause) => storeError("The rate limit object did not answer", cause)
      }).pipe(
        withStoreTimeout(policy),
        Effect.flatMap(([left]) => {
          if (!buckets.has(key) && buckets.size >= maxKeys) buckets.clear()
          buckets.set(key, { left, at: now, pending: 0 })
          return left >= 0
            ? Effect.succeed<RateLimitDecision>({ policy, remaining: left, resetSeconds })
            : batchedRefusal(policy, client, left + 1, refillMillis)
        })
      )
    })
}

const isRateLimit = (u: unknown): u is RateLimit =>
  typeof u === "object" && u !== null && typeof (u as { limit?: unknown }).limit === "function"

export class RateLimits extends Context.Service<RateLimits, {
  /** The policy for a request, if any applies. */
  readonly policyFor: (request: Request) => RateLimitPolicy | undefined
  /** Counts one request of `key` under `policy`: the decision, or 429 (or 503 for a closed store). */
  readonly consume: (
    policy: RateLimitPolicy,
    key: string
  ) => Effect.Effect<RateLimitDecision | undefined, Problem.TooManyRequests | Problem.ServiceUnavailable>
}>()("meshwork/layers/security/RateLimits") {
  /** Policies from `RATE_LIMITS`; each store is set up, and its binding checked, only if a policy uses it. */
  static readonly layer = Layer.effect(
    RateLimits,
    Effect.gen(function*() {
      const policies = yield* Config.schema(Schema.Array(RateLimitPolicy), "RATE_LIMITS").pipe(Config.withDefault([]))
      const limiters = new Map<RateLimitPolicy, Limiter>()
      const memory = yield* effectLimiter(yield* boundedMemoryStore())
      for (const policy of policies) {
        switch (policy.store ?? "memory") {
          case "memory":
            limiters.set(policy, memory)
            break
          case "durable-object":
            limiters.set(policy, yield* effectLimiter(durableObjectStore(yield* Bindings.durableObject(policy.binding ?? "RATE_LIMITER"))))
            break
          case "durable-object-batched":
            limiters.set(policy, batchedLimiter(yield* Bindings.durableObject(policy.binding ?? "RATE_LIMITER")))
            break
          case "redis":
            limiters.set(policy, yield* effectLimiter(redisStore(yield* Effect.provide(Redis, Redis.layer))))
            break
          case "cloudflare": {
            const name = policy.binding ?? "RATE_LIMIT"
            const binding = yield* Bindings.WorkerEnv.useSync((env) => env[name])
            if (!isRateLimit(binding)) return yield* new Bindings.MissingBinding({ binding: name, expected: "ratelimits" })
            limiters.set(policy, cloudflareLimiter(binding))
          }
        }
      }
      return RateLimits.of({
        policyFor: (request) => {
          const path = pathOf(request.url)
          return policies.find((policy) =>
            matchesPrefix(path, policy.prefix) &&
            (policy.methods === undefined || policy.methods.includes(request.method as never))
          )
        },
        consume: (policy, key) =>
          limiters.get(policy)!(policy, key).pipe(
            Effect.tap((decision) =>
              Telemetry.event("ratelimit.allowed", {
                "meshwork.ratelimit": policy.name,
                ...(decision?.remaining === undefined ? {} : { "meshwork.ratelimit.remaining": decision.remaining })
              })
            ),
            // A remote store may hang; the in-memory one answers at once and needs no timer, and
            // the batched one times only its calls to the object.
            (policy.store ?? "memory") === "memory" || policy.store === "durable-object-batched" ? identity : withStoreTimeout(policy),
            Effect.catch((error): Effect.Effect<RateLimitDecision | undefined, Problem.TooManyRequests | Problem.ServiceUnavailable> => {
              const reason = error.reason
              if (reason._tag === "RateLimitExceeded") {
                return Effect.andThen(
                  Effect.all([
                    Telemetry.event("ratelimit.rejected", { "meshwork.ratelimit": policy.name }),
                    Telemetry.record(rateLimitRejections, 1, { limit: policy.name }),
                    LiveStats.count("ratelimit.rejected", policy.name),
                    Telemetry.annotateServerSpan("error.type", "TooManyRequests")
                  ]),
                  Effect.fail(
                    new Problem.TooManyRequests({
                      detail: `Rate limit "${policy.name}": ${policy.limit} requests per ${policy.windowSeconds} s`,
                      retryAfterSeconds: Math.max(1, Math.ceil(Duration.toSeconds(reason.retryAfter)))
                    })
                  )
                )
              }
              return (policy.onStoreError ?? "open") === "open"
                ? Effect.as(Effect.logWarning("rate limit store unavailable, letting the request through", reason), undefined)
                : Effect.fail(new Problem.ServiceUnavailable({ detail: "The rate limiter is unavailable", retryAfterSeconds: 1 }))
            })
          )
      })
    })
  )
}
