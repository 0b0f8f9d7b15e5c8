/**
 * The gateway's Authenticator on virtual time: JWKS refreshes are
 * rate-bounded, and a user's status is cached for exactly its TTL. It talks
 * to the real router, auth and users Workers; the router binding is only
 * wrapped to count the calls.
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect, Exit, Layer } from "effect"
import { TestClock } from "effect/testing"
import { authenticate, Authenticator, PublicRoutes, withIdentity } from "../../src/layers/security/Authenticator.ts"
import * as Identity from "../../src/layers/security/Identity.ts"
import { envLayer } from "../../src/runtime/Worker.ts"
import { meshEnv, mint, seedUser, testKeys } from "../helpers.ts"

const countingRouter = () => {
  const calls: Array<string> = []
  const fetcher = {
    fetch: (input: RequestInfo | URL, init?: RequestInit) => {
      calls.push(new URL(input instanceof Request ? input.url : String(input)).pathname)
      return env.ROUTER.fetch(input, init)
    }
  }
  return { calls, fetcher }
}

const authenticatorWith = (router: unknown, vars: Record<string, string> = {}) =>
  Authenticator.layer({
    binding: "ROUTER",
    jwksUrl: "http://router.internal/api/auth/.well-known/jwks.json",
    userUrl: (id) => `http://router.internal/api/users/${encodeURIComponent(id)}`,
    audience: "router"
  }).pipe(
    Layer.provide(envLayer({ ROUTER: router, ...meshEnv("gateway"), ...vars }))
  )

it.effect("refreshes the JWKS for unknown key ids at most once per cooldown (3 s here, 30 s by default)", () => {
  const router = countingRouter()
  return Effect.gen(function*() {
    yield* TestClock.setTime(Date.now())
    const authenticator = yield* Authenticator
    const user = yield* Effect.promise(() => seedUser())
    const attempt = (n: number) =>
      Effect.flatMap(
        Effect.promise(() => mint(user.id, { header: { kid: `unknown-${n}-${crypto.randomUUID()}` } })),
        (token) => Effect.exit(authenticator.authenticate(token))
      )
    const first = yield* Effect.forEach(Array.from({ length: 20 }, (_, n) => n), attempt)
    expect(first.every(Exit.isFailure)).toBe(true)
    expect(authenticator.jwksFetches()).toBe(1)

    yield* TestClock.adjust("2 seconds")
    yield* Effect.forEach(Array.from({ length: 20 }, (_, n) => n), attempt)
    expect(authenticator.jwksFetches()).toBe(1)

    yield* TestClock.adjust("2 seconds")
    yield* Effect.forEach(Array.from({ length: 20 }, (_, n) => n), attempt)
    expect(authenticator.jwksFetches()).toBe(2)
    expect(router.calls.filter((path) => path.endsWith("jwks.json"))).toHaveLength(2)
    // Virtual time stays within the mesh's 5 s clock-skew allowance, so the
    // router accepts the identity the gateway signs with it.
  }).pipe(Effect.provide(authenticatorWith(router.fetcher, { JWKS_COOLDOWN_SECONDS: "3" })))
})

it.effect("lets a cold isolate's first burst of valid tokens through: none is refused while the first JWKS fetch is in flight", () => {
  const router = countingRouter()
  return Effect.gen(function*() {
    yield* TestClock.setTime(Date.now())
    const authenticator = yield* Authenticator
    const user = yield* Effect.promise(() => seedUser())
    const tokens = yield* Effect.promise(() => Promise.all(Array.from({ length: 20 }, () => mint(user.id))))
    const exits = yield* Effect.forEach(tokens, (token) => Effect.exit(authenticator.authenticate(token)), { concurrency: "unbounded" })
    expect(exits.filter(Exit.isFailure)).toEqual([])
  }).pipe(Effect.provide(authenticatorWith(router.fetcher)))
})

it.effect("caches a user's status for USER_STATUS_TTL_SECONDS (3 s here, 30 s by default), then sees it disabled", () => {
  const router = countingRouter()
  return Effect.gen(function*() {
    yield* TestClock.setTime(Date.now())
    const authenticator = yield* Authenticator
    const user = yield* Effect.promise(() => seedUser())
    const token = yield* Effect.promise(() => mint(user.id))
    const lookups = () => router.calls.filter((path) => path.startsWith("/api/users/")).length

    expect(yield* authenticator.authenticate(token)).toEqual({ kind: "user", sub: user.id, roles: ["user"] })
    yield* Effect.promise(() => env.USERS_DB.prepare("UPDATE users SET active = 0 WHERE id = ?").bind(user.id).run())

    yield* TestClock.adjust("2 seconds")
    expect(Exit.isSuccess(yield* Effect.exit(authenticator.authenticate(token)))).toBe(true)
    expect(lookups()).toBe(1)

    yield* TestClock.adjust("2 seconds")
    const refused = yield* Effect.flip(authenticator.authenticate(token))
    expect(refused._tag).toBe("Forbidden")
    expect(lookups()).toBe(2)
  }).pipe(Effect.provide(authenticatorWith(router.fetcher, { USER_STATUS_TTL_SECONDS: "3" })))
})

it.effect("answers a remembered token from its header as a parsed one, the user's status still checked", () => {
  const router = countingRouter()
  return Effect.gen(function*() {
    yield* TestClock.setTime(Date.now())
    const user = yield* Effect.promise(() => seedUser())
    const token = yield* Effect.promise(() => mint(user.id))
    const request = (authorization: string) => new Request("http://gateway/api/users/me", { headers: { authorization } })
    const first = yield* authenticate(request(`Bearer ${token}`))
    expect(first).toEqual({ kind: "user", sub: user.id, roles: ["user"] })
    // Remembered: the same identity (one object, so its principal assertion is found without re-encoding it).
    expect(yield* authenticate(request(`Bearer ${token}`))).toBe(first)
    // What parseBearer accepts still is, and what it refuses still is, remembered token or not.
    expect(yield* authenticate(request(`bearer ${token}`))).toBe(first)
    expect(yield* authenticate(request(`Bearer   ${token}`))).toBe(first)
    expect((yield* Effect.flip(authenticate(request(`Bearer ${token} ${token}`))))._tag).toBe("Unauthorized")
    expect((yield* Effect.flip(authenticate(request(`Bearer ${token}x`))))._tag).toBe("Unauthorized")
    // A disabled user's remembered token is refused once the status is looked up again.
    yield* Effect.promise(() => env.USERS_DB.prepare("UPDATE users SET active = 0 WHERE id = ?").bind(user.id).run())
    yield* TestClock.adjust("4 seconds")
    expect((yield* Effect.flip(authenticate(request(`Bearer ${token}`))))._tag).toBe("Forbidden")
  }).pipe(Effect.provide(Layer.merge(authenticatorWith(router.fetcher, { USER_STATUS_TTL_SECONDS: "3" }), PublicRoutes.layer.pipe(Layer.provide(envLayer({}))))))
})

it.effect("refuses a remembered token once it expires, whatever was verified before", () => {
  const router = countingRouter()
  return Effect.gen(function*() {
    const start = Date.now()
    yield* TestClock.setTime(start)
    const authenticator = yield* Authenticator
    const user = yield* Effect.promise(() => seedUser())
    const issued = Math.floor(start / 1000)
    const token = yield* Effect.promise(() => mint(user.id, { claims: { iat: issued, exp: issued + 60 } }))
    expect(Exit.isSuccess(yield* Effect.exit(authenticator.authenticate(token)))).toBe(true)
    expect(Exit.isSuccess(yield* Effect.exit(authenticator.authenticate(token)))).toBe(true)

    // Past exp plus the 30 s tolerance: refused, though the signature was checked before.
    yield* TestClock.adjust("91 seconds")
    const refused = yield* Effect.flip(authenticator.authenticate(token))
    expect(refused._tag).toBe("Unauthorized")
  }).pipe(Effect.provide(authenticatorWith(router.fetcher)))
})

/**
 * The router, with the JWKS it returns passed through `keep`: the auth
 * service as it is before a key is added, or after one is retired.
 */
const rotatingRouter = (keep: (kid: string) => boolean) => ({
  fetch: async (input: RequestInfo | URL, init?: RequestInit) => {
    const response = await env.ROUTER.fetch(input, init)
    const url = new URL(input instanceof Request ? input.url : String(input))
    if (!url.pathname.endsWith("/jwks.json")) return response
    const jwks = await response.json() as { keys: Array<{ kid: string }> }
    return Response.json({ keys: jwks.keys.filter((key) => keep(key.kid)) })
  }
})

// Virtual time stays within the 5 s skew the router allows the gateway's identity assertions.
it.effect("accepts a newly added key once a token shows it, and stops accepting a retired key within the JWKS max age", () => {
  let published = new Set([testKeys.signing["kid"]!])
  return Effect.gen(function*() {
    yield* TestClock.setTime(Date.now())
    const authenticator = yield* Authenticator
    const user = yield* Effect.promise(() => seedUser())
    const withKey = (key: "signing" | "rotatedIn") => Effect.promise(() => mint(user.id, { key }))
    const accepted = (token: string) => Effect.map(Effect.exit(authenticator.authenticate(token)), Exit.isSuccess)

    const old = yield* withKey("signing")
    expect(yield* accepted(old)).toBe(true)
    // `keys add` then `keys activate`: the auth service publishes the new key and signs with it.
    published = new Set([testKeys.signing["kid"]!, testKeys.rotatedIn["kid"]!])
    yield* TestClock.adjust("1500 millis") // past the 1 s cooldown
    expect(yield* accepted(yield* withKey("rotatedIn"))).toBe(true)

    // `keys retire` of the old key: remembered verifications of it end with the key ring's max age.
    published = new Set([testKeys.rotatedIn["kid"]!])
    expect(yield* accepted(old)).toBe(true)
    yield* TestClock.adjust("2500 millis") // past the 2 s max age since the last refresh
    expect(yield* accepted(old)).toBe(false)
    expect(yield* accepted(yield* withKey("rotatedIn"))).toBe(true)
  }).pipe(Effect.provide(authenticatorWith(
    rotatingRouter((kid) => published.has(kid)),
    { JWKS_COOLDOWN_SECONDS: "1", JWKS_MAX_AGE_SECONDS: "2" }
  )))
})

it.effect("passes a request on without the client's identity or version headers, with the gateway's principal and the user's version key", () =>
  Effect.gen(function*() {
    const incoming = new Request("http://gateway/api/users/u1", {
      headers: {
        "x-meshwork-principal": "forged",
        "x-user-id": "admin",
        "cloudflare-workers-version-overrides": `meshwork-users="canary-id"`,
        "cloudflare-workers-version-key": "someone-else",
        "accept": "application/json"
      }
    })
    const user = yield* withIdentity(incoming, { kind: "user", sub: "u1", roles: ["user"] })
    expect(user.headers.get("x-meshwork-principal")).toMatch(/^ey/)
    expect(user.headers.get("x-user-id")).toBeNull()
    expect(user.headers.get("cloudflare-workers-version-overrides")).toBeNull()
    expect(user.headers.get("cloudflare-workers-version-key")).toBe("u1")
    expect(user.headers.get("accept")).toBe("application/json")
    const anonymous = yield* withIdentity(incoming, { kind: "anonymous" })
    expect(anonymous.headers.get("cloudflare-workers-version-key")).toBeNull()
  }).pipe(Effect.provide(Identity.IdentityKey.layer.pipe(Layer.provide(envLayer(meshEnv("gateway")))))))
