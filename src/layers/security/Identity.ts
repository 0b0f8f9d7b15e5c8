/**
 * Identity inside the mesh.
 *
 * The gateway verifies the client's token, drops every identity header the
 * client sent, and passes the verified identity on as one header the other
 * Workers can trust: `x-meshwork-identity`, an assertion signed with
 * HMAC-SHA256 under the mesh's shared secret `MESH_IDENTITY_SECRET`, valid for
 * one minute. Internal Workers refuse any request without a valid assertion
 * (defence in depth: service bindings are private, but a bug in one Worker
 * should not hand another its users). Workers calling each other sign an
 * assertion of their own, as a `service` identity.
 *
 * ```ts
 * // an HttpApi service: the middleware provides CurrentIdentity to handlers
 * class Api extends HttpApi.make("users").add(UsersGroup).middleware(MeshIdentity) {}
 * Layer.provide(MeshIdentity.layer)
 * // a plain handler
 * fetch: requireIdentity(handler)
 * ```
 */
import { Clock, Config, Context, Effect, Layer, Redacted, Result, Schema } from "effect"
import { Base64Url } from "effect/encoding"
import { HttpApiMiddleware, HttpApiSecurity } from "effect/http-api"
import { HttpClientRequest } from "effect/http"
import * as Problem from "../../runtime/Problem.ts"

export const header = "x-meshwork-identity"

/** Who is asking: a verified user, another Worker of the mesh, or nobody (public routes). */
export const Identity = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("user"), sub: Schema.String, roles: Schema.Array(Schema.String) }),
  Schema.Struct({ kind: Schema.Literal("service"), sub: Schema.String }),
  Schema.Struct({ kind: Schema.Literal("anonymous") })
])
export type Identity = typeof Identity.Type

const Assertion = Schema.Struct({
  identity: Identity,
  /** Issued at and expires, epoch milliseconds. */
  iat: Schema.Number,
  exp: Schema.Number
})
const decodeAssertion = Schema.decodeUnknownEffect(Schema.fromJsonString(Assertion))

/** How long an assertion stays valid, and how far ahead of our clock its issuer's may be. */
export const lifetimeMillis = 60_000
const skewMillis = 5_000

/** Identity headers a client might send to impersonate someone; the gateway drops them all. */
export const spoofableHeaders: ReadonlyArray<string> = [
  header,
  "x-user-id",
  "x-user-roles",
  "x-user-email",
  "x-authenticated-user",
  "x-forwarded-user",
  "x-remote-user",
  "remote-user"
]

const spoofable = new Set(spoofableHeaders)

/**
 * A copy of `headers` without any identity header a client could have forged
 * (and any `x-meshwork-*` header), nor the names in `alsoDrop`. One pass over
 * the names present: each call into the runtime's Headers costs.
 */
export const stripSpoofable = (headers: Headers, alsoDrop: ReadonlyArray<string> = []): Headers => {
  const copy = new Headers(headers)
  const dropped: Array<string> = [...alsoDrop]
  for (const name of headers.keys()) if (spoofable.has(name) || name.startsWith("x-meshwork-")) dropped.push(name)
  for (const name of dropped) copy.delete(name)
  return copy
}

// Stateless codecs, shared by every request of the isolate.
const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** How long a signer reuses one assertion for the same identity (well inside its lifetime). */
const reuseMillis = 10_000

interface Signed {
  readonly value: string
  readonly reuseUntil: number
}

interface Verified {
  readonly identity: Identity
  readonly iat: number
  readonly exp: number
}

/**
 * The mesh's shared HMAC key, imported once per isolate from
 * `MESH_IDENTITY_SECRET`, with the isolate's memory of assertions: those it
 * signed (reused for the same identity for 10 s) and those it verified (until
 * they expire), so a busy caller does not pay an HMAC and a JSON parse per
 * request. Both maps hold strings and parsed values only, never I/O.
 */
export class IdentityKey extends Context.Service<IdentityKey, {
  readonly key: CryptoKey
  readonly signed: Map<string, Signed>
  readonly verified: Map<string, Verified>
}>()("meshwork/layers/security/Identity/IdentityKey") {
  static readonly layer = Layer.effect(
    IdentityKey,
    Effect.gen(function*() {
      const secret = yield* Config.schema(
        Schema.Redacted(Schema.String.check(Schema.isMinLength(32))),
        "MESH_IDENTITY_SECRET"
      )
      const key = yield* Effect.promise(() =>
        crypto.subtle.importKey(
          "raw",
          encoder.encode(Redacted.value(secret)),
          { name: "HMAC", hash: "SHA-256" },
          false,
          ["sign", "verify"]
        )
      )
      return { key, signed: new Map<string, Signed>(), verified: new Map<string, Verified>() }
    })
  )
}

const remember = <V>(map: Map<string, V>, key: string, value: V) => {
  if (map.size >= 10_000) map.clear()
  map.set(key, value)
}

const fromBase64url = (text: string): Uint8Array | undefined => Result.getOrUndefined(Base64Url.decode(text))

/** Signs `identity` as an assertion header value, valid for `lifetimeMillis`. */
export const sign = (identity: Identity) =>
  Effect.gen(function*() {
    const { key, signed } = yield* IdentityKey
    const now = yield* Clock.currentTimeMillis
    const cacheKey = JSON.stringify(identity)
    const reusable = signed.get(cacheKey)
    if (reusable !== undefined && now < reusable.reuseUntil) return reusable.value
    const payload = Base64Url.encode(JSON.stringify({ identity, iat: now, exp: now + lifetimeMillis }))
    const body = `v1.${payload}`
    const signature = yield* Effect.promise(() => crypto.subtle.sign("HMAC", key, encoder.encode(body)))
    const value = `${body}.${Base64Url.encode(new Uint8Array(signature))}`
    remember(signed, cacheKey, { value, reuseUntil: now + reuseMillis })
    return value
  })

const refused = (detail: string) => new Problem.Unauthorized({ detail })

const checkTimes = (assertion: { readonly iat: number; readonly exp: number }, now: number) =>
  assertion.exp >= now && assertion.iat <= now + skewMillis && assertion.exp - assertion.iat <= lifetimeMillis

/** Verifies an assertion header value; anything but a valid, unexpired assertion is refused. */
export const verify = (value: string | null | undefined) =>
  Effect.gen(function*() {
    if (value === null || value === undefined || value.length > 4096) return yield* refused("A mesh identity is required")
    const { key, verified } = yield* IdentityKey
    const now = yield* Clock.currentTimeMillis
    const known = verified.get(value)
    if (known !== undefined) {
      if (checkTimes(known, now)) return known.identity
      return yield* refused("The mesh identity has expired")
    }
    const parts = value.split(".")
    const signature = parts.length === 3 && parts[0] === "v1" ? fromBase64url(parts[2]!) : undefined
    if (signature === undefined) return yield* refused("The mesh identity is malformed")
    const valid = yield* Effect.promise(() =>
      crypto.subtle.verify("HMAC", key, signature, encoder.encode(`${parts[0]}.${parts[1]}`))
    )
    if (!valid) return yield* refused("The mesh identity is not signed by this mesh")
    const json = decoder.decode(fromBase64url(parts[1]!) ?? new Uint8Array())
    const assertion = yield* Effect.mapError(decodeAssertion(json), () => refused("The mesh identity is malformed"))
    if (!checkTimes(assertion, now)) return yield* refused("The mesh identity has expired")
    remember(verified, value, assertion)
    return assertion.identity
  })

/** The identity of the current request, as the mesh asserted it. */
export class CurrentIdentity extends Context.Service<CurrentIdentity, Identity>()(
  "meshwork/layers/security/Identity/CurrentIdentity"
) {}

/**
 * HttpApi middleware: verifies the assertion header and provides
 * `CurrentIdentity` to every handler. Its typed clients sign one for the
 * calling Worker (see `layerClient`).
 */
export class MeshIdentity extends HttpApiMiddleware.Service<MeshIdentity, {
  provides: CurrentIdentity
  requires: never
}>()("meshwork/layers/security/Identity/MeshIdentity", {
  security: { assertion: HttpApiSecurity.apiKey({ key: header, in: "header" }) },
  error: Problem.Unauthorized,
  requiredForClient: true
}) {
  /** The server side, for Workers that serve an API using this middleware. */
  static readonly layer = Layer.effect(
    MeshIdentity,
    IdentityKey.useSync((key) =>
      MeshIdentity.of({
        assertion: (httpEffect, { credential }) =>
          Effect.flatMap(
            Effect.provideService(verify(Redacted.value(credential)), IdentityKey, key),
            (identity) => Effect.provideService(httpEffect, CurrentIdentity, identity)
          )
      }))
  ).pipe(Layer.provide(IdentityKey.layer))

  /** The client side: every call is signed as the service `name`. */
  static readonly layerClient = (name: string) =>
    HttpApiMiddleware.layerClient(MeshIdentity, ({ next, request }) =>
      Effect.flatMap(
        Effect.orDie(sign({ kind: "service", sub: name })),
        (assertion) => next(HttpClientRequest.setHeader(request, header, assertion))
      )).pipe(Layer.provide(IdentityKey.layer))
}

/** Wraps a plain fetch handler: refuse requests without a valid assertion, provide CurrentIdentity to the rest. */
export const requireIdentity = <E, R>(handler: (request: Request) => Effect.Effect<Response, E, R>) =>
(request: Request): Effect.Effect<Response, E | Problem.Unauthorized, Exclude<R, CurrentIdentity> | IdentityKey> =>
  Effect.flatMap(verify(request.headers.get(header)), (identity) =>
    Effect.provideService(handler(request), CurrentIdentity, identity))

/** Whether the identity is a user with one of `roles`. */
export const hasRole = (identity: Identity, ...roles: ReadonlyArray<string>): boolean =>
  identity.kind === "user" && identity.roles.some((role) => roles.includes(role))

/** Whether the identity is the user `userId`. */
export const isUser = (identity: Identity, userId: string): boolean => identity.kind === "user" && identity.sub === userId

/** Whether the identity is another Worker of the mesh. */
export const isService = (identity: Identity): boolean => identity.kind === "service"

/** Succeeds with the current identity if `allowed` says so, else 403. */
export const authorize = (allowed: (identity: Identity) => boolean, detail: string) =>
  CurrentIdentity.use((identity) =>
    allowed(identity) ? Effect.succeed(identity) : Effect.fail(new Problem.Forbidden({ detail }))
  )
