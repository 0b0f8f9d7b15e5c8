/**
 * Identity inside the mesh: per-Worker keys, audience- and request-bound
 * service assertions, principals only from the edge, and each Worker's
 * policy. Every forgery the issue lists is tried against a real verifier.
 */
import { expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { TestClock } from "effect/testing"
import * as Identity from "../../src/layers/security/Identity.ts"
import { pathOf } from "../../src/runtime/Url.ts"
import { envLayer } from "../../src/runtime/Worker.ts"
import { meshEnv, signAs } from "../helpers.ts"

const usersPolicy: ReadonlyArray<Identity.PolicyRule> = [
  { from: ["router"], paths: ["/api/users", "/api/users/*", "/health"] },
  { from: ["products"], methods: ["GET"], paths: ["/api/users/*"] }
]
/** The verifier: the users Worker, with its policy. */
const AsUsers = Identity.IdentityKey.layer.pipe(Layer.provide(envLayer(meshEnv("users", usersPolicy))))
const AsRouter = Identity.IdentityKey.layer.pipe(Layer.provide(envLayer(meshEnv("router"))))
const AsGateway = Identity.IdentityKey.layer.pipe(Layer.provide(envLayer(meshEnv("gateway"))))

const now = 1_800_000_000_000
const alice: Identity.Identity = { kind: "user", sub: "alice", roles: ["user"] }
const path = "/api/users/alice"

/** What users answers a request with these headers. */
const atUsers = (assertion: string | undefined, principal?: string, method = "GET", at = path) =>
  Effect.provide(Identity.verifyRequest(method, at, assertion, principal), AsUsers)

const refusal = <A>(effect: Effect.Effect<A, { readonly _tag: string; readonly detail?: string | undefined }>) =>
  Effect.map(Effect.flip(effect), (error) => `${error._tag}: ${error.detail}`)

const claims = (overrides: object = {}) => ({ iss: "router", aud: "users", htm: "GET", htp: path, iat: now, exp: now + 60_000, ...overrides })

it.effect("accepts the router's assertion for this request, with the gateway's principal, and remembers it", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    const assertion = yield* Effect.provide(Identity.signFor("users", "GET", path), AsRouter)
    const principal = yield* Effect.provide(Identity.signPrincipal(alice), AsGateway)
    expect(yield* atUsers(assertion, principal)).toEqual(alice)
    // Without a principal, the request is the calling Worker's own.
    expect(yield* atUsers(assertion)).toEqual({ kind: "service", sub: "router" })
    yield* TestClock.adjust("59 seconds")
    expect(yield* atUsers(assertion, principal)).toEqual(alice)
    yield* TestClock.adjust("2 seconds")
    expect(yield* refusal(atUsers(assertion, principal))).toMatch(/^Unauthorized: .*expired/)
  }))

it.effect("refuses every forgery: wrong key, another Worker's key, unknown or injected key id, wrong audience, another request, expired, not yet valid", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    const cases: Array<[string, Promise<string> | string, RegExp]> = [
      ["signed by a key the mesh never published", signAs("stranger", claims({ iss: "gateway" })), /unknown key/],
      ["the products key claiming to be the router", resign("products", claims()), /another Worker than its key's/],
      ["addressed to products", signAs("router", claims({ aud: "products" })), /addressed to products/],
      ["for another path", signAs("router", claims({ htp: "/api/users/bob" })), /another request/],
      ["for another method", signAs("router", claims({ htm: "DELETE" })), /another request/],
      ["expired", signAs("router", claims({ iat: now - 120_000, exp: now - 60_000 })), /expired/],
      ["from the future", signAs("router", claims({ iat: now + 30_000, exp: now + 90_000 })), /expired/],
      ["valid longer than 60 s", signAs("router", claims({ exp: now + 3_600_000 })), /expired/],
      ["with its payload changed", tamper(signAs("router", claims()), { htp: "/api/users/bob" }), /not signed/],
      ["with alg none", unsigned(claims(), { alg: "none", kid: "x" }), /not ES256/],
      ["with alg HS256", unsigned(claims(), { alg: "HS256", kid: "x" }), /not ES256/],
      ["with an injected kid", unsigned(claims(), { alg: "ES256", kid: "../../etc/passwd", jwk: {} }), /unknown key/],
      ["garbage", "a.b.c", /not ES256|malformed/]
    ]
    for (const [name, assertion, expected] of cases) {
      const refused = yield* refusal(atUsers(yield* Effect.promise(async () => await assertion)))
      expect(refused, name).toMatch(/^Unauthorized: /)
      expect(refused, name).toMatch(expected)
    }
    expect(yield* refusal(atUsers(undefined))).toMatch(/required/)
  }))

it.effect("believes a principal only from the edge: a principal minted by any other Worker is refused, and only the edge can sign one", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    const assertion = yield* Effect.promise(() => signAs("router", claims()))
    const admin = { kind: "user", sub: "mallory", roles: ["admin"] }
    const byProducts = yield* Effect.promise(() => signAs("products", { iss: "products", principal: admin, iat: now, exp: now + 60_000 }))
    expect(yield* refusal(atUsers(assertion, byProducts))).toMatch(/products is not the edge/)
    const notSigned = yield* Effect.promise(() => tamper(signAs("gateway", { iss: "gateway", principal: alice, iat: now, exp: now + 60_000 }), { principal: admin }))
    expect(yield* refusal(atUsers(assertion, notSigned))).toMatch(/not signed/)
    // The router's own code cannot mint one either: asking is a defect, not a signature.
    const exit = yield* Effect.exit(Effect.provide(Identity.signPrincipal(admin as Identity.Identity), AsRouter))
    expect(exit._tag).toBe("Failure")
  }))

it.effect("applies the policy before anything else: a caller outside it gets 403, and no policy means no caller", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    const fromProducts = (method: string, at: string) =>
      Effect.promise(() => signAs("products", { iss: "products", aud: "users", htm: method, htp: at, iat: now, exp: now + 60_000 }))
    expect(yield* atUsers(yield* fromProducts("GET", path))).toEqual({ kind: "service", sub: "products" })
    expect(yield* refusal(atUsers(yield* fromProducts("DELETE", path), undefined, "DELETE"))).toBe(
      `Forbidden: products may not call DELETE ${path} on users`
    )
    expect(yield* refusal(atUsers(yield* fromProducts("GET", "/api/users"), undefined, "GET", "/api/users"))).toMatch(/^Forbidden/)
    // The gateway may call only the router.
    const fromGateway = yield* Effect.promise(() => signAs("gateway", claims({ iss: "gateway" })))
    expect(yield* refusal(atUsers(fromGateway))).toMatch(/^Forbidden: gateway may not call/)
    // The router has no MESH_POLICY here: it refuses everyone.
    const toRouter = yield* Effect.promise(() => signAs("gateway", { ...claims({ iss: "gateway", aud: "router" }) }))
    expect(yield* refusal(Effect.provide(Identity.verifyRequest("GET", path, toRouter, undefined), AsRouter))).toMatch(
      /router has no MESH_POLICY/
    )
  }))

it.effect("a signer reuses an assertion for the same audience and request for 10 s, then signs anew", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    const sign = Identity.signFor("users", "GET", path)
    const first = yield* sign
    yield* TestClock.adjust("9 seconds")
    expect(yield* sign).toBe(first)
    expect(yield* Identity.signFor("users", "GET", "/api/users/bob")).not.toBe(first)
    expect(yield* Identity.signFor("products", "GET", path)).not.toBe(first)
    yield* TestClock.adjust("2 seconds")
    expect(yield* sign).not.toBe(first)
  }).pipe(Effect.provide(AsRouter)))

it("binds an assertion to the path of a full URL or a bare path, never the query", () => {
  expect(pathOf("http://users.internal/api/users/7?x=1")).toBe("/api/users/7")
  expect(pathOf("/api/users/7?x=1")).toBe("/api/users/7")
  expect(pathOf("/health")).toBe("/health")
  expect(pathOf("http://router.internal")).toBe("/")
})

it.effect("rotates a Worker's key under continuous requests without one failure", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    // The router's old key and a new one, both published; the router switches mid-stream.
    const old = JSON.parse(meshEnv("router").MESH_SIGNING_KEY) as Identity.SigningKey
    const fresh = yield* Effect.promise(async () => {
      const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]) as CryptoKeyPair
      const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey) as JsonWebKey
      return { kty: "EC", crv: "P-256", x: jwk.x!, y: jwk.y!, d: jwk.d!, kid: "router-new", worker: "router" } as const
    })
    const published = { ...JSON.parse(meshEnv("users").MESH_PUBLIC_KEYS), "router-new": { kty: "EC", crv: "P-256", x: fresh.x, y: fresh.y, worker: "router" } }
    const users = (keys: object) =>
      Identity.IdentityKey.layer.pipe(Layer.provide(envLayer({ ...meshEnv("users", usersPolicy), MESH_PUBLIC_KEYS: JSON.stringify(keys) })))
    const router = (key: Identity.SigningKey) =>
      Identity.IdentityKey.layer.pipe(Layer.provide(envLayer({ ...meshEnv("router"), MESH_SIGNING_KEY: JSON.stringify(key) })))
    // 1. add: every Worker learns the new key; 2. activate: the router signs with it; 3. retire the old one after 60 s.
    const withBoth = yield* Layer.build(users(published))
    const oldRouter = yield* Layer.build(router(old))
    const newRouter = yield* Layer.build(router(fresh))
    let failures = 0
    for (let i = 0; i < 200; i++) {
      const signer = i < 100 ? oldRouter : newRouter
      const at = `/api/users/u${i}`
      const assertion = yield* Effect.provide(Identity.signFor("users", "GET", at), signer)
      const exit = yield* Effect.exit(Effect.provide(Identity.verifyRequest("GET", at, assertion, undefined), withBoth))
      if (exit._tag === "Failure") failures++
      yield* TestClock.adjust("100 millis")
    }
    expect(failures).toBe(0)
    // After the retirement, an assertion of the old key is refused.
    const retiredOld = Object.fromEntries(Object.entries(published).filter(([kid]) => kid !== old.kid))
    const late = yield* Effect.provide(Identity.signFor("users", "GET", "/api/users/late"), oldRouter)
    const afterRetirement = yield* Layer.build(users(retiredOld))
    expect(yield* refusal(Effect.provide(Identity.verifyRequest("GET", "/api/users/late", late, undefined), afterRetirement))).toMatch(/unknown key/)
  }).pipe(Effect.scoped))

/** Re-signs claims with `worker`'s key (the claims may say otherwise). */
const resign = (worker: string, body: object) => signAs(worker, body)

/** The same assertion with its payload changed, the signature kept. */
const tamper = async (signed: Promise<string>, changes: object) => {
  const [header, payload, signature] = (await signed).split(".")
  const decoded = JSON.parse(atob(payload!.replaceAll("-", "+").replaceAll("_", "/")))
  const changed = btoa(JSON.stringify({ ...decoded, ...changes })).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")
  return `${header}.${changed}.${signature}`
}

/** An assertion with a header of our choosing and no valid signature. */
const unsigned = (body: object, header: object) => {
  const encode = (value: object) => btoa(JSON.stringify(value)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")
  return `${encode(header)}.${encode(body)}.${encode({ sig: "none" })}`
}

it.effect("answers a remembered, valid request at once, and leaves anything else to the full check", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(now)
    const keys = yield* Identity.IdentityKey
    const assertion = yield* Effect.promise(() => signAs("router", claims()))
    const principal = yield* Effect.promise(() => signAs("gateway", { iss: "gateway", principal: alice, iat: now, exp: now + 60_000 }))
    // Not verified yet: not known.
    expect(Identity.known(keys, now, "GET", path, assertion, principal)).toBeUndefined()
    expect(yield* Identity.verifyRequest("GET", path, assertion, principal)).toEqual(alice)
    expect(Identity.known(keys, now, "GET", path, assertion, principal)).toEqual(alice)
    expect(Identity.known(keys, now, "GET", path, assertion, undefined)).toEqual({ kind: "service", sub: "router" })
    // Another request, method or a later time: left to the full check, which refuses.
    expect(Identity.known(keys, now, "GET", "/api/users/bob", assertion, principal)).toBeUndefined()
    expect(Identity.known(keys, now, "DELETE", path, assertion, principal)).toBeUndefined()
    expect(Identity.known(keys, now + 61_000, "GET", path, assertion, principal)).toBeUndefined()
  }).pipe(Effect.provide(AsUsers)))
