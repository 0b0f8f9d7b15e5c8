/**
 * Zero-trust auth, black-box through the gateway: every way a token can be
 * wrong is refused, the right ones are accepted, identity cannot be spoofed,
 * and each Worker enforces who may do what.
 */
import { env } from "cloudflare:workers"
import { decodeJwt, decodeProtectedHeader, importJWK, SignJWT } from "jose"
import { beforeAll, describe, expect, it } from "vitest"
import {
  expectProblem,
  gateway,
  login,
  meshHeaders,
  signAs,
  mint,
  seedUser,
  send,
  type SeededUser,
  signedIn,
  testKeys,
  unique
} from "../helpers.ts"

const now = () => Math.floor(Date.now() / 1000)
const b64 = (value: unknown) => btoa(JSON.stringify(value)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")

const withToken = (token: string, path = "/api/products") => gateway(path, { headers: { authorization: `Bearer ${token}` } })

const expectRefused = async (response: Response) => {
  const problem = await expectProblem(response, 401)
  expect(response.headers.get("www-authenticate")).toMatch(/^Bearer realm="meshwork"/)
  return problem
}

const expectInvalidToken = async (response: Response) => {
  await expectRefused(response)
  expect(response.headers.get("www-authenticate")).toContain('error="invalid_token"')
}

let user: SeededUser
beforeAll(async () => {
  user = await seedUser()
})

describe("tokens the gateway refuses", () => {
  it("alg: none", async () => {
    const header = { alg: "none", typ: "at+jwt", kid: testKeys.signing["kid"] }
    const claims = { iss: "meshwork-auth", aud: "meshwork-api", sub: user.id, iat: now(), exp: now() + 300, jti: "x", roles: ["admin"] }
    await expectInvalidToken(await withToken(`${b64(header)}.${b64(claims)}.`))
  })

  it("HS256 signed with the public key's bytes", async () => {
    const publicJwk = { ...testKeys.signing }
    delete publicJwk["d"]
    const secret = new TextEncoder().encode(JSON.stringify(publicJwk))
    const token = await new SignJWT({ roles: ["admin"] })
      .setProtectedHeader({ alg: "HS256", kid: testKeys.signing["kid"]!, typ: "at+jwt" })
      .setIssuer("meshwork-auth").setAudience("meshwork-api").setSubject(user.id)
      .setIssuedAt().setExpirationTime("5m").setJti("x")
      .sign(secret)
    await expectInvalidToken(await withToken(token))
  })

  it("an algorithm outside the allowlist (ES384)", async () => {
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, true, ["sign", "verify"]) as CryptoKeyPair
    const token = await new SignJWT({ roles: ["user"] })
      .setProtectedHeader({ alg: "ES384", kid: testKeys.signing["kid"]!, typ: "at+jwt" })
      .setIssuer("meshwork-auth").setAudience("meshwork-api").setSubject(user.id)
      .setIssuedAt().setExpirationTime("5m").setJti("x")
      .sign(pair.privateKey)
    await expectInvalidToken(await withToken(token))
  })

  it.each([
    ["a wrong issuer", { claims: { iss: "someone-else" } }],
    ["a missing issuer", { omit: ["iss"] }],
    ["a wrong audience", { claims: { aud: "another-api" } }],
    ["a missing audience", { omit: ["aud"] }],
    ["a missing jti", { omit: ["jti"] }],
    ["no roles", { omit: ["roles"] }],
    ["exp just past the 30 s tolerance", { claims: { exp: now() - 35, iat: now() - 100 } }],
    ["nbf just past the 30 s tolerance", { claims: { nbf: now() + 35 } }],
    ["iat older than the 5 minute maximum age", { claims: { iat: now() - 400, exp: now() + 100 } }],
    ["a typ other than at+jwt", { header: { typ: "JWT" } }],
    ["a kid that walks paths", { header: { kid: "../../x" } }],
    ["a kid that injects SQL", { header: { kid: "' OR 1=1 --" } }],
    ["no kid", { header: { kid: undefined } }]
  ] as const)("%s", async (_, options) => {
    await expectInvalidToken(await withToken(await mint(user.id, options as never)))
  })

  it("an unknown crit header, on a token otherwise valid and signed by the active key", async () => {
    // Signed by hand: jose itself will not sign a header with an unknown crit.
    const header = { alg: "ES256", kid: testKeys.signing["kid"], typ: "at+jwt", crit: ["x-extension"], "x-extension": 1 }
    const claims = { iss: "meshwork-auth", aud: "meshwork-api", sub: user.id, iat: now(), exp: now() + 300, jti: "x", roles: ["user"] }
    const input = `${b64(header)}.${b64(claims)}`
    const key = await importJWK(testKeys.signing, "ES256") as CryptoKey
    const signature = new Uint8Array(
      await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key, new TextEncoder().encode(input))
    )
    const encoded = btoa(String.fromCharCode(...signature)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")
    await expectInvalidToken(await withToken(`${input}.${encoded}`))
    // The same token without crit is accepted: only the crit header made the difference.
    const plain = `${b64({ alg: "ES256", kid: testKeys.signing["kid"], typ: "at+jwt" })}.${b64(claims)}`
    const plainSignature = new Uint8Array(
      await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key, new TextEncoder().encode(plain))
    )
    const plainEncoded = btoa(String.fromCharCode(...plainSignature)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")
    expect((await withToken(`${plain}.${plainEncoded}`)).status).toBe(200)
  })

  it("a jku or x5u pointing elsewhere: ignored, the attacker's key never verifies", async () => {
    const attacker = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]) as CryptoKeyPair
    for (const header of [
      { kid: testKeys.signing["kid"]!, jku: "https://evil.example/jwks.json" },
      { kid: "attacker-key", jku: "https://evil.example/jwks.json" },
      { kid: testKeys.signing["kid"]!, x5u: "https://evil.example/cert.pem" }
    ]) {
      const token = await new SignJWT({ roles: ["admin"] })
        .setProtectedHeader({ alg: "ES256", typ: "at+jwt", ...header })
        .setIssuer("meshwork-auth").setAudience("meshwork-api").setSubject(user.id)
        .setIssuedAt().setExpirationTime("5m").setJti("x")
        .sign(attacker.privateKey)
      await expectInvalidToken(await withToken(token))
    }
  })

  it("a token signed by a key the JWKS does not publish (retired long ago)", async () => {
    await expectInvalidToken(await withToken(await mint(user.id, { key: "retired" })))
  })

  it("a token whose signature was tampered with", async () => {
    const token = await mint(user.id)
    const [header, payload] = token.split(".")
    const forged = b64({ ...decodeJwt(token), roles: ["admin"] })
    await expectInvalidToken(await withToken(`${header}.${forged}.${token.split(".")[2]}`))
    expect(payload).not.toBe(forged)
  })

  it("a token for a user that does not exist", async () => {
    await expectInvalidToken(await withToken(await mint(crypto.randomUUID())))
  })

  it("a disabled user, with 403, also one disabled after signing in", async () => {
    const disabled = await seedUser({ active: false })
    const problem = await expectProblem(await withToken(await mint(disabled.id)), 403)
    expect(problem["detail"]).toContain("disabled")

    const later = await signedIn()
    expect((await withToken(later.token)).status).toBe(200)
    const admin = await signedIn("admin")
    expect((await send("PATCH", `/api/users/${later.id}`, { active: false }, admin.token)).status).toBe(200)
    // The gateway's user cache time is 0 s in these tests (30 s by default).
    await expectProblem(await withToken(later.token), 403)
  })

  it.each([
    ["no Authorization header", undefined],
    ["an empty header", ""],
    ["a bare scheme", "Bearer"],
    ["two tokens", "Bearer abc.def.ghi xyz.uvw.rst"],
    ["two Bearer credentials", "Bearer abc.def.ghi, Bearer xyz.uvw.rst"],
    ["a Basic credential", "Basic dXNlcjpwYXNz"],
    ["another scheme", "Token abc.def.ghi"],
    ["a 10 KB token", `Bearer ${"a".repeat(10_240)}`],
    ["a token that is not a JWT", "Bearer not-a-jwt"]
  ])("%s", async (_, authorization) => {
    const response = await gateway("/api/products", authorization === undefined ? {} : { headers: { authorization } })
    await expectRefused(response)
  })
})

describe("tokens the gateway accepts", () => {
  it("a token from the auth service, signed by its active key", async () => {
    const tokens = await login(user)
    expect(tokens).toMatchObject({ token_type: "Bearer", expires_in: 300 })
    const header = decodeProtectedHeader(tokens.access_token)
    expect(header).toEqual({ alg: "ES256", kid: testKeys.signing["kid"], typ: "at+jwt" })
    const claims = decodeJwt(tokens.access_token)
    expect(claims).toMatchObject({ iss: "meshwork-auth", aud: "meshwork-api", sub: user.id, roles: ["user"] })
    expect(claims.exp! - claims.iat!).toBe(300)
    expect(typeof claims.jti).toBe("string")
    expect((await withToken(tokens.access_token)).status).toBe(200)
  })

  it("a token from a second published key (the new key of a rotation)", async () => {
    expect((await withToken(await mint(user.id, { key: "rotatedIn" }))).status).toBe(200)
  })

  it.each([
    ["an iat a little in the future", { claims: { iat: now() + 20 } }],
    ["an nbf a little in the future", { claims: { nbf: now() + 20 } }],
    ["an exp a little in the past", { claims: { iat: now() - 100, exp: now() - 20 } }]
  ] as const)("clock skew within tolerance: %s", async (_, options) => {
    expect((await withToken(await mint(user.id, options))).status).toBe(200)
  })

  it("publishes the public keys, and no private parts, without a token", async () => {
    const response = await gateway("/api/auth/.well-known/jwks.json")
    expect(response.status).toBe(200)
    const { keys } = await response.json() as { keys: Array<Record<string, string>> }
    expect(keys.map((key) => key["kid"])).toEqual([testKeys.signing["kid"], testKeys.rotatedIn["kid"]])
    for (const key of keys) {
      expect(key).toMatchObject({ kty: "EC", crv: "P-256", alg: "ES256", use: "sig" })
      expect(key["d"]).toBeUndefined()
    }
  })
})

describe("login, refresh and logout", () => {
  it("answers an unknown email, a wrong password and a disabled account identically", async () => {
    const disabled = await seedUser({ active: false })
    const answers = await Promise.all([
      send("POST", "/api/auth/login", { email: `${unique()}@example.com`, password: "whatever-password" }),
      send("POST", "/api/auth/login", { email: user.email, password: "wrong-password-123" }),
      send("POST", "/api/auth/login", { email: disabled.email, password: disabled.password })
    ])
    const bodies = await Promise.all(answers.map((response) => expectProblem(response, 401)))
    expect(bodies[1]).toEqual(bodies[0])
    expect(bodies[2]).toEqual(bodies[0])
    expect(bodies[0]).toMatchObject({ type: "urn:meshwork:problem:invalid-credentials" })
  })

  it("rotates refresh tokens within a family, and a reused one revokes the family", async () => {
    const first = await login(user)
    const second = await (await send("POST", "/api/auth/refresh", { refresh_token: first.refresh_token })).json() as typeof first
    expect(second.refresh_token).not.toBe(first.refresh_token)
    expect((await withToken(second.access_token)).status).toBe(200)
    const third = await send("POST", "/api/auth/refresh", { refresh_token: second.refresh_token })
    expect(third.status).toBe(200)
    const latest = await third.json() as typeof first

    // The first token again: theft is assumed, every token of the family dies.
    await expectProblem(await send("POST", "/api/auth/refresh", { refresh_token: first.refresh_token }), 401)
    const revoked = await expectProblem(await send("POST", "/api/auth/refresh", { refresh_token: latest.refresh_token }), 401)
    expect(revoked).toMatchObject({ type: "urn:meshwork:problem:invalid-refresh-token" })
    // Other families (other logins) are untouched.
    const other = await login(user)
    expect((await send("POST", "/api/auth/refresh", { refresh_token: other.refresh_token })).status).toBe(200)
  })

  it("lets at most one of two concurrent refreshes with one token through, and leaves the family dead", async () => {
    const tokens = await login(user)
    const answers = await Promise.all([
      send("POST", "/api/auth/refresh", { refresh_token: tokens.refresh_token }),
      send("POST", "/api/auth/refresh", { refresh_token: tokens.refresh_token })
    ])
    const statuses = answers.map((response) => response.status)
    expect(statuses.filter((status) => status === 200).length).toBeLessThanOrEqual(1)
    expect(statuses).toContain(401)
    // The loser's reuse revoked the family: whatever the winner got is dead too.
    for (const answer of answers) {
      if (answer.status !== 200) {
        await answer.text()
        continue
      }
      const won = await answer.json() as { refresh_token: string }
      await expectProblem(await send("POST", "/api/auth/refresh", { refresh_token: won.refresh_token }), 401)
    }
  })

  it("logs out (with an access token) by revoking the family", async () => {
    const tokens = await login(user)
    await expectRefused(await send("POST", "/api/auth/logout", { refresh_token: tokens.refresh_token }))
    expect((await send("POST", "/api/auth/logout", { refresh_token: tokens.refresh_token }, tokens.access_token)).status)
      .toBe(204)
    await expectProblem(await send("POST", "/api/auth/refresh", { refresh_token: tokens.refresh_token }), 401)
    expect((await send("POST", "/api/auth/logout", { refresh_token: "unknown" }, tokens.access_token)).status).toBe(204)
  })

  it("refuses an unknown refresh token", async () => {
    await expectProblem(await send("POST", "/api/auth/refresh", { refresh_token: "not-a-token" }), 401)
  })

  it("lets users set their own password with the current one, admins anyone's, nobody else's", async () => {
    const self = await signedIn()
    const other = await seedUser()
    const admin = await signedIn("admin")
    const password = "a-brand-new-password"
    const path = `/api/auth/users/${self.id}/password`
    // A stolen access token alone cannot take the account over.
    await expectProblem(await send("PUT", path, { password }, self.token), 401)
    await expectProblem(await send("PUT", path, { password, current_password: "not-the-password" }, self.token), 401)
    const session = await login(self)
    expect((await send("PUT", path, { password, current_password: self.password }, self.token)).status).toBe(204)
    expect((await send("POST", "/api/auth/login", { email: self.email, password })).status).toBe(200)
    await expectProblem(await send("POST", "/api/auth/login", { email: self.email, password: self.password }), 401)
    // Sessions started with the old password end with it.
    await expectProblem(await send("POST", "/api/auth/refresh", { refresh_token: session.refresh_token }), 401)

    await expectProblem(await send("PUT", `/api/auth/users/${other.id}/password`, { password }, self.token), 403)
    expect((await send("PUT", `/api/auth/users/${other.id}/password`, { password }, admin.token)).status).toBe(204)
    await expectProblem(await send("PUT", path, { password: "short", current_password: password }, self.token), 400)
  })
})

describe("identity inside the mesh", () => {
  /** A valid pair of assertions making the caller an admin, as a client might replay them. */
  const adminHeaders = (path: string) =>
    meshHeaders({ to: "router", path, principal: { kind: "user", sub: "someone", roles: ["admin"] } })

  it("ignores identity headers a client sends, even validly signed assertions", async () => {
    const plain = await signedIn()
    const spoofed = {
      ...await adminHeaders("/api/users"),
      "x-user-id": "admin",
      "x-user-roles": "admin",
      "x-forwarded-user": "admin"
    }
    // Without a token the spoofed headers get nothing through.
    await expectRefused(await gateway("/api/users", { headers: spoofed }))
    // With a user's token they do not make the user an admin.
    await expectProblem(await gateway("/api/users", { headers: { ...spoofed, authorization: `Bearer ${plain.token}` } }), 403)
    const created = await gateway("/api/products", {
      method: "POST",
      headers: { ...await adminHeaders("/api/products"), authorization: `Bearer ${plain.token}`, "content-type": "application/json" },
      body: JSON.stringify({ sku: `SKU-${unique().toUpperCase()}`, name: "X", priceCents: 1, sellerId: plain.id })
    })
    await expectProblem(created, 403)
  })

  it("defeats Connection-header removal of the identity the gateway adds", async () => {
    const plain = await signedIn()
    for (const connection of ["x-meshwork-principal", "X-Meshwork-Identity, keep-alive", "authorization, x-meshwork-principal"]) {
      const response = await gateway(`/api/users/${plain.id}`, {
        headers: { authorization: `Bearer ${plain.token}`, connection }
      })
      expect(response.status).toBe(200)
      expect(await response.json()).toMatchObject({ id: plain.id })
    }
  })

  it("internal Workers refuse requests without valid assertions addressed to them, and callers outside their policy", async () => {
    const path = "/api/auth/.well-known/jwks.json"
    const jwks = async (headers?: Record<string, string>) =>
      env.AUTH.fetch(`http://auth.internal${path}`, headers === undefined ? {} : { headers })
    await expectProblem(await jwks(), 401)
    await expectProblem(await jwks({ "x-meshwork-identity": "v1.garbage.garbage" }), 401)
    // Signed by a key the mesh never published, addressed elsewhere, for another path, expired.
    await expectProblem(await jwks(await meshHeaders({ to: "auth", path, from: "stranger" })), 401)
    await expectProblem(await jwks(await meshHeaders({ to: "users", path })), 401)
    await expectProblem(await jwks(await meshHeaders({ to: "auth", path: "/api/auth/login" })), 401)
    await expectProblem(await jwks(await meshHeaders({ to: "auth", path, iat: Date.now() - 120_000, exp: Date.now() - 60_000 })), 401)
    // A valid assertion from a Worker auth's policy does not name: 403.
    await expectProblem(await jwks(await meshHeaders({ to: "auth", path, from: "sessions" })), 403)
    expect((await jwks(await meshHeaders({ to: "auth", path }))).status).toBe(200)
  })

  it("refuses a principal minted by a Worker other than the gateway, even on a valid hop", async () => {
    const target = await signedIn()
    const path = `/api/users/${target.id}`
    const hop = await meshHeaders({ to: "users", path })
    const minted = await signAs("products", { iss: "products", principal: { kind: "user", sub: "x", roles: ["admin"] }, iat: Date.now(), exp: Date.now() + 60_000 })
    await expectProblem(await env.USERS.fetch(`http://users.internal${path}`, { headers: { ...hop, "x-meshwork-principal": minted } }), 401)
    expect((await env.USERS.fetch(`http://users.internal${path}`, { headers: hop })).status).toBe(200)
  })
})

describe("authorization", () => {
  it("a user reads and updates only itself, and cannot change its role or status", async () => {
    const alice = await signedIn()
    const bob = await seedUser()
    expect((await send("GET", `/api/users/${alice.id}`, undefined, alice.token)).status).toBe(200)
    await expectProblem(await send("GET", `/api/users/${bob.id}`, undefined, alice.token), 403)
    await expectProblem(await send("GET", "/api/users", undefined, alice.token), 403)
    expect((await send("PATCH", `/api/users/${alice.id}`, { name: "Alice" }, alice.token)).status).toBe(200)
    await expectProblem(await send("PATCH", `/api/users/${alice.id}`, { role: "admin" }, alice.token), 403)
    await expectProblem(await send("PATCH", `/api/users/${alice.id}`, { active: true }, alice.token), 403)
    await expectProblem(await send("PATCH", `/api/users/${bob.id}`, { name: "Bob" }, alice.token), 403)
    await expectProblem(await send("DELETE", `/api/users/${alice.id}`, undefined, alice.token), 403)
    await expectProblem(await send("POST", "/api/users", { email: `${unique()}@example.com`, name: "N" }, alice.token), 403)
  })

  it("product writes are admin-only; reads need any signed-in user", async () => {
    const plain = await signedIn()
    const admin = await signedIn("admin")
    const product = { sku: `SKU-${unique().toUpperCase()}`, name: "Widget", priceCents: 100, sellerId: admin.id }
    await expectProblem(await send("POST", "/api/products", product, plain.token), 403)
    const created = await send("POST", "/api/products", product, admin.token)
    expect(created.status).toBe(201)
    const { id } = await created.json() as { id: string }
    expect((await send("GET", `/api/products/${id}`, undefined, plain.token)).status).toBe(200)
    expect((await send("GET", "/api/products", undefined, plain.token)).status).toBe(200)
    await expectProblem(await send("PATCH", `/api/products/${id}`, { priceCents: 1 }, plain.token), 403)
    await expectProblem(await send("DELETE", `/api/products/${id}`, undefined, plain.token), 403)
    expect((await send("DELETE", `/api/products/${id}`, undefined, admin.token)).status).toBe(204)
  })

  it("a demoted admin loses the role at once, whatever its token says", async () => {
    const demoted = await signedIn("admin")
    const admin = await signedIn("admin")
    expect((await send("GET", "/api/users?limit=1", undefined, demoted.token)).status).toBe(200)
    expect((await send("PATCH", `/api/users/${demoted.id}`, { role: "user" }, admin.token)).status).toBe(200)
    await expectProblem(await send("GET", "/api/users?limit=1", undefined, demoted.token), 403)
  })
})

describe("the public surface", () => {
  it("needs no token for login, refresh and the JWKS, and a token for everything else under /api", async () => {
    expect((await gateway("/api/auth/.well-known/jwks.json")).status).toBe(200)
    await expectRefused(await gateway("/api/users"))
    await expectRefused(await gateway("/api/auth/users/x/password", { method: "PUT" }))
    await expectRefused(await gateway("/api/nothing"))
    expect((await gateway("/health")).status).toBe(200)
  })

  it("keeps the mesh healthy with identity on every internal call", async () => {
    const admin = await signedIn("admin")
    const report = await (await send("GET", "/api/admin/health", undefined, admin.token)).json() as { status: string }
    // The whole report in the message: which upstream or check is down, and why.
    expect(report.status, JSON.stringify(report)).toBe("ok")
  })
})

it("imports the test keys (sanity: the suite forges with real ES256 keys)", async () => {
  expect((await importJWK(testKeys.signing, "ES256")) instanceof CryptoKey).toBe(true)
})
