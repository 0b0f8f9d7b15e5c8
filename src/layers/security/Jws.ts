/**
 * The compact JWS (ES256) of the mesh's identity assertions, on WebCrypto
 * alone: what the Workers sign with, and what the Node-side tools (tests'
 * set-up, the benchmark) sign with too.
 */
import * as Base64Url from "effect/encoding/Base64Url"

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
export const ecdsa = { name: "ECDSA", namedCurve: "P-256" } as const
export const es256 = { name: "ECDSA", hash: "SHA-256" } as const

/** Signs `claims` as a compact JWS (ES256) under `kid`. */
export const signJws = async (key: Key, kid: string, claims: object): Promise<string> => {
  const body = `${Base64Url.encode(JSON.stringify({ alg: "ES256", kid, typ: "meshwork+jwt" }))}.${Base64Url.encode(JSON.stringify(claims))}`
  const signature = await crypto.subtle.sign(es256, key, encoder.encode(body))
  return `${body}.${Base64Url.encode(new Uint8Array(signature))}`
}

/** Imports a private signing key (a JWK) for ES256. */
export const importSigningKey = (jwk: PrivateJwk): Promise<Key> =>
  crypto.subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d }, ecdsa, false, ["sign"])

/** The path an assertion is bound to: the URL's path (the URL may be a bare path), without its query. */
export const pathOf = (url: string): string => {
  const start = url.startsWith("/") ? 0 : url.indexOf("/", url.indexOf("//") + 2)
  if (start === -1) return "/"
  const query = url.indexOf("?", start)
  return query === -1 ? url.slice(start) : url.slice(start, query)
}
