/** Shared helpers for black-box tests through the gateway. */
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

const base64url = (bytes: Uint8Array) =>
  btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "")

/** A mesh identity assertion, signed with the run's secret, as the gateway would sign it. */
export const meshIdentity = async (
  identity: unknown = { kind: "service", sub: "test" },
  times: { readonly iat?: number; readonly exp?: number } = {}
) => {
  const iat = times.iat ?? Date.now()
  const payload = { identity, iat, exp: times.exp ?? iat + 60_000 }
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(env.MESH_IDENTITY_SECRET),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"]
  )
  const body = `v1.${base64url(new TextEncoder().encode(JSON.stringify(payload)))}`
  const signature = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(body)))
  return `${body}.${base64url(signature)}`
}

/**
 * The test Redis: vitest.config.ts starts a redis-server of its own when one
 * is installed. Without it the Redis tests skip, except under CI, where they
 * run against a closed port and fail.
 */
export const hasRedis = env.REDIS_URL !== "" || env.CI === "true"
export const redisUrl = env.REDIS_URL === "" ? "redis://127.0.0.1:1" : env.REDIS_URL
