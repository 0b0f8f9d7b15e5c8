/**
 * API keys at the gateway, for machine clients: `Authorization: ApiKey <key>`
 * beside `Bearer <token>`, and a quota per key, exact across isolates.
 *
 * - **Verification.** A key is checked by the identity provider (in the
 *   reference mesh, auth's `POST /api/auth/keys/verify`, through the router),
 *   which answers who it acts as (a user and roles) and its quota. The answer,
 *   and a refusal alike, is kept in the isolate for `API_KEY_CACHE_SECONDS`
 *   (10), never past the key's own expiry: a revoked key, or a disabled user,
 *   stops working within that time. A malformed key (not `mwk_` and 43
 *   base64url characters) is refused without asking.
 * - **Answers.** Unknown, revoked and expired keys, and keys of users who are
 *   gone, get the same 401 problem, `WWW-Authenticate: ApiKey realm="meshwork",
 *   error="invalid_key"`; a disabled user's key gets 403.
 * - **Quotas.** Each key has a quota per minute and per UTC day. Both are
 *   counted in one Durable Object per key (`ApiKeyQuotaObject`, bound as
 *   `API_KEY_QUOTAS`), which checks and counts both windows in one step, so a
 *   burst from many isolates is admitted exactly up to the quota. Answers
 *   carry `RateLimit-Policy` and `RateLimit` for both windows (IETF
 *   draft-ietf-httpapi-ratelimit-headers); a request over either gets 429
 *   problem+json with `Retry-After` (until the exhausted window ends) and is
 *   not counted. If the object cannot answer, the request gets 503: quotas
 *   fail closed.
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Problem from "../../runtime/Problem.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import { pathOf } from "../../runtime/Url.ts"
import { authenticate, type Authenticator, PublicRoutes, realm } from "./Authenticator.ts"
import * as Identity from "./Identity.ts"

export const ApiKeySettings = Config.all({
  cacheSeconds: Config.Int("API_KEY_CACHE_SECONDS").pipe(Config.withDefault(10))
})

/** A key as the mesh issues them: `mwk_` and 43 base64url characters (32 random bytes). */
export const apiKeyPattern = /^mwk_[A-Za-z0-9_-]{43}$/

/** A key's quota: requests per minute and per UTC day. */
export const Quota = Schema.Struct({ perMinute: Schema.Int, perDay: Schema.Int })
export type Quota = typeof Quota.Type

const Verified = Schema.Struct({
  id: Schema.String,
  userId: Schema.String,
  roles: Schema.Array(Schema.String),
  quota: Quota,
  expiresAt: Schema.NullOr(Schema.Number)
})
const decodeVerified = Schema.decodeUnknownEffect(Schema.fromJsonString(Verified))
const ProblemDetail = Schema.Struct({ detail: Schema.optionalKey(Schema.String) })
const decodeProblem = Schema.decodeUnknownOption(Schema.fromJsonString(ProblemDetail))

/** A key the identity provider vouched for: who it acts as, and its quota. */
export interface VerifiedKey {
  readonly id: string
  readonly identity: Identity.Identity
  readonly quota: Quota
}

/** Where keys are verified and counted, for `ApiKeyAuthenticator.layer`. */
export interface ApiKeyAuthenticatorOptions {
  /** The service binding verification goes through. */
  readonly binding: string
  /** `POST { key }` there answers 200 `{ id, userId, roles, quota, expiresAt }`, 401 or 403. */
  readonly verifyUrl: string
  /** The mesh name of the Worker behind `binding`, which the call is addressed to. */
  readonly audience: string
  /** The Durable Object namespace of `ApiKeyQuotaObject` (default `API_KEY_QUOTAS`). */
  readonly quotas?: string | undefined
}

const keyChallenge = `ApiKey realm="${realm}", error="invalid_key"`
const invalidKey = (detail: string) => new Problem.Unauthorized({ detail, challenge: keyChallenge })

const apiKeyScheme = /^apikey(?:\s|$)/i

/** The key of an `Authorization: ApiKey <key>` header; any other shape of it is refused. */
export const parseApiKey = (header: string): Effect.Effect<string, Problem.Unauthorized> => {
  if (header.length > 4096) return Effect.fail(invalidKey("The Authorization header is too long"))
  const key = header.slice("ApiKey".length).trim()
  return apiKeyPattern.test(key) ? Effect.succeed(key) : Effect.fail(invalidKey("The API key is malformed"))
}

/** What one quota check found, for the `RateLimit` headers and a 429. */
export interface QuotaDecision {
  readonly allowed: boolean
  readonly quota: Quota
  readonly minute: { readonly remaining: number; readonly resetSeconds: number }
  readonly day: { readonly remaining: number; readonly resetSeconds: number }
  /** When refused: seconds until the exhausted window (the later, if both) ends. */
  readonly retryAfterSeconds: number
}

/** `RateLimit-Policy` and `RateLimit` for a key's two windows. */
export const quotaHeaders = (decision: QuotaDecision): Record<string, string> => ({
  "ratelimit-policy": `"key-minute";q=${decision.quota.perMinute};w=60, "key-day";q=${decision.quota.perDay};w=86400`,
  ratelimit: `"key-minute";r=${decision.minute.remaining};t=${decision.minute.resetSeconds}, "key-day";r=${decision.day.remaining};t=${decision.day.resetSeconds}`
})

/** The 429 of a refused decision: which window is used up, and when to try again. */
export const quotaRefusal = (decision: QuotaDecision): Problem.TooManyRequests =>
  new Problem.TooManyRequests({
    detail: `The API key's quota of ${
      decision.day.remaining === 0 ? `${decision.quota.perDay} requests a day` : `${decision.quota.perMinute} requests a minute`
    } is used up`,
    retryAfterSeconds: decision.retryAfterSeconds
  })

const minuteMillis = 60_000
const dayMillis = 86_400_000

interface Counters {
  readonly minute: number
  readonly minuteCount: number
  readonly day: number
  readonly dayCount: number
}

/**
 * One key's quota counters: the current minute's and UTC day's. A check
 * counts a request in both windows or in neither; state is forgotten (an
 * alarm) once its day is over.
 */
export class ApiKeyQuotaObject extends DurableObjects.make({
  name: "ApiKeyQuotaObject",
  layer: Layer.empty,
  alarm: () =>
    DurableObjects.State.useSync((state) => {
      const counters = state.storage.kv.get<Counters>("counters")
      if (counters !== undefined && counters.day < Math.floor(Date.now() / dayMillis)) state.storage.kv.delete("counters")
    })
}) {
  consume(perMinute: number, perDay: number): Promise<Omit<QuotaDecision, "quota">> {
    return this.run(DurableObjects.State.useSync((state) => {
      const kv = state.storage.kv
      const now = Date.now()
      const minute = Math.floor(now / minuteMillis)
      const day = Math.floor(now / dayMillis)
      const stored = kv.get<Counters>("counters")
      const minuteCount = stored?.minute === minute ? stored.minuteCount : 0
      const dayCount = stored?.day === day ? stored.dayCount : 0
      const minuteReset = Math.ceil(((minute + 1) * minuteMillis - now) / 1000)
      const dayReset = Math.ceil(((day + 1) * dayMillis - now) / 1000)
      const minuteFull = minuteCount >= perMinute
      const dayFull = dayCount >= perDay
      if (minuteFull || dayFull) {
        return {
          allowed: false,
          minute: { remaining: Math.max(0, perMinute - minuteCount), resetSeconds: minuteReset },
          day: { remaining: Math.max(0, perDay - dayCount), resetSeconds: dayReset },
          retryAfterSeconds: dayFull ? dayReset : minuteReset
        }
      }
      kv.put("counters", { minute, minuteCount: minuteCount + 1, day, dayCount: dayCount + 1 } satisfies Counters)
      // The first count of a day: forget the counters once the day is over.
      if (stored?.day !== day) void state.storage.setAlarm((day + 1) * dayMillis + 1000)
      return {
        allowed: true,
        minute: { remaining: perMinute - minuteCount - 1, resetSeconds: minuteReset },
        day: { remaining: perDay - dayCount - 1, resetSeconds: dayReset },
        retryAfterSeconds: 0
      }
    }))
  }
}

type QuotaStub = Pick<ApiKeyQuotaObject, "consume">

type Settled =
  | { readonly ok: true; readonly key: VerifiedKey; readonly until: number }
  | { readonly ok: false; readonly error: Problem.Unauthorized | Problem.Forbidden; readonly until: number }

/** API keys at the gateway: verified through the identity provider, counted per key. */
export class ApiKeyAuthenticator extends Context.Service<ApiKeyAuthenticator, {
  /** The key `key` stands for, if the identity provider vouches for it. */
  readonly verify: (key: string) => Effect.Effect<VerifiedKey, Problem.Unauthorized | Problem.Forbidden | Problem.BadGateway>
  /** Counts one request against the key's quota, if both its windows have room: the decision either way. */
  readonly consume: (key: VerifiedKey) => Effect.Effect<QuotaDecision, Problem.ServiceUnavailable>
  /** How many times this isolate asked the identity provider (for tests and monitoring). */
  readonly verifications: () => number
}>()("meshwork/layers/security/ApiKeyAuthenticator") {
  static readonly layer = (options: ApiKeyAuthenticatorOptions) =>
    Layer.effect(
      ApiKeyAuthenticator,
      Effect.gen(function*() {
        const settings = yield* ApiKeySettings
        const upstream = yield* Bindings.fetcher(options.binding)
        const quotas = yield* Bindings.durableObject(options.quotas ?? "API_KEY_QUOTAS")
        const keys = yield* Identity.IdentityKey
        const service = options.binding.toLowerCase()
        const path = pathOf(options.verifyUrl)

        const ask = (key: string) =>
          Effect.gen(function*() {
            const assertion = yield* Identity.signFor(options.audience, "POST", path)
            const trace = yield* Telemetry.activeCarrier
            const response = yield* Effect.tryPromise({
              try: () =>
                upstream.fetch(options.verifyUrl, {
                  method: "POST",
                  headers: { ...trace, [Identity.header]: assertion, "content-type": "application/json" },
                  body: JSON.stringify({ key })
                }),
              catch: () => new Problem.BadGateway({ service })
            })
            yield* Effect.annotateCurrentSpan("http.response.status_code", response.status)
            return { status: response.status, body: yield* Effect.promise(() => response.text()) }
          }).pipe(
            Effect.provideService(Identity.IdentityKey, keys),
            Effect.withSpan(`POST ${service}`, { kind: "client", attributes: { "http.request.method": "POST", "url.full": options.verifyUrl } }, {
              captureStackTrace: false
            })
          )

        // Settled answers only, per isolate, bounded (cleared when full): never a shared in-flight lookup.
        const settled = new Map<string, Settled>()
        let asked = 0
        const remember = (key: string, entry: Settled) => {
          if (settings.cacheSeconds <= 0) return
          if (settled.size >= 10_000) settled.clear()
          settled.set(key, entry)
        }

        const verify = (key: string): Effect.Effect<VerifiedKey, Problem.Unauthorized | Problem.Forbidden | Problem.BadGateway> =>
          Effect.flatMap(Clock.currentTimeMillis, (now) => {
            const known = settled.get(key)
            if (known !== undefined && known.until > now) return known.ok ? Effect.succeed(known.key) : Effect.fail(known.error)
            if (known !== undefined) settled.delete(key)
            asked++
            return Effect.flatMap(ask(key), ({ status, body }): Effect.Effect<VerifiedKey, Problem.Unauthorized | Problem.Forbidden | Problem.BadGateway> => {
              const until = now + settings.cacheSeconds * 1000
              if (status === 200) {
                return Effect.map(
                  Effect.mapError(decodeVerified(body), () => new Problem.BadGateway({ service: "auth", detail: "The key verification answer is malformed" })),
                  (found) => {
                    const verified: VerifiedKey = {
                      id: found.id,
                      identity: { kind: "user", sub: found.userId, roles: found.roles },
                      quota: found.quota
                    }
                    remember(key, { ok: true, key: verified, until: Math.min(until, found.expiresAt ?? Number.POSITIVE_INFINITY) })
                    return verified
                  }
                )
              }
              if (status === 401 || status === 403) {
                const error = status === 401
                  ? invalidKey("The API key is not valid")
                  : new Problem.Forbidden({ detail: decodeProblem(body).pipe((found) => found._tag === "Some" ? found.value.detail : undefined) ?? "Forbidden" })
                remember(key, { ok: false, error, until })
                return Effect.fail(error)
              }
              return Effect.fail(new Problem.BadGateway({ service: "auth", detail: `The key verification answered ${status}` }))
            })
          })

        const consume = (key: VerifiedKey): Effect.Effect<QuotaDecision, Problem.ServiceUnavailable> => {
          const stub = quotas.get(quotas.idFromName(key.id)) as unknown as QuotaStub
          return Effect.tryPromise({
            try: () => stub.consume(key.quota.perMinute, key.quota.perDay),
            catch: () => new Problem.ServiceUnavailable({ detail: "The API key quota store did not answer", retryAfterSeconds: 1 })
          }).pipe(
            Effect.map((found): QuotaDecision => ({ ...found, quota: key.quota })),
            Effect.withSpan("ApiKeyAuthenticator.consume", { attributes: { "meshwork.api_key.id": key.id } }, { captureStackTrace: false })
          )
        }

        return ApiKeyAuthenticator.of({ verify, consume, verifications: () => asked })
      })
    ).pipe(Layer.provide(Identity.IdentityKey.layer))
}

/** The caller of a request: who it is, and the API key it came with, if any. */
export interface Client {
  readonly identity: Identity.Identity
  readonly key: VerifiedKey | undefined
}

const bearerOnly = `Bearer realm="${realm}"`

/**
 * Who is calling, by bearer token or API key: anonymous on a public route;
 * `Authorization: ApiKey <key>` verified as a key (when the layer has
 * `ApiKeyAuthenticator`); anything else as a bearer token (`authenticate`).
 * A request with neither is challenged for both.
 */
export const authenticateClient = (
  request: Request
): Effect.Effect<Client, Problem.Unauthorized | Problem.Forbidden | Problem.BadGateway, PublicRoutes | Authenticator> =>
  Effect.withFiber((fiber) => {
    const keys = Context.getOrUndefined(fiber.context, ApiKeyAuthenticator)
    const header = request.headers.get("authorization")
    if (keys !== undefined && header !== null && apiKeyScheme.test(header)) {
      const routes = Context.get(fiber.context as Context.Context<PublicRoutes>, PublicRoutes)
      if (!routes.isPublic(request.method, pathOf(request.url))) {
        return Effect.flatMap(parseApiKey(header), (key) => Effect.map(keys.verify(key), (verified) => ({ identity: verified.identity, key: verified })))
      }
    }
    const bearer = Effect.map(authenticate(request), (identity): Client => ({ identity, key: undefined }))
    if (keys === undefined) return bearer
    return Effect.mapError(bearer, (error) =>
      error instanceof Problem.Unauthorized && error.challenge === bearerOnly
        ? new Problem.Unauthorized({ detail: "A bearer token or an API key is required", challenge: `${bearerOnly}, ApiKey realm="${realm}"` })
        : error)
  })
