/**
 * Compact JWS (ES256) on WebCrypto alone: the mesh's identity assertions,
 * signed by every Worker and by the Node-side tools (tests' set-up, the
 * benchmark), and the access tokens auth signs and the gateway verifies
 * (`verifyJwt`). No JWT library: the rules are few and fixed (ES256 only,
 * keys only from the caller), and a library would be most of a bundle's
 * security code.
 */
import * as Base64Url from "effect/encoding/Base64Url"
import * as Result from "effect/Result"

/** A WebCrypto key, named without a runtime's global type. */
export type Key = Awaited<ReturnType<typeof crypto.subtle.importKey>>

/** An ES256 private key as a JWK (with its key id and the Worker it speaks for). */
export interface PrivateJwk {
  readonly kty: "EC"
  readonly crv: "P-256"
  readonly x: string
  readonly y: string
  readonly d: string
  readonly kid: string
}

const encoder = new TextEncoder()
const ecdsa = { name: "ECDSA", namedCurve: "P-256" } as const
const es256 = { name: "ECDSA", hash: "SHA-256" } as const

/**
 * Signs `claims` as a compact JWS (ES256) under `kid`, of type `typ` (the
 * mesh's identity assertions by default; auth's access tokens are `at+jwt`).
 */
export const signJws = async (key: Key, kid: string, claims: object, typ = "meshwork+jwt"): Promise<string> => {
  const body = `${Base64Url.encode(JSON.stringify({ alg: "ES256", kid, typ }))}.${Base64Url.encode(JSON.stringify(claims))}`
  const signature = await crypto.subtle.sign(es256, key, encoder.encode(body))
  return `${body}.${Base64Url.encode(new Uint8Array(signature))}`
}

/** Imports a private signing key (a JWK) for ES256. */
export const importSigningKey = (jwk: PrivateJwk): Promise<Key> =>
  crypto.subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d }, ecdsa, false, ["sign"])

const decoder = new TextDecoder()

/** The bytes of a base64url segment, or `undefined` if it is not one. */
const fromBase64url = (text: string): Uint8Array | undefined => Result.getOrUndefined(Base64Url.decode(text))

/** A base64url segment's JSON object, or `undefined` (not base64url, not JSON, or not an object). */
export const segmentJson = (segment: string): Record<string, unknown> | undefined => {
  const bytes = fromBase64url(segment)
  if (bytes === undefined) return undefined
  try {
    const value: unknown = JSON.parse(decoder.decode(bytes))
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

/**
 * Whether the three `parts` of a compact JWS carry an ES256 signature (raw r||s, 64 bytes) by `key`
 * over the first two, as they were sent. The one signature check of the mesh's assertions and of
 * access tokens.
 */
export const signedBy = (parts: ReadonlyArray<string>, key: Key): Promise<boolean> => {
  const signature = fromBase64url(parts[2]!)
  if (signature === undefined || signature.length !== 64) return Promise.resolve(false)
  return crypto.subtle.verify(es256, key, signature, encoder.encode(`${parts[0]}.${parts[1]}`))
}

/** Imports a public verification key (a JWK) for ES256. */
export const importVerifyingKey = (jwk: { readonly kty?: unknown; readonly crv?: unknown; readonly x?: unknown; readonly y?: unknown }): Promise<Key> =>
  crypto.subtle.importKey("jwk", { kty: jwk.kty as string, crv: jwk.crv as string, x: jwk.x as string, y: jwk.y as string }, ecdsa, false, ["verify"])

/** What a JWT must satisfy besides its signature (RFC 7519, RFC 8725, RFC 9068 for `at+jwt`). */
export interface JwtRules {
  readonly issuer: string
  readonly audience: string
  /** The `typ` header, compared without case and without an `application/` prefix. */
  readonly typ: string
  /** Claims that must be present besides `iss`, `aud` and `iat`, which always must (`exp`, `sub` ...). */
  readonly required: ReadonlyArray<string>
  /** Seconds of clock skew allowed on `exp`, `nbf` and `iat`. */
  readonly clockToleranceSeconds: number
  /** Refused once `iat` is older than this. */
  readonly maxTokenAgeSeconds: number
  /** Now, in milliseconds. */
  readonly now: number
}

/** A verified token's header and claims, or why it was refused. */
export type JwtResult =
  | { readonly ok: true; readonly header: Record<string, unknown>; readonly payload: Record<string, unknown> }
  | { readonly ok: false; readonly reason: string }

const refuse = (reason: string): JwtResult => ({ ok: false, reason })

const mediaType = (typ: string) => {
  const lower = typ.toLowerCase()
  return lower.startsWith("application/") ? lower.slice("application/".length) : lower
}

/** The protected header of a compact JWS, or `undefined` if it is malformed. */
export const jwsHeader = (token: string): Record<string, unknown> | undefined => {
  const parts = token.split(".")
  return parts.length === 3 ? segmentJson(parts[0]!) : undefined
}

/**
 * Verifies a compact JWS JWT signed with ES256 by `key`, then its claims by
 * `rules`. The algorithm is ES256 whatever the header says; a `crit` header
 * is refused (no extension is understood); `jku`, `x5u`, `jwk` and the like
 * are never read: the caller chose `key`.
 */
export const verifyJwt = async (token: string, key: Key, rules: JwtRules): Promise<JwtResult> => {
  const parts = token.split(".")
  if (parts.length !== 3) return refuse("malformed")
  const header = segmentJson(parts[0]!)
  if (header === undefined) return refuse("malformed header")
  if (header["alg"] !== "ES256") return refuse("algorithm")
  if (header["crit"] !== undefined) return refuse("unsupported crit header")
  if (typeof header["typ"] !== "string" || mediaType(header["typ"]) !== mediaType(rules.typ)) return refuse("typ")
  if (!(await signedBy(parts, key))) return refuse("signature")
  const payload = segmentJson(parts[1]!)
  if (payload === undefined) return refuse("malformed claims")
  // The issuer, audience and maximum age are checked against claims that must then be there.
  for (const claim of ["iss", "aud", "iat", ...rules.required]) if (payload[claim] === undefined) return refuse(`missing ${claim}`)
  const { iss, aud, sub, jti, iat, exp, nbf } = payload
  if (iss !== rules.issuer) return refuse("issuer")
  if (!(aud === rules.audience || (Array.isArray(aud) && aud.includes(rules.audience)))) return refuse("audience")
  if ((sub !== undefined && typeof sub !== "string") || (jti !== undefined && typeof jti !== "string")) return refuse("malformed claims")
  const isTime = (value: unknown) => value === undefined || (typeof value === "number" && Number.isFinite(value))
  if (typeof iat !== "number" || !Number.isFinite(iat) || !isTime(exp) || !isTime(nbf)) return refuse("malformed claims")
  const now = Math.floor(rules.now / 1000)
  const tolerance = rules.clockToleranceSeconds
  if (typeof exp === "number" && exp <= now - tolerance) return refuse("expired")
  if (typeof nbf === "number" && nbf > now + tolerance) return refuse("not yet valid")
  if (iat > now + tolerance) return refuse("issued in the future")
  if (now - iat - tolerance > rules.maxTokenAgeSeconds) return refuse("too old")
  return { ok: true, header, payload }
}
