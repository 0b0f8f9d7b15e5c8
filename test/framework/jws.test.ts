/**
 * `verifyJwt` (src/layers/security/Jws.ts), the gateway's access-token check
 * on WebCrypto alone, rule by rule at each boundary; and that it takes what
 * jose signs, and auth's own `signJws` output, alike. The end-to-end forgeries
 * (alg none, HS256 with the public key, jku, a retired key ...) are in
 * test/mesh/auth.test.ts, against the real gateway.
 */
import { describe, expect, it } from "vitest"
import { SignJWT } from "jose"
import { importSigningKey, importVerifyingKey, type JwtRules, signJws, verifyJwt } from "../../src/layers/security/Jws.ts"
import { testKeys } from "../helpers.ts"

const jwk = testKeys.signing as unknown as Parameters<typeof importSigningKey>[0]
const now = 1_800_000_000
const rules: JwtRules = {
  issuer: "meshwork-auth",
  audience: "meshwork-api",
  typ: "at+jwt",
  required: ["iss", "aud", "sub", "iat", "exp", "jti"],
  clockToleranceSeconds: 30,
  maxTokenAgeSeconds: 300,
  now: now * 1000
}
const claims = { iss: "meshwork-auth", aud: "meshwork-api", sub: "u1", iat: now, exp: now + 300, jti: "j1", roles: ["user"] }

const b64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")
const text = (value: unknown) => b64(new TextEncoder().encode(JSON.stringify(value)))

/** Signs any header and payload with the test key, as an attacker holding it could. */
const sign = async (header: object, payload: unknown) => {
  const key = await importSigningKey(jwk)
  const input = `${text(header)}.${text(payload)}`
  const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key, new TextEncoder().encode(input))
  return `${input}.${b64(new Uint8Array(signature))}`
}
const header = { alg: "ES256", kid: jwk.kid, typ: "at+jwt" }
const verify = async (token: string, overrides: Partial<JwtRules> = {}) =>
  verifyJwt(token, await importVerifyingKey(jwk), { ...rules, ...overrides })
const reason = async (token: string, overrides: Partial<JwtRules> = {}) => {
  const result = await verify(token, overrides)
  return result.ok ? "accepted" : result.reason
}

describe("verifyJwt", () => {
  it("accepts what jose signs and what signJws signs, with the same claims", async () => {
    const byJose = await new SignJWT({ roles: ["user"] })
      .setProtectedHeader(header)
      .setIssuer(claims.iss).setAudience(claims.aud).setSubject(claims.sub)
      .setIssuedAt(now).setExpirationTime(now + 300).setJti(claims.jti)
      .sign(await importSigningKey(jwk))
    const bySignJws = await signJws(await importSigningKey(jwk), jwk.kid, claims, "at+jwt")
    for (const token of [byJose, bySignJws]) {
      const result = await verify(token)
      expect(result.ok && result.payload).toEqual(claims)
    }
  })

  it("compares typ without case or an application/ prefix, and needs it", async () => {
    expect(await reason(await sign({ ...header, typ: "application/at+jwt" }, claims))).toBe("accepted")
    expect(await reason(await sign({ ...header, typ: "AT+JWT" }, claims))).toBe("accepted")
    expect(await reason(await sign({ ...header, typ: "JWT" }, claims))).toBe("typ")
    expect(await reason(await sign({ alg: "ES256", kid: jwk.kid }, claims))).toBe("typ")
  })

  it("takes ES256 only, whatever the header says, and refuses any crit", async () => {
    expect(await reason(await sign({ ...header, alg: "HS256" }, claims))).toBe("algorithm")
    expect(await reason(await sign({ ...header, alg: "none" }, claims))).toBe("algorithm")
    expect(await reason(await sign({ ...header, crit: ["exp"] }, claims))).toBe("unsupported crit header")
  })

  it("refuses a tampered or malformed token", async () => {
    const token = await sign(header, claims)
    const [h, , s] = token.split(".")
    expect(await reason(`${h}.${text({ ...claims, roles: ["admin"] })}.${s}`)).toBe("signature")
    expect(await reason(`${h}.${text(claims)}.${s!.slice(0, -4)}`)).toBe("signature")
    expect(await reason(token.split(".").slice(0, 2).join("."))).toBe("malformed")
    expect(await reason(`e30.${text(claims)}.${s}`)).toBe("algorithm")
    expect(await reason(`!!.${text(claims)}.${s}`)).toBe("malformed header")
    expect(await reason(await sign(header, ["not", "an", "object"]))).toBe("malformed claims")
  })

  it("checks issuer, audience (a string or a list) and required claims", async () => {
    expect(await reason(await sign(header, { ...claims, iss: "other" }))).toBe("issuer")
    expect(await reason(await sign(header, { ...claims, aud: "other" }))).toBe("audience")
    expect(await reason(await sign(header, { ...claims, aud: ["other", "meshwork-api"] }))).toBe("accepted")
    expect(await reason(await sign(header, { ...claims, aud: ["other"] }))).toBe("audience")
    const { jti: _, ...noJti } = claims
    expect(await reason(await sign(header, noJti))).toBe("missing jti")
    // The issuer, audience and age are checked against claims that must be there, whatever else is required.
    const { iss: _i, ...noIss } = claims
    const { iat: _t, ...noIat } = claims
    expect(await reason(await sign(header, noIss), { required: [] })).toBe("missing iss")
    expect(await reason(await sign(header, noIat), { required: [] })).toBe("missing iat")
    expect(await reason(await sign(header, { ...claims, sub: 42 }))).toBe("malformed claims")
    expect(await reason(await sign(header, { ...claims, exp: "soon" }))).toBe("malformed claims")
  })

  it("allows the clock tolerance on exp, nbf and iat, to the second", async () => {
    expect(await reason(await sign(header, { ...claims, iat: now - 100, exp: now - 30 }))).toBe("expired")
    expect(await reason(await sign(header, { ...claims, iat: now - 100, exp: now - 29 }))).toBe("accepted")
    expect(await reason(await sign(header, { ...claims, nbf: now + 31 }))).toBe("not yet valid")
    expect(await reason(await sign(header, { ...claims, nbf: now + 30 }))).toBe("accepted")
    expect(await reason(await sign(header, { ...claims, iat: now + 31 }))).toBe("issued in the future")
    expect(await reason(await sign(header, { ...claims, iat: now - 331, exp: now + 100 }))).toBe("too old")
    expect(await reason(await sign(header, { ...claims, iat: now - 330, exp: now + 100 }))).toBe("accepted")
  })
})
