/**
 * Property-based tests through the gateway (fast-check): random methods,
 * paths, queries, headers, bodies and tokens never get a 5xx, every error is
 * one problem shape (RFC 9457 problem+json, `about:blank` with its status's
 * own title or a `urn:meshwork:problem:*` type), and what a client can write
 * stays within its bounds.
 *
 * Bounded and reproducible: a fixed seed and a fixed number of runs, every
 * request sent only to the in-test gateway binding. A failure prints the seed
 * and the shrunk request; to explore further, change `seed`.
 */
import { env } from "cloudflare:workers"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { mint, type SeededUser, signedIn } from "../helpers.ts"

const seed = 20261203
const numRuns = 300

const reasonPhrases: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  409: "Conflict",
  412: "Precondition Failed",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  422: "Unprocessable Content",
  428: "Precondition Required",
  429: "Too Many Requests"
}

let member: SeededUser & { readonly token: string }
let admin: SeededUser & { readonly token: string }
let tokens: ReadonlyArray<string> = []

beforeAll(async () => {
  member = await signedIn()
  admin = await signedIn("admin")
  tokens = await Promise.all([
    mint(crypto.randomUUID()), // a valid signature for a user that does not exist
    mint(member.id, { claims: { roles: ["admin"] } }), // a role the user does not have
    mint(member.id, { claims: { exp: Math.floor(Date.now() / 1000) - 600 } }),
    mint(member.id, { claims: { aud: "someone-else" } }),
    mint(member.id, { key: "retired" }),
    mint(member.id, { header: { alg: "HS256" } }).catch(() => "x.y.z"),
    mint(member.id, { omit: ["jti", "iat"] })
  ])
})

const printable = (max: number) => fc.stringMatching(new RegExp(`^[\\x20-\\x7e]{0,${max}}$`))

const segment = fc.oneof(
  fc.uuid(),
  fc.constantFrom(
    "0195f3a0-0000-7000-8000-000000000101",
    "0195f3a0-0000-7000-8000-000000000002",
    "nobody",
    "..",
    ".",
    "%2e%2e",
    "%2F",
    "a%2fb",
    "%00",
    "%5C",
    "x".repeat(65),
    "%E2%82%AC",
    "'",
    "%22",
    "%20",
    "health",
    "rollback",
    "purge",
    "password",
    "email",
    "cart",
    "views",
    "stats",
    "popular",
    "imports",
    ".well-known",
    "jwks.json",
    "products",
    "sessions",
    "nothing-here",
    "Users"
  ),
  fc.stringMatching(/^[A-Za-z0-9._~-]{1,24}$/)
)

const prefix = fc.constantFrom(
  "/health",
  "/",
  "/api",
  "/api/users",
  "/api/products",
  "/api/products/imports",
  "/api/sessions",
  "/api/auth",
  "/api/auth/users",
  "/api/auth/login",
  "/api/auth/refresh",
  "/api/auth/logout",
  "/api/admin",
  "/api/admin/status",
  "/api/admin/health",
  "/api/admin/traffic",
  "/api/admin/flags",
  "/api/admin/cache",
  "/nothing"
)

/**
 * The admin API writes what it is given: flags go under names of the fuzz's
 * own (`fuzz-*`), and the one service with versions (users, whose split other
 * tests set) is never the target of a split.
 */
const contained = (segments: ReadonlyArray<string>, base: string) =>
  segments.map((segment, index) => {
    if (index !== 0) return segment
    if (base === "/api/admin/flags" && /^[a-z][a-z0-9-]{0,58}$/.test(segment)) return `fuzz-${segment}`
    if (base === "/api/admin/traffic" && segment === "users") return "users-fuzz"
    return segment
  })

const path = fc.tuple(prefix, fc.array(segment, { maxLength: 3 }), fc.boolean()).map(([base, segments, slash]) =>
  [base === "/" ? "" : base, ...contained(segments, base)].join("/") + (slash ? "/" : "") || "/"
)

const query = fc.array(
  fc.tuple(
    fc.constantFrom("limit", "cursor", "ids", "email", "x", "utm_source", "key"),
    fc.oneof(fc.integer({ min: -5, max: 500 }).map(String), printable(30), fc.constant(""), fc.constant("a,b,,c"))
  ),
  { maxLength: 3 }
).map((pairs) => pairs.length === 0 ? "" : "?" + pairs.map(([key, value]) => `${key}=${encodeURIComponent(value)}`).join("&"))

/** Mostly signed in (a user or an admin), so most requests get past the gateway to a service. */
const authorization = fc.oneof(
  { weight: 4, arbitrary: fc.constant("member") },
  { weight: 4, arbitrary: fc.constant("admin") },
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.constant("minted") },
  {
    weight: 1,
    arbitrary: fc.constantFrom("Bearer garbage", "Bearer ", "Basic YWRhOnB3", "bearer x.y.z", "Bearer a.b.c.d", `Bearer ${"a".repeat(5000)}`)
  },
  { weight: 1, arbitrary: printable(60) }
)

const version = fc.oneof(fc.constantFrom("blue", "green", "purple", "", "Blue"), printable(40))
const id = fc.oneof(fc.uuid(), fc.constantFrom(".", "..", "", "x".repeat(65), "nobody"), printable(20))

/** Bodies close to the ones the mesh takes, so checks beyond the JSON parser are reached. */
const structured = fc.record(
  {
    email: fc.oneof(fc.emailAddress(), printable(30)),
    name: printable(120),
    password: printable(40),
    current_password: printable(40),
    refresh_token: printable(80),
    role: fc.constantFrom("admin", "user", "root"),
    active: fc.boolean(),
    stable: version,
    canary: version,
    weight: fc.oneof(fc.integer({ min: -10, max: 200 }), fc.double()),
    enabled: fc.boolean(),
    percentage: fc.oneof(fc.integer({ min: -10, max: 200 }), fc.double()),
    users: fc.array(id, { maxLength: 5 }),
    roles: fc.array(printable(10), { maxLength: 3 }),
    urls: fc.array(fc.oneof(fc.constant("/api/products"), printable(40)), { maxLength: 3 }),
    tags: fc.array(printable(20), { maxLength: 3 }),
    sku: fc.oneof(fc.stringMatching(/^[A-Z0-9][A-Z0-9-]{0,10}$/), printable(50)),
    priceCents: fc.oneof(fc.integer(), fc.double()),
    sellerId: id,
    stock: fc.integer(),
    currency: fc.constantFrom("EUR", "eur", "EURO", ""),
    products: fc.array(fc.record({ sku: printable(10), name: printable(10), priceCents: fc.integer(), sellerId: id }), { maxLength: 3 }),
    attributes: fc.dictionary(printable(70), fc.oneof(fc.string({ maxLength: 20 }), fc.double(), fc.boolean(), fc.constant(null))),
    cart: fc.dictionary(id, fc.integer({ min: -5, max: 2000 })),
    counters: fc.dictionary(printable(10), fc.oneof(fc.integer(), fc.double())),
    changes: fc.array(
      fc.oneof(
        fc.record({ _tag: fc.constant("Increment"), counter: printable(70), by: fc.oneof(fc.integer(), fc.double()) }, { requiredKeys: ["_tag"] }),
        fc.record({ _tag: fc.constant("SetCartItem"), productId: id, quantity: fc.integer({ min: -5, max: 2000 }) }, { requiredKeys: ["_tag"] }),
        fc.record({ _tag: fc.constant("SetAttribute"), name: printable(70), value: fc.jsonValue() }, { requiredKeys: ["_tag"] }),
        fc.record({ _tag: printable(12) })
      ),
      { maxLength: 4 }
    )
  },
  { requiredKeys: [] }
).map((value) => JSON.stringify(value))

const body = fc.oneof(
  { weight: 2, arbitrary: fc.constant(undefined) },
  { weight: 3, arbitrary: structured },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value) ?? "null") },
  { weight: 1, arbitrary: fc.constantFrom("", "{", "{not json", "null", "[]", "\u0000", JSON.stringify({ a: "x".repeat(70_000) })) },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }) }
)

/** Mostly JSON, so most bodies get past the media type check to the API's decoding. */
const contentType = fc.oneof(
  { weight: 6, arbitrary: fc.constant("application/json") },
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.constantFrom("application/json; charset=utf-8", "text/plain", "application/merge-patch+json", "APPLICATION/JSON") },
  { weight: 1, arbitrary: printable(30) }
)

const headers = fc.record(
  {
    "if-match": fc.oneof(fc.constantFrom("*", '"1"', 'W/"1"', '"1", "2"', '"abc"', ""), printable(20)),
    "x-use-version": version,
    "cf-connecting-ip": fc.oneof(fc.ipV4(), fc.ipV6(), printable(20)),
    "x-meshwork-identity": printable(60),
    "x-meshwork-principal": printable(60),
    "x-user-id": fc.uuid(),
    connection: fc.constantFrom("close", "x-meshwork-principal", "keep-alive, x-user-id"),
    traceparent: fc.oneof(fc.constant("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), printable(55)),
    accept: fc.constantFrom("*/*", "application/json", "text/html"),
    "idempotency-key": printable(20)
  },
  { requiredKeys: [] }
)

const method = fc.constantFrom("GET", "GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FUZZ")

const request = fc.record({ method, path, query, authorization, contentType, headers, body })
type Case = typeof request extends fc.Arbitrary<infer A> ? A : never

/** The request a case describes, or undefined if no client could send it (fetch refuses it). */
const build = (value: Case): Request | undefined => {
  const headers: Record<string, string> = { ...value.headers }
  if (value.contentType !== undefined) headers["content-type"] = value.contentType
  const token = value.authorization
  if (token === "member") headers["authorization"] = `Bearer ${member.token}`
  else if (token === "admin") headers["authorization"] = `Bearer ${admin.token}`
  else if (token === "minted") headers["authorization"] = `Bearer ${tokens[value.path.length % tokens.length]}`
  else if (token !== undefined) headers["authorization"] = token
  const body = value.method === "GET" || value.method === "HEAD" ? undefined : value.body
  try {
    return new Request(`http://mesh.test${value.path}${value.query}`, {
      method: value.method,
      headers,
      ...(body === undefined ? {} : { body })
    })
  } catch {
    return undefined
  }
}

const describeCase = (request: Request, status: number) => `${request.method} ${new URL(request.url).pathname}${new URL(request.url).search} -> ${status}`

/** Checks one answer: never a 5xx; every error one problem shape. */
const check = async (request: Request, response: Response) => {
  const where = describeCase(request, response.status)
  expect(response.status, where).toBeLessThan(500)
  if (response.status < 400) {
    await response.body?.cancel()
    return
  }
  expect(response.headers.get("content-type"), where).toBe("application/problem+json")
  if (response.status === 405) expect(response.headers.get("allow"), where).not.toBeNull()
  if (response.status === 429) expect(response.headers.get("retry-after"), where).not.toBeNull()
  if (request.method === "HEAD") return
  const problem = await response.json() as Record<string, unknown>
  expect(problem["status"], where).toBe(response.status)
  expect(typeof problem["title"], where).toBe("string")
  if (problem["type"] === "about:blank") expect(problem["title"], where).toBe(reasonPhrases[response.status])
  else expect(problem["type"], where).toMatch(/^urn:meshwork:problem:[a-z]+(?:-[a-z]+)*$/)
  if (problem["detail"] !== undefined) expect(typeof problem["detail"], where).toBe("string")
  if (problem["errors"] !== undefined) {
    expect(problem["errors"], where).toEqual(
      (problem["errors"] as Array<unknown>).map(() => ({ path: expect.any(Array), message: expect.any(String) }))
    )
  }
}

const keysUnder = async (prefix: string) => (await env.MESH_CONFIG.list({ prefix })).keys.map((key) => key.name)

describe("the gateway, fuzzed", () => {
  let flagWrites = 0
  let sent = 0
  // Splits other test files wrote in this workerd before (they share the store): not the fuzz's.
  let splitsBefore = new Set<string>()
  beforeAll(async () => {
    splitsBefore = new Set(await keysUnder("traffic/"))
  })

  afterAll(async () => {
    for (const key of await keysUnder("flags/fuzz-")) await env.MESH_CONFIG.delete(key)
  })

  it(`never answers a 5xx, and every error is one problem shape (${numRuns} random requests, seed ${seed})`, async () => {
    await fc.assert(
      fc.asyncProperty(request, async (value) => {
        const outgoing = build(value)
        if (outgoing === undefined) return
        const copy = outgoing.clone()
        const response = await env.GATEWAY.fetch(outgoing)
        sent++
        if (value.method === "PUT" && value.path.startsWith("/api/admin/flags/fuzz-") && response.ok) flagWrites++
        await check(copy, response)
      }),
      { seed, numRuns }
    )
  }, 180_000)

  it("left the configuration store within its bounds: splits only for services with versions, flags only as written", async () => {
    // Most cases are requests a client can send (fetch refuses a few header values and methods).
    expect(sent).toBeGreaterThan(numRuns * 0.8)
    for (const key of await keysUnder("traffic/")) if (!splitsBefore.has(key)) expect(key).toBe("traffic/users")
    expect((await keysUnder("flags/fuzz-")).length).toBeLessThanOrEqual(flagWrites)
  })
})
