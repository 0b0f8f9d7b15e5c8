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
import { Authenticator } from "../src/layers/Authentication.ts"
import { envLayer } from "../src/runtime/Worker.ts"
import { mint, seedUser } from "./helpers.ts"

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
  Authenticator.layer("ROUTER").pipe(
    Layer.provide(envLayer({ ROUTER: router, MESH_IDENTITY_SECRET: env.MESH_IDENTITY_SECRET, ...vars }))
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
