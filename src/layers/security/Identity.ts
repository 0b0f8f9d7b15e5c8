/**
 * Identity inside the mesh: every Worker has a key of its own, and no secret
 * is shared between Workers.
 *
 * Each hop carries two assertions, compact JWS signed with ES256:
 * - `x-meshwork-identity`, the calling Worker's service assertion: issuer
 *   (the caller), audience (the Worker called), the request's method and
 *   path, valid for at most 60 s. A Worker accepts only assertions addressed
 *   to itself for the request it is serving, signed by the issuer's own key.
 * - `x-meshwork-principal`, who the request is for: a user and roles, or
 *   anonymous. Only the edge (`MESH_EDGE`, default the gateway) may sign one;
 *   later hops pass it on unchanged. Without one, the request is the calling
 *   Worker's own (a `service` identity).
 *
 * Before a handler runs, the Worker's `MESH_POLICY` must allow the caller the
 * method and path (default deny): a refusal is a 403 problem and an event on
 * the request's span. Keys come from the Worker's vars: `MESH_SIGNING_KEY`
 * (its private key, a JWK with `kid` and `worker`) and `MESH_PUBLIC_KEYS`
 * (every Worker's public keys by key id; `npm run keys` writes both).
 *
 * ```ts
 * // an HttpApi service: the middleware verifies and provides CurrentIdentity to handlers
 * class Api extends HttpApi.make("users").add(UsersGroup).middleware(MeshIdentity) {}
 * Layer.provide(MeshIdentity.layer)
 * // a typed client: each call signed for its audience
 * Layer.provide(MeshIdentity.layerClient("users"))
 * // a plain handler
 * fetch: requireIdentity(handler)
 * ```
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as HttpClientRequest from "effect/http/HttpClientRequest"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSecurity from "effect/http-api/HttpApiSecurity"
import * as Problem from "../../runtime/Problem.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import { pathOf } from "../../runtime/Url.ts"
import { importSigningKey, importVerifyingKey, type Key, segmentJson, signedBy, signJws } from "./Jws.ts"

export { importSigningKey, signJws } from "./Jws.ts"

/** The calling Worker's service assertion. */
export const header = "x-meshwork-identity"
/** The end user (or anonymous) the request is for, asserted by the edge, carried unchanged. */
export const principalHeader = "x-meshwork-principal"

/** Who is asking: a verified user, another Worker of the mesh, or nobody (public routes). */
export const Identity = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("user"), sub: Schema.String, roles: Schema.Array(Schema.String) }),
  Schema.Struct({ kind: Schema.Literal("service"), sub: Schema.String }),
  Schema.Struct({ kind: Schema.Literal("anonymous") })
])
export type Identity = typeof Identity.Type

/** An ES256 private key as a JWK, naming its key id and the Worker it speaks for. */
export const SigningKey = Schema.Struct({
  kty: Schema.Literal("EC"),
  crv: Schema.Literal("P-256"),
  x: Schema.String,
  y: Schema.String,
  d: Schema.String,
  kid: Schema.String,
  worker: Schema.String
})
export type SigningKey = typeof SigningKey.Type

/** Every Worker's public keys, by key id. */
export const PublicKeys = Schema.Record(
  Schema.String,
  Schema.Struct({ kty: Schema.Literal("EC"), crv: Schema.Literal("P-256"), x: Schema.String, y: Schema.String, worker: Schema.String })
)
export type PublicKeys = typeof PublicKeys.Type

/**
 * One rule of a Worker's `MESH_POLICY`: callers (Worker names, or `*` for any
 * Worker of the mesh) allowed `methods` (default all) on `paths` (exact, or a
 * prefix ending in `/*`, or `*`).
 */
export const PolicyRule = Schema.Struct({
  from: Schema.Array(Schema.String),
  methods: Schema.optionalKey(Schema.Array(Schema.String)),
  paths: Schema.Array(Schema.String)
})
export type PolicyRule = typeof PolicyRule.Type

const ServiceClaims = Schema.Struct({
  iss: Schema.String,
  aud: Schema.String,
  /** The method and path of the request the assertion is for. */
  htm: Schema.String,
  htp: Schema.String,
  /** Issued at and expires, epoch milliseconds. */
  iat: Schema.Number,
  exp: Schema.Number
})
type ServiceClaims = typeof ServiceClaims.Type
const PrincipalClaims = Schema.Struct({ iss: Schema.String, principal: Identity, iat: Schema.Number, exp: Schema.Number })
type PrincipalClaims = typeof PrincipalClaims.Type
const decodeService = Schema.decodeUnknownResult(ServiceClaims)
const decodePrincipal = Schema.decodeUnknownResult(PrincipalClaims)

/** How long an assertion stays valid, and how far ahead of our clock its issuer's may be. */
export const lifetimeMillis = 60_000
const skewMillis = 5_000

/** Identity headers a client might send to impersonate someone; the gateway drops them all. */
export const spoofableHeaders: ReadonlyArray<string> = [
  header,
  principalHeader,
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
 * Drops from `headers`, in place, any identity header a client could have
 * forged (and any `x-meshwork-*` header), and the names in `alsoDrop`. One
 * pass over the names present: each call into the runtime's Headers costs.
 */
export const dropSpoofable = (headers: Headers, alsoDrop: ReadonlyArray<string> = []): void => {
  const dropped: Array<string> = [...alsoDrop]
  for (const name of headers.keys()) if (spoofable.has(name) || name.startsWith("x-meshwork-")) dropped.push(name)
  for (const name of dropped) headers.delete(name)
}

// Stateless codecs, shared by every request of the isolate.

/** How long a signer reuses one assertion for the same audience and request (well inside its lifetime). */
const reuseMillis = 10_000

interface Signed {
  readonly value: string
  readonly reuseUntil: number
}

/**
 * This Worker's keys and policy, read once per isolate, with its memory of
 * assertions: those it signed (reused for the same audience and request for
 * 10 s) and those it verified (until they expire), so a busy hop does not pay
 * an ECDSA operation and a JSON parse per request. Both maps hold strings and
 * parsed values only, never I/O.
 */
export class IdentityKey extends Context.Service<IdentityKey, {
  /** The Worker's name in the mesh: the issuer of what it signs, the audience it accepts. */
  readonly self: string
  readonly kid: string
  readonly key: Key
  readonly publicKeys: ReadonlyMap<string, { readonly worker: string; readonly key: Key }>
  /** The Workers whose principal assertions are believed. */
  readonly edge: ReadonlySet<string>
  readonly policy: ReadonlyArray<PolicyRule> | undefined
  readonly signed: Map<string, Signed>
  readonly verified: Map<string, ServiceClaims | PrincipalClaims>
}>()("meshwork/layers/security/Identity/IdentityKey") {
  static readonly layer = Layer.effect(
    IdentityKey,
    Effect.gen(function*() {
      const signing = yield* Config.schema(Schema.Redacted(Schema.fromJsonString(SigningKey)), "MESH_SIGNING_KEY")
      const published = yield* Config.schema(Schema.fromJsonString(PublicKeys), "MESH_PUBLIC_KEYS")
      const policy = yield* Config.schema(Schema.Array(PolicyRule), "MESH_POLICY").pipe(
        Config.option
      )
      const edge = yield* Config.String("MESH_EDGE").pipe(Config.withDefault("gateway"))
      const jwk = Redacted.value(signing)
      const key = yield* Effect.promise(() => importSigningKey(jwk))
      const publicKeys = new Map<string, { worker: string; key: Key }>()
      for (const [kid, entry] of Object.entries(published)) {
        const imported = yield* Effect.promise(() => importVerifyingKey(entry))
        publicKeys.set(kid, { worker: entry.worker, key: imported })
      }
      return IdentityKey.of({
        self: jwk.worker,
        kid: jwk.kid,
        key,
        publicKeys,
        edge: new Set(edge.split(",").map((name) => name.trim()).filter(Boolean)),
        policy: policy._tag === "Some" ? policy.value : undefined,
        signed: new Map(),
        verified: new Map()
      })
    })
  )
}

const remember = <V>(map: Map<string, V>, key: string, value: V) => {
  if (map.size >= 10_000) map.clear()
  map.set(key, value)
}

const reuse = (name: string, make: (now: number) => object) =>
  Effect.gen(function*() {
    const keys = yield* IdentityKey
    const now = yield* Clock.currentTimeMillis
    const reusable = keys.signed.get(name)
    if (reusable !== undefined && now < reusable.reuseUntil) return reusable.value
    const value = yield* Effect.promise(() => signJws(keys.key, keys.kid, make(now)))
    remember(keys.signed, name, { value, reuseUntil: now + reuseMillis })
    return value
  })

const serviceKey = (audience: string, method: string, path: string) => `s ${audience} ${method} ${path}`
/** Each identity's key, made once per object: an authenticator answers a signed-in user's requests with one object. */
const principalKeys = new WeakMap<Identity, string>()
const principalKey = (principal: Identity) => {
  let key = principalKeys.get(principal)
  if (key === undefined) principalKeys.set(principal, key = `p ${JSON.stringify(principal)}`)
  return key
}

/**
 * What `signFor` or `signPrincipal` would answer now without signing: the
 * assertion this isolate signed for the same call within the last 10 s, if
 * any. The hot path of a proxy asks this first, with no effect to run.
 */
export const reusable = (keys: IdentityKey["Service"], name: string, now: number): string | undefined => {
  const signed = keys.signed.get(name)
  return signed !== undefined && now < signed.reuseUntil ? signed.value : undefined
}
export const reusableFor = (keys: IdentityKey["Service"], audience: string, method: string, path: string, now: number) =>
  reusable(keys, serviceKey(audience, method, path), now)
export const reusablePrincipal = (keys: IdentityKey["Service"], principal: Identity, now: number) =>
  keys.edge.has(keys.self) ? reusable(keys, principalKey(principal), now) : undefined

/** This Worker's assertion for a call to `audience`: `method` and `path` are the request's. */
export const signFor = (audience: string, method: string, path: string) =>
  Effect.flatMap(IdentityKey, (keys) =>
    reuse(serviceKey(audience, method, path), (now): ServiceClaims => ({
      iss: keys.self,
      aud: audience,
      htm: method,
      htp: path,
      iat: now,
      exp: now + lifetimeMillis
    })))

/** The edge's assertion of who a request is for; any other Worker asking for one is a defect. */
export const signPrincipal = (principal: Identity) =>
  Effect.flatMap(IdentityKey, (keys) =>
    keys.edge.has(keys.self)
      ? reuse(principalKey(principal), (now): PrincipalClaims => ({ iss: keys.self, principal, iat: now, exp: now + lifetimeMillis }))
      : Effect.die(new Error(`${keys.self} is not the edge (MESH_EDGE): it cannot assert who a request is for`)))

const refused = (detail: string) => new Problem.Unauthorized({ detail })

const checkTimes = (claims: { readonly iat: number; readonly exp: number }, now: number) =>
  claims.exp >= now && claims.iat <= now + skewMillis && claims.exp - claims.iat <= lifetimeMillis

/**
 * Verifies a compact JWS: ES256 only (the algorithm is ours, never the
 * header's), a key id of the published set, signed by that key, speaking for
 * the Worker the key belongs to; remembered until it expires.
 */
const verifyJws = <C extends ServiceClaims | PrincipalClaims>(
  value: string,
  decode: (input: unknown) => Result.Result<C, unknown>,
  what: string
) =>
  Effect.gen(function*() {
    const keys = yield* IdentityKey
    const now = yield* Clock.currentTimeMillis
    const known = keys.verified.get(value) as C | undefined
    if (known !== undefined) return checkTimes(known, now) ? known : yield* refused(`The ${what} has expired`)
    if (value.length > 4096) return yield* refused(`The ${what} is malformed`)
    const parts = value.split(".")
    if (parts.length !== 3) return yield* refused(`The ${what} is malformed`)
    const header = segmentJson(parts[0]!) as { alg?: unknown; kid?: unknown } | undefined
    if (header?.alg !== "ES256" || typeof header.kid !== "string") return yield* refused(`The ${what} is not ES256 with a key id`)
    const signer = keys.publicKeys.get(header.kid)
    if (signer === undefined) return yield* refused(`The ${what} names an unknown key`)
    if (!(yield* Effect.promise(() => signedBy(parts, signer.key)))) return yield* refused(`The ${what} is not signed by its key`)
    const claims = Result.getOrUndefined(decode(segmentJson(parts[1]!)))
    if (claims === undefined) return yield* refused(`The ${what} is malformed`)
    if (claims.iss !== signer.worker) return yield* refused(`The ${what} claims another Worker than its key's`)
    if (!checkTimes(claims, now)) return yield* refused(`The ${what} has expired`)
    remember(keys.verified, value, claims)
    return claims
  })

const matchesPath = (pattern: string, path: string) =>
  pattern === "*" || pattern === path || (pattern.endsWith("/*") && path.startsWith(pattern.slice(0, -1)))

/** Whether `policy` lets `caller` call `method path`: one rule must name the caller, the method and the path. */
export const allows = (policy: ReadonlyArray<PolicyRule> | undefined, caller: string, method: string, path: string): boolean =>
  policy !== undefined && policy.some((rule) =>
    (rule.from.includes(caller) || rule.from.includes("*")) &&
    (rule.methods === undefined || rule.methods.includes(method)) &&
    rule.paths.some((pattern) => matchesPath(pattern, path)))

/**
 * The identity a request's assertions give when this isolate verified both
 * already, they are still valid, addressed here, for this request, and the
 * policy allows the caller: answered with no effect to run. `undefined`
 * means "not known": `verifyRequest` then decides, and refuses what is wrong.
 */
export const known = (
  keys: IdentityKey["Service"],
  now: number,
  method: string,
  path: string,
  assertion: string | null | undefined,
  principal: string | null | undefined
): Identity | undefined => {
  if (assertion === null || assertion === undefined) return undefined
  const claims = keys.verified.get(assertion)
  if (claims === undefined || !("aud" in claims) || !checkTimes(claims, now)) return undefined
  if (claims.aud !== keys.self || claims.htm !== method || claims.htp !== path || !allows(keys.policy, claims.iss, method, path)) return undefined
  if (principal === null || principal === undefined) return { kind: "service", sub: claims.iss }
  const asserted = keys.verified.get(principal)
  if (asserted === undefined || !("principal" in asserted) || !checkTimes(asserted, now) || !keys.edge.has(asserted.iss)) return undefined
  return asserted.principal
}

/** The identity of a request: known at once (`known`), else verified (`verifyRequest`). */
const identify = (method: string, path: string, assertion: string | null | undefined, principal: string | null | undefined) =>
  Effect.withFiber((fiber): Effect.Effect<Identity, Problem.Unauthorized | Problem.Forbidden, IdentityKey> => {
    const keys = Context.getOrUndefined(fiber.context, IdentityKey)
    const identity = keys === undefined
      ? undefined
      : known(keys, fiber.getRef(Clock.Clock).currentTimeMillisUnsafe(), method, path, assertion, principal)
    return identity !== undefined ? Effect.succeed(identity) : verifyRequest(method, path, assertion, principal)
  })

/**
 * Verifies the request's assertions for `method path` on this Worker and
 * applies its policy: the identity the request is for, 401 without a valid
 * service assertion addressed here, 403 outside the policy.
 */
export const verifyRequest = (method: string, path: string, assertion: string | null | undefined, principal: string | null | undefined) =>
  Effect.gen(function*() {
    if (assertion === null || assertion === undefined) return yield* refused("A mesh identity is required")
    const keys = yield* IdentityKey
    const claims = yield* verifyJws(assertion, decodeService, "mesh identity")
    if (claims.aud !== keys.self) return yield* refused(`The mesh identity is addressed to ${claims.aud}, not ${keys.self}`)
    if (claims.htm !== method || claims.htp !== path) return yield* refused("The mesh identity is for another request")
    if (!allows(keys.policy, claims.iss, method, path)) {
      yield* Telemetry.event("identity.refused", { "meshwork.caller": claims.iss, "http.request.method": method, "url.path": path })
      return yield* new Problem.Forbidden({
        detail: keys.policy === undefined
          ? `${keys.self} has no MESH_POLICY: no caller is allowed`
          : `${claims.iss} may not call ${method} ${path} on ${keys.self}`
      })
    }
    if (principal === null || principal === undefined) return { kind: "service", sub: claims.iss } satisfies Identity as Identity
    const asserted = yield* verifyJws(principal, decodePrincipal, "principal")
    if (!keys.edge.has(asserted.iss)) return yield* refused(`${asserted.iss} is not the edge: it cannot assert who a request is for`)
    return asserted.principal
  })


/** The identity of the current request, as the mesh asserted it. */
export class CurrentIdentity extends Context.Service<CurrentIdentity, Identity>()(
  "meshwork/layers/security/Identity/CurrentIdentity"
) {}

/**
 * HttpApi middleware: verifies the request's assertions, applies the policy
 * and provides `CurrentIdentity` to every handler. Its typed clients sign each
 * call for their audience (see `layerClient`).
 */
export class MeshIdentity extends HttpApiMiddleware.Service<MeshIdentity, {
  provides: CurrentIdentity
  requires: never
}>()("meshwork/layers/security/Identity/MeshIdentity", {
  security: { assertion: HttpApiSecurity.apiKey({ key: header, in: "header" }) },
  error: [Problem.Unauthorized, Problem.Forbidden],
  requiredForClient: true
}) {
  /** The server side, for Workers that serve an API using this middleware. */
  static readonly layer = Layer.effect(
    MeshIdentity,
    IdentityKey.useSync((key) =>
      MeshIdentity.of({
        assertion: (httpEffect, { credential }) =>
          HttpServerRequest.HttpServerRequest.use((request) =>
            Effect.flatMap(
              Effect.provideService(
                identify(request.method, pathOf(request.url), Redacted.value(credential), request.headers[principalHeader]),
                IdentityKey,
                key
              ),
              (identity) => Effect.provideService(httpEffect, CurrentIdentity, identity)
            ))
      }))
  ).pipe(Layer.provide(IdentityKey.layer))

  /** The client side: every call is signed by this Worker for `audience`, the Worker the client calls. */
  static readonly layerClient = (audience: string) =>
    HttpApiMiddleware.layerClient(MeshIdentity, ({ next, request }) =>
      Effect.flatMap(
        Effect.orDie(signFor(audience, request.method, pathOf(request.url))),
        (assertion) => next(HttpClientRequest.setHeader(request, header, assertion))
      )).pipe(Layer.provide(IdentityKey.layer))
}

/** Wraps a plain fetch handler: refuse requests without valid assertions or outside the policy, provide CurrentIdentity to the rest. */
export const requireIdentity = <E, R>(handler: (request: Request) => Effect.Effect<Response, E, R>) =>
(request: Request): Effect.Effect<Response, E | Problem.Unauthorized | Problem.Forbidden, Exclude<R, CurrentIdentity> | IdentityKey> =>
  Effect.flatMap(
    identify(request.method, pathOf(request.url), request.headers.get(header), request.headers.get(principalHeader)),
    (identity) => Effect.provideService(handler(request), CurrentIdentity, identity)
  )

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
