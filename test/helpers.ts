/** Shared helpers for black-box tests through the gateway. */
import * as Identity from "../src/layers/security/Identity.ts"
import { env } from "cloudflare:workers"
import { importJWK, type JWTPayload, SignJWT } from "jose"
import { expect } from "vitest"

export const gateway = (path: string, init?: RequestInit) => env.GATEWAY.fetch(`http://mesh.test${path}`, init)

export const unique = () => crypto.randomUUID().slice(0, 8)

/** Waits until `check` holds, polling every 200 ms, for at most `seconds`. */
export const eventually = async (check: () => Promise<boolean>, seconds = 30) => {
  const deadline = Date.now() + seconds * 1000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not settled within ${seconds} s`)
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

/** A JSON request through the gateway, with a bearer token when given. */
export const send = (method: string, path: string, body?: unknown, token?: string) =>
  gateway(path, {
    method,
    headers: {
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` })
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })

export const expectProblem = async (response: Response, status: number) => {
  expect(response.status).toBe(status)
  expect(response.headers.get("content-type")).toBe("application/problem+json")
  const problem = await response.json() as Record<string, unknown>
  expect(problem).toMatchObject({ status })
  expect(typeof problem["type"]).toBe("string")
  expect(typeof problem["title"]).toBe("string")
  return problem
}

export interface SeededUser {
  readonly id: string
  readonly email: string
  readonly password: string
  readonly role: "admin" | "user"
}

const toBase64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes))

/**
 * A user written straight into the users and auth databases (the mesh's own
 * D1, shared with the runner), with a password hashed the way the auth
 * service hashes it: the bootstrap an operator does with seed data.
 */
export const seedUser = async (options: { role?: "admin" | "user"; active?: boolean } = {}): Promise<SeededUser> => {
  const id = crypto.randomUUID()
  const email = `${unique()}@example.com`
  const password = `pw-${crypto.randomUUID()}`
  const role = options.role ?? "user"
  const at = new Date().toISOString()
  await env.USERS_DB.prepare(
    "INSERT INTO users (id, email, name, role, active, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
  ).bind(id, email, "Seeded", role, options.active === false ? 0 : 1, at, at).run()
  const salt = crypto.getRandomValues(new Uint8Array(16))
  const iterations = 1000
  const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(password), "PBKDF2", false, ["deriveBits"])
  const hash = new Uint8Array(await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, key, 256))
  await env.AUTH_DB.prepare(
    "INSERT INTO credentials (user_id, hash, salt, iterations, updated_at) VALUES (?, ?, ?, ?, ?)"
  ).bind(id, toBase64(hash), toBase64(salt), iterations, at).run()
  return { id, email, password, role }
}

export interface Tokens {
  readonly access_token: string
  readonly refresh_token: string
  readonly token_type: string
  readonly expires_in: number
}

export const login = async (user: Pick<SeededUser, "email" | "password">): Promise<Tokens> => {
  const response = await send("POST", "/api/auth/login", { email: user.email, password: user.password })
  expect(response.status).toBe(200)
  return await response.json() as Tokens
}

/** A seeded user and a fresh access token for it. */
export const signedIn = async (role: "admin" | "user" = "user") => {
  const user = await seedUser({ role })
  return { ...user, token: (await login(user)).access_token }
}

interface TestKeys {
  readonly signing: Record<string, string>
  readonly rotatedIn: Record<string, string>
  readonly retired: Record<string, string>
}

export const testKeys = JSON.parse(env.TEST_SIGNING_KEYS) as TestKeys

/**
 * A token signed with one of the test keys, valid by default, for tests that
 * take it apart one claim at a time.
 */
export const mint = async (
  subject: string,
  options: {
    readonly key?: keyof TestKeys
    readonly header?: Record<string, unknown>
    readonly claims?: JWTPayload
    readonly omit?: ReadonlyArray<string>
  } = {}
) => {
  const jwk = testKeys[options.key ?? "signing"]
  const now = Math.floor(Date.now() / 1000)
  const claims: JWTPayload = {
    iss: "meshwork-auth",
    aud: "meshwork-api",
    sub: subject,
    iat: now,
    exp: now + 300,
    jti: crypto.randomUUID(),
    roles: ["user"],
    ...options.claims
  }
  for (const name of options.omit ?? []) delete claims[name]
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "ES256", kid: jwk["kid"]!, typ: "at+jwt", ...options.header } as never)
    .sign(await importJWK(jwk, "ES256"))
}

/** A body of `chunks` chunks of `size` bytes, streamed, with no length announced. */
export const stream = (chunks: number, size: number) => {
  const chunk = new TextEncoder().encode("x".repeat(size))
  let sent = 0
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent++ < chunks) controller.enqueue(chunk)
      else controller.close()
    }
  })
}

const meshKeys = (): Record<string, Identity.SigningKey> => JSON.parse(env.TEST_MESH_KEYS)

/**
 * The vars that make a test Worker the mesh Worker `worker` (its own key, and
 * every Worker's public keys), with `policy` as its MESH_POLICY.
 */
export const meshEnv = (worker: string, policy?: ReadonlyArray<Identity.PolicyRule>) => ({
  MESH_SIGNING_KEY: JSON.stringify(meshKeys()[worker]),
  MESH_PUBLIC_KEYS: env.MESH_PUBLIC_KEYS,
  ...(policy === undefined ? {} : { MESH_POLICY: policy })
})

/** Signs `claims` with the key of `worker` (or the unpublished "stranger"), as that Worker would. */
export const signAs = async (worker: string, claims: object) => {
  const jwk = meshKeys()[worker]!
  return Identity.signJws(await Identity.importSigningKey(jwk), jwk.kid, claims)
}

/**
 * The identity headers of a call to `to` for `method path`: the service
 * assertion of `from` (default: the router, or the gateway when calling the
 * router), and the principal `principal` asserted by the gateway, if given.
 */
export const meshHeaders = async (options: {
  readonly to: string
  readonly path: string
  readonly method?: string
  readonly from?: string
  readonly principal?: Identity.Identity
  readonly iat?: number
  readonly exp?: number
}): Promise<Record<string, string>> => {
  const from = options.from ?? (options.to === "router" ? "gateway" : "router")
  const iat = options.iat ?? Date.now()
  const exp = options.exp ?? iat + 60_000
  const service = await signAs(from, { iss: from, aud: options.to, htm: options.method ?? "GET", htp: options.path, iat, exp })
  if (options.principal === undefined) return { [Identity.header]: service }
  const principal = await signAs("gateway", { iss: "gateway", principal: options.principal, iat, exp })
  return { [Identity.header]: service, [Identity.principalHeader]: principal }
}

/**
 * The test Redis: vitest.config.ts starts a redis-server of its own when one
 * is installed. Without it the Redis tests skip, except under CI, where they
 * run against a closed port and fail.
 */
export const hasRedis = env.REDIS_URL !== "" || env.CI === "true"
export const redisUrl = env.REDIS_URL === "" ? "redis://127.0.0.1:1" : env.REDIS_URL
