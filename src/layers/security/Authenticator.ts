/**
 * Authentication at the gateway: Bearer access tokens, verified against the
 * auth service's JWKS, for a user who still exists and is active.
 *
 * - The `Authorization` header must be exactly `Bearer <token>` (one token,
 *   at most 4 KiB). Anything else is 401.
 * - Tokens are verified on WebCrypto (Jws.ts `verifyJwt`): ES256 only, the configured issuer and
 *   audience, `typ: at+jwt`, `exp`/`nbf` with `CLOCK_TOLERANCE_SECONDS` (30),
 *   and refused once older than `TOKEN_MAX_AGE_SECONDS` (300) from `iat`.
 *   Unknown `crit` headers are refused; `jku`, `x5u` and embedded keys are
 *   never used: keys come only from the JWKS, found by `kid`.
 * - The JWKS is fetched from `jwksUrl` over the service binding `binding`
 *   (in the reference mesh: the auth service, through the router) and kept
 *   in the isolate for `JWKS_MAX_AGE_SECONDS` (300), so a retired key stops
 *   verifying within that time. A token with an unknown `kid` triggers a
 *   refresh at most once per `JWKS_COOLDOWN_SECONDS` (30), so random kids
 *   cannot make the gateway hammer the auth service.
 * - A verified token is remembered in the isolate until it expires (or its
 *   key leaves the JWKS): a client's next requests with the same token skip
 *   the ES256 check, the gateway's largest cost per request. Expiry and
 *   maximum age are still checked on every use.
 * - With `userUrl`, the token's user is looked up (a 200 answer
 *   `{ id, role, active }`, or 404) and cached in the isolate for
 *   `USER_STATUS_TTL_SECONDS` (30): a user disabled or demoted is refused
 *   (403) or loses the role at most that long after the change, and the
 *   identity passed on carries the role held now. Without it, the token's
 *   `roles` claim stands until the token expires.
 *
 * Failures are 401 with `WWW-Authenticate: Bearer ... error="invalid_token"`
 * (RFC 6750), or 403 for a disabled account, both problem+json.
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import * as Editable from "../../runtime/Editable.ts"
import * as Problem from "../../runtime/Problem.ts"
import * as Identity from "./Identity.ts"
import { importVerifyingKey, jwsHeader, type Key, verifyJwt } from "./Jws.ts"
import * as Proxy from "../routing/Proxy.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import { pathOf } from "../../runtime/Url.ts"

export const realm = "meshwork"

export const AuthenticationSettings = Config.all({
  issuer: Config.String("AUTH_ISSUER").pipe(Config.withDefault("meshwork-auth")),
  audience: Config.String("AUTH_AUDIENCE").pipe(Config.withDefault("meshwork-api")),
  maxTokenAgeSeconds: Config.Int("TOKEN_MAX_AGE_SECONDS").pipe(Config.withDefault(300)),
  clockToleranceSeconds: Config.Int("CLOCK_TOLERANCE_SECONDS").pipe(Config.withDefault(30)),
  jwksCooldownSeconds: Config.Int("JWKS_COOLDOWN_SECONDS").pipe(Config.withDefault(30)),
  jwksMaxAgeSeconds: Config.Int("JWKS_MAX_AGE_SECONDS").pipe(Config.withDefault(300)),
  userStatusTtlSeconds: Config.Int("USER_STATUS_TTL_SECONDS").pipe(Config.withDefault(30))
})

/** A request the gateway lets through without a token, matched exactly. */
export const PublicRoute = Schema.Struct({
  method: Schema.Literals(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
  path: Schema.String
})
export type PublicRoute = typeof PublicRoute.Type

export const defaultPublicRoutes: ReadonlyArray<PublicRoute> = [
  { method: "POST", path: "/api/auth/login" },
  { method: "POST", path: "/api/auth/refresh" },
  { method: "GET", path: "/api/auth/.well-known/jwks.json" }
]

const challenge = (error?: string) =>
  error === undefined ? `Bearer realm="${realm}"` : `Bearer realm="${realm}", error="${error}"`

export const missingToken = () =>
  new Problem.Unauthorized({ detail: "A bearer token is required", challenge: challenge() })

export const invalidToken = (detail: string) =>
  new Problem.Unauthorized({ detail, challenge: challenge("invalid_token") })

const bearer = /^Bearer +([A-Za-z0-9\-._~+/]+=*)$/i

/** The token of an `Authorization: Bearer <token>` header; any other shape is refused. */
export const parseBearer = (header: string | null): Effect.Effect<string, Problem.Unauthorized> => {
  if (header === null || header.trim() === "") return Effect.fail(missingToken())
  if (!/^bearer\s/i.test(header)) return Effect.fail(missingToken())
  if (header.length > 4096) return Effect.fail(invalidToken("The Authorization header is too long"))
  const match = bearer.exec(header)
  return match === null
    ? Effect.fail(invalidToken("The Authorization header must be exactly one Bearer token"))
    : Effect.succeed(match[1]!)
}

const Jwks = Schema.Struct({ keys: Schema.Array(Schema.Record(Schema.String, Schema.Unknown)) })
const decodeJwks = Schema.decodeUnknownEffect(Schema.fromJsonString(Jwks))

const UserRecord = Schema.Struct({ id: Schema.String, role: Schema.String, active: Schema.Boolean })
const decodeUser = Schema.decodeUnknownEffect(Schema.fromJsonString(UserRecord))

const Claims = Schema.Struct({ sub: Schema.String, roles: Schema.Array(Schema.String) })
const decodeClaims = Schema.decodeUnknownEffect(Claims)

interface VerifiedToken {
  readonly claims: typeof Claims.Type
  readonly kid: string
  readonly validUntil: number
  /** The identity it gives without a user lookup (`tokenIdentity`). */
  identity?: Identity.Identity
}

interface UserStatus {
  readonly exists: boolean
  readonly active: boolean
  readonly role: string
  readonly until: number
  /** The identity it gives (`userIdentity`): the same object for each request while the status is current. */
  identity?: Identity.Identity
}

/**
 * The identity a verified token gives, or its user's current status: made once and kept on the entry,
 * so each request of a signed-in client gets the same object (whose principal assertion is then found
 * without encoding it again).
 */
const tokenIdentity = (token: { readonly claims: typeof Claims.Type; identity?: Identity.Identity }): Identity.Identity =>
  token.identity ??= { kind: "user", sub: token.claims.sub, roles: token.claims.roles }
const userIdentity = (sub: string, user: UserStatus): Identity.Identity => user.identity ??= { kind: "user", sub, roles: [user.role] }

/** Where the identity provider and the user lookup are, for `Authenticator.layer`. */
export interface AuthenticatorOptions {
  /** The service binding every lookup goes through. */
  readonly binding: string
  /** The JWKS of the token issuer, reached through `binding`. */
  readonly jwksUrl: string
  /**
   * Where a token's user is looked up: a GET answering 200 with
   * `{ id, role, active }`, or 404. Optional.
   */
  readonly userUrl?: ((userId: string) => string) | undefined
  /** The mesh name of the Worker behind `binding`, which its lookups are addressed to (e.g. "router"). */
  readonly audience: string
}

/** The identity provider as the gateway sees it: keys, token verification, user status. */
export class Authenticator extends Context.Service<Authenticator, {
  /** Verifies a token and returns the identity to pass on inside the mesh. */
  readonly authenticate: (token: string) => Effect.Effect<Identity.Identity, Problem.Unauthorized | Problem.Forbidden | Problem.BadGateway>
  /** The identity `authenticate` would answer, when this isolate already knows it at `now` (no I/O, no verification). */
  readonly known: (token: string, now: number) => Identity.Identity | undefined
  /** How many times the JWKS has been fetched by this isolate (for tests and monitoring). */
  readonly jwksFetches: () => number
}>()("meshwork/layers/security/Authenticator") {
  /** The identity provider described by `options`; settings from the Worker's vars. */
  static readonly layer = (options: AuthenticatorOptions) =>
    Layer.effect(
      Authenticator,
      Effect.gen(function*() {
        const settings = yield* AuthenticationSettings
        const upstream = yield* Bindings.fetcher(options.binding)
        const key = yield* Identity.IdentityKey
        const service = options.binding.toLowerCase()

        // Internal calls carry this Worker's own identity, like any other Worker's.
        const internal = (url: string) =>
          Effect.gen(function*() {
            const assertion = yield* Identity.signFor(options.audience, "GET", pathOf(url))
            const trace = yield* Telemetry.activeCarrier
            const response = yield* Effect.tryPromise({
              try: () => upstream.fetch(url, { headers: { ...trace, [Identity.header]: assertion } }),
              catch: () => new Problem.BadGateway({ service })
            })
            yield* Effect.annotateCurrentSpan("http.response.status_code", response.status)
            const body = yield* Effect.promise(() => response.text())
            return { status: response.status, body }
          }).pipe(
            Effect.provideService(Identity.IdentityKey, key),
            Effect.withSpan(`GET ${service}`, { kind: "client", attributes: { "http.request.method": "GET", "url.full": url } }, {
              captureStackTrace: false
            })
          )

        // Key ring: replaced wholesale on refresh; never shared I/O, only parsed keys.
        let keys = new Map<string, Key>()
        // Tokens already verified, until their validity ends (bounded; cleared when full).
        const verified = new Map<string, VerifiedToken>()
        let lastRefresh = Number.NEGATIVE_INFINITY
        let fetches = 0
        // `lastRefresh` is when a refresh last *finished*: requests that arrive while one is in
        // flight (a cold isolate's first burst) fetch too rather than wait on another request's
        // I/O, which Workers forbid, or be refused by a cooldown whose keys have not come yet.
        const refresh = Effect.gen(function*() {
          fetches++
          const { status, body } = yield* Effect.ensuring(
            internal(options.jwksUrl),
            Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => (lastRefresh = now)))
          )
          if (status !== 200) return yield* new Problem.BadGateway({ service: "auth", detail: "The JWKS is unavailable" })
          const jwks = yield* Effect.mapError(decodeJwks(body), () => new Problem.BadGateway({ service: "auth" }))
          const next = new Map<string, Key>()
          for (const jwk of jwks.keys) {
            if (typeof jwk["kid"] !== "string" || jwk["alg"] !== "ES256") continue
            const imported = yield* Effect.option(Effect.tryPromise(() => importVerifyingKey(jwk)))
            if (imported._tag === "Some") next.set(jwk["kid"], imported.value)
          }
          keys = next
          for (const [token, entry] of verified) if (!next.has(entry.kid)) verified.delete(token)
        })
        // A stale key ring is refreshed before any verification, remembered ones
        // included, so a retired key stops verifying within the max age. If the
        // auth service cannot answer, the old keys stay (and the failure is logged).
        const freshen = Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          if (now - lastRefresh < settings.jwksMaxAgeSeconds * 1000) return
          yield* refresh.pipe(Effect.catch((error) => Effect.logWarning("JWKS refresh failed", error)))
        })
        const keyFor = (kid: string) =>
          Effect.gen(function*() {
            const now = yield* Clock.currentTimeMillis
            const known = keys.get(kid)
            if (known !== undefined) return known
            if (now - lastRefresh < settings.jwksCooldownSeconds * 1000) {
              return yield* invalidToken("The token is signed by an unknown key")
            }
            yield* refresh
            const fresh = keys.get(kid)
            if (fresh === undefined) return yield* invalidToken("The token is signed by an unknown key")
            return fresh
          })

        const tolerance = settings.clockToleranceSeconds * 1000
        const verify = (token: string) =>
          Effect.gen(function*() {
            yield* freshen
            const remembered = verified.get(token)
            if (remembered !== undefined) {
              const now = yield* Clock.currentTimeMillis
              if (now <= remembered.validUntil) return remembered.claims
              verified.delete(token)
            }
            const header = jwsHeader(token)
            if (header === undefined) return yield* invalidToken("The token is malformed")
            if (header["alg"] !== "ES256") return yield* invalidToken("The token's algorithm is not allowed")
            const kid = header["kid"]
            if (typeof kid !== "string") return yield* invalidToken("The token has no key id")
            const key = yield* keyFor(kid)
            const now = yield* Clock.currentTimeMillis
            const result = yield* Effect.promise(() =>
              verifyJwt(token, key, {
                issuer: settings.issuer,
                audience: settings.audience,
                typ: "at+jwt",
                required: ["iss", "aud", "sub", "iat", "exp", "jti"],
                clockToleranceSeconds: settings.clockToleranceSeconds,
                maxTokenAgeSeconds: settings.maxTokenAgeSeconds,
                now
              })
            )
            if (!result.ok) return yield* invalidToken(`The token was refused (${result.reason})`)
            const { payload } = result
            const claims = yield* Effect.mapError(decodeClaims(payload), () => invalidToken("The token's claims are malformed"))
            // Valid until the earlier of expiry and maximum age, each with the tolerance allowed.
            const validUntil = Math.min((payload["exp"] as number) * 1000, ((payload["iat"] as number) + settings.maxTokenAgeSeconds) * 1000) + tolerance
            if (verified.size >= 10_000) verified.clear()
            verified.set(token, { claims, kid, validUntil })
            return claims
          })

        // User status, per isolate: settled answers only, never a shared in-flight lookup.
        const users = new Map<string, UserStatus>()
        const userStatus = (id: string, userUrl: (id: string) => string) =>
          Effect.gen(function*() {
            const now = yield* Clock.currentTimeMillis
            const cached = users.get(id)
            if (cached !== undefined && cached.until > now) return cached
            const { status, body } = yield* internal(userUrl(id))
            let found: UserStatus
            if (status === 404) {
              found = { exists: false, active: false, role: "", until: now + settings.userStatusTtlSeconds * 1000 }
            } else if (status === 200) {
              const user = yield* Effect.mapError(decodeUser(body), () => new Problem.BadGateway({ service: "users" }))
              found = { exists: true, active: user.active, role: user.role, until: now + settings.userStatusTtlSeconds * 1000 }
            } else {
              return yield* new Problem.BadGateway({ service: "users", detail: `The user lookup answered ${status}` })
            }
            if (users.size >= 10_000) users.clear()
            users.set(id, found)
            return found
          })

        // The identity of a token this isolate verified, whose user it looked up, both still
        // current: what nearly every request of a signed-in client is, answered without an effect.
        const known = (token: string, now: number): Identity.Identity | undefined => {
          if (now - lastRefresh >= settings.jwksMaxAgeSeconds * 1000) return undefined
          const remembered = verified.get(token)
          if (remembered === undefined || now > remembered.validUntil) return undefined
          const claims = remembered.claims
          if (options.userUrl === undefined) return tokenIdentity(remembered)
          const user = users.get(claims.sub)
          if (user === undefined || user.until <= now || !user.exists || !user.active) return undefined
          return userIdentity(claims.sub, user)
        }

        return Authenticator.of({
          jwksFetches: () => fetches,
          known,
          authenticate: (token) =>
            Effect.gen(function*() {
              const claims = yield* verify(token)
              const userUrl = options.userUrl
              // The identity `known` will answer for this token from now on: one object.
              if (userUrl === undefined) return tokenIdentity(verified.get(token) ?? { claims })
              const user = yield* userStatus(claims.sub, userUrl)
              if (!user.exists) return yield* invalidToken("The token's user no longer exists")
              if (!user.active) return yield* new Problem.Forbidden({ detail: "The account is disabled" })
              return userIdentity(claims.sub, user)
            })
        })
      })
    ).pipe(Layer.provide(Identity.IdentityKey.layer))
}

/** The gateway's public routes, from `PUBLIC_ROUTES` (default: login, refresh, JWKS). */
export class PublicRoutes extends Context.Service<PublicRoutes, {
  readonly isPublic: (method: string, path: string) => boolean
}>()("meshwork/layers/security/Authenticator/PublicRoutes") {
  static readonly layer = Layer.effect(
    PublicRoutes,
    Effect.map(
      Config.schema(Schema.Array(PublicRoute), "PUBLIC_ROUTES").pipe(Config.withDefault(defaultPublicRoutes)),
      (routes) => {
        const keys = new Set(routes.map((route) => `${route.method} ${route.path}`))
        return PublicRoutes.of({ isPublic: (method, path) => keys.has(`${method} ${path}`) })
      }
    )
  )
}

/** Who is calling: anonymous on public routes, the token's verified user everywhere else. */
export const authenticate = (
  request: Request
): Effect.Effect<Identity.Identity, Problem.Unauthorized | Problem.Forbidden | Problem.BadGateway, PublicRoutes | Authenticator> =>
  Effect.withFiber((fiber) => {
    const context = fiber.context as Context.Context<PublicRoutes | Authenticator>
    if (Context.get(context, PublicRoutes).isPublic(request.method, pathOf(request.url))) return Effect.succeed(anonymous)
    const authenticator = Context.get(context, Authenticator)
    const header = request.headers.get("authorization")
    const now = fiber.getRef(Clock.Clock).currentTimeMillisUnsafe()
    // A token this isolate verified is looked up as the header carries it, before the header is
    // parsed: only a token `parseBearer` accepted was ever remembered.
    const remembered = header !== null && header.startsWith("Bearer ") ? authenticator.known(header.slice(7), now) : undefined
    if (remembered !== undefined) return Effect.succeed(remembered)
    return Effect.flatMap(parseBearer(header), (token) => {
      const identity = authenticator.known(token, now)
      return identity === undefined ? authenticator.authenticate(token) : Effect.succeed(identity)
    })
  })

const anonymous: Identity.Identity = { kind: "anonymous" }

/** The edge's principal assertion of `identity`: the one signed within the last 10 s at once, else a new one. */
const principalFor = (identity: Identity.Identity) =>
  Effect.withFiber((fiber) => {
    const keys = Context.getOrUndefined(fiber.context, Identity.IdentityKey)
    const ready = keys === undefined
      ? undefined
      : Identity.reusablePrincipal(keys, identity, fiber.getRef(Clock.Clock).currentTimeMillisUnsafe())
    return ready !== undefined ? Effect.succeed(ready) : Identity.signPrincipal(identity)
  })

/** Headers that pick a version of a Worker deployed gradually: the mesh sets them, never a client. */
const versionHeaders = ["cloudflare-workers-version-key", "cloudflare-workers-version-overrides"]

/**
 * The request to pass on: every identity header the client sent dropped (and
 * any choice of version), the mesh's signed assertion of `identity` attached,
 * and a signed-in user's id as the version key of gradual deployments.
 */
export const withIdentity = (request: Request, identity: Identity.Identity) =>
  Effect.map(principalFor(identity), (assertion) => {
    // Hop-by-hop headers go first: a client's `Connection: x-meshwork-principal`
    // then has nothing left to name when a later hop strips what Connection lists.
    // Made as editable (its headers a copy of its own): the proxy then adds this Worker's own assertion in place.
    const outgoing = Editable.request(request)
    const headers = outgoing.headers
    Identity.dropSpoofable(headers, [...Proxy.hopByHopHeaders(headers), ...versionHeaders])
    headers.set(Identity.principalHeader, assertion)
    // Version affinity for Cloudflare's Gradual Deployments of the Workers behind: one user, one version.
    if (identity.kind === "user") headers.set("cloudflare-workers-version-key", identity.sub)
    return outgoing
  })
