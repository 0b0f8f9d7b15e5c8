/**
 * API keys for machine clients, through the gateway: issued once and stored
 * hashed, listed and revoked by their owner or an admin, taken as
 * `Authorization: ApiKey <key>` with the roles they were given, refused alike
 * when unknown, revoked or expired, and counted against their quota exactly,
 * with RateLimit headers and 429 + Retry-After.
 */
import { env } from "cloudflare:workers"
import { beforeAll, describe, expect, it } from "vitest"
import { eventually, expectProblem, gateway, send, signedIn } from "../helpers.ts"

interface Issued {
  readonly id: string
  readonly key: string
  readonly prefix: string
  readonly userId: string
  readonly roles: ReadonlyArray<string>
  readonly plan: string
  readonly quota: { readonly perMinute: number; readonly perDay: number }
  readonly expiresAt: string | null
  readonly revokedAt: string | null
}

let admin: Awaited<ReturnType<typeof signedIn>>
let user: Awaited<ReturnType<typeof signedIn>>
beforeAll(async () => {
  admin = await signedIn("admin")
  user = await signedIn("user")
})

const issue = async (body: Record<string, unknown>, token = admin.token) => {
  const response = await send("POST", "/api/auth/keys", body, token)
  expect(response.status, await response.clone().text()).toBe(201)
  return await response.json() as Issued
}

const withKey = (path: string, key: string, init: RequestInit = {}) =>
  gateway(path, { ...init, headers: { authorization: `ApiKey ${key}`, ...init.headers } })

const revoke = (id: string, token = admin.token) => send("DELETE", `/api/auth/keys/${id}`, undefined, token)

/** Waits out the last 2 s of a minute, so that a burst falls in one quota window. */
const awayFromMinuteEdge = async () => {
  const into = Date.now() % 60_000
  if (into > 58_000) await new Promise((resolve) => setTimeout(resolve, 60_100 - into))
}

const unknownKey = () => `mwk_${"A".repeat(21)}${crypto.randomUUID().replaceAll("-", "").slice(0, 22)}`

describe("issuing, listing and revoking", () => {
  it("shows a key once, stores only its hash, and lists it without the key", async () => {
    const issued = await issue({ name: "import job", userId: user.id })
    expect(issued.key).toMatch(/^mwk_[A-Za-z0-9_-]{43}$/)
    expect(issued).toMatchObject({ userId: user.id, roles: ["user"], plan: "free", quota: { perMinute: 60, perDay: 10000 }, expiresAt: null, revokedAt: null })
    expect(issued.prefix).toBe(issued.key.slice(0, 12))

    const row = await env.AUTH_DB.prepare("SELECT * FROM api_keys WHERE id = ?").bind(issued.id).first<Record<string, unknown>>()
    expect(row).not.toBeNull()
    expect(Object.values(row!).some((value) => String(value).includes(issued.key))).toBe(false)
    const hash = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(issued.key))), (b) => b.toString(16).padStart(2, "0")).join("")
    expect(row!["hash"]).toBe(hash)

    const listed = await (await send("GET", "/api/auth/keys", undefined, user.token)).json() as { items: Array<Record<string, unknown>> }
    const mine = listed.items.find((item) => item["id"] === issued.id)
    expect(mine).toMatchObject({ name: "import job", prefix: issued.prefix })
    expect(mine).not.toHaveProperty("key")
  })

  it("lets a user issue keys for itself only, with its own roles at most, and no plan or quota of its choosing", async () => {
    const own = await issue({ name: "mine" }, user.token)
    expect(own.userId).toBe(user.id)
    await expectProblem(await send("POST", "/api/auth/keys", { name: "theirs", userId: admin.id }, user.token), 403)
    await expectProblem(await send("POST", "/api/auth/keys", { name: "up", roles: ["admin"] }, user.token), 403)
    await expectProblem(await send("POST", "/api/auth/keys", { name: "big", perMinute: 100000 }, user.token), 403)
    // Nor can an admin give a user's key the admin role.
    await expectProblem(await send("POST", "/api/auth/keys", { name: "up", userId: user.id, roles: ["admin"] }, admin.token), 403)
  })

  it("refuses bad input: an unknown user or plan, a past expiry, an empty name", async () => {
    expect((await expectProblem(await send("POST", "/api/auth/keys", { name: "x", userId: "nobody-here" }, admin.token), 404))["type"]).toBe(
      "urn:meshwork:problem:user-not-found"
    )
    expect((await expectProblem(await send("POST", "/api/auth/keys", { name: "x", plan: "platinum" }, admin.token), 422))["type"]).toBe(
      "urn:meshwork:problem:unknown-plan"
    )
    await expectProblem(await send("POST", "/api/auth/keys", { name: "x", expiresAt: "2001-01-01T00:00:00Z" }, admin.token), 400)
    await expectProblem(await send("POST", "/api/auth/keys", { name: "x", expiresAt: "soon" }, admin.token), 400)
    await expectProblem(await send("POST", "/api/auth/keys", { name: "" }, admin.token), 400)
  })

  it("lets only the owner or an admin revoke a key; to anyone else it does not exist", async () => {
    const issued = await issue({ name: "revocable", userId: user.id })
    const other = await signedIn("user")
    await expectProblem(await revoke(issued.id, other.token), 404)
    expect((await revoke(issued.id, user.token)).status).toBe(204)
    expect((await revoke(issued.id, user.token)).status).toBe(204)
    const listed = await (await send("GET", `/api/auth/keys?userId=${user.id}`, undefined, admin.token)).json() as { items: Array<Issued> }
    expect(listed.items.find((item) => item.id === issued.id)?.revokedAt).not.toBeNull()
    await expectProblem(await send("GET", `/api/auth/keys?userId=${admin.id}`, undefined, other.token), 403)
  })

  it("keeps verification to the mesh's Workers", async () => {
    const issued = await issue({ name: "probe" })
    await expectProblem(await send("POST", "/api/auth/keys/verify", { key: issued.key }, admin.token), 403)
    await expectProblem(await withKey("/api/auth/keys/verify", issued.key, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: issued.key })
    }), 403)
  })
})

describe("calling with a key", () => {
  it("acts as its user with its roles: a user's key reads its user, not the admin API", async () => {
    const issued = await issue({ name: "reader", userId: user.id })
    const me = await withKey(`/api/users/${user.id}`, issued.key)
    expect(me.status).toBe(200)
    expect(me.headers.get("ratelimit-policy")).toContain(`"key-minute";q=60;w=60, "key-day";q=10000;w=86400`)
    expect(me.headers.get("ratelimit")).toMatch(/"key-minute";r=59;t=\d+, "key-day";r=9999;t=\d+/)
    await expectProblem(await withKey("/api/users", issued.key), 403)
    await expectProblem(await withKey("/api/admin/status", issued.key), 403)
    const adminKey = await issue({ name: "ops", roles: ["admin"] })
    expect((await withKey("/api/users?limit=1", adminKey.key)).status).toBe(200)
  })

  it("answers an unknown and a revoked key alike: 401 problem+json with an ApiKey challenge", async () => {
    const issued = await issue({ name: "gone", userId: user.id })
    expect((await revoke(issued.id)).status).toBe(204)
    const revoked = await withKey("/api/products", issued.key)
    const unknown = await withKey("/api/products", unknownKey())
    for (const response of [revoked, unknown]) {
      expect(response.headers.get("www-authenticate")).toBe(`ApiKey realm="meshwork", error="invalid_key"`)
    }
    expect(await expectProblem(revoked, 401)).toEqual(await expectProblem(unknown, 401))
  })

  it.each([
    ["no key", "ApiKey"],
    ["a short key", "ApiKey mwk_short"],
    ["two keys", `ApiKey ${unknownKey()} ${unknownKey()}`],
    ["another prefix", `ApiKey sk_${"a".repeat(43)}`],
    ["a key with a bad character", `ApiKey mwk_${"a".repeat(42)}!`]
  ])("refuses %s as malformed, 401, without asking auth", async (_, header) => {
    const problem = await expectProblem(await gateway("/api/products", { headers: { authorization: header } }), 401)
    expect(problem["detail"]).toBe("The API key is malformed")
  })

  it("challenges a request with no credentials for both schemes", async () => {
    const response = await gateway("/api/products")
    await expectProblem(response, 401)
    expect(response.headers.get("www-authenticate")).toBe(`Bearer realm="meshwork", ApiKey realm="meshwork"`)
  })

  it("refuses a key once it expires, though the gateway had taken it", async () => {
    const issued = await issue({ name: "brief", userId: user.id, expiresAt: new Date(Date.now() + 1500).toISOString() })
    expect((await withKey(`/api/users/${user.id}`, issued.key)).status).toBe(200)
    await new Promise((resolve) => setTimeout(resolve, 1700))
    await expectProblem(await withKey(`/api/users/${user.id}`, issued.key), 401)
  })

  it("stops taking a revoked key within API_KEY_CACHE_SECONDS (2 s here, 10 s by default)", { timeout: 30_000 }, async () => {
    const issued = await issue({ name: "leaked", userId: user.id })
    expect((await withKey(`/api/users/${user.id}`, issued.key)).status).toBe(200)
    expect((await revoke(issued.id)).status).toBe(204)
    const revokedAt = Date.now()
    await eventually(async () => (await withKey(`/api/users/${user.id}`, issued.key)).status === 401, 15)
    expect(Date.now() - revokedAt).toBeLessThan(4_000)
  })

  it("refuses a disabled user's key with 403", async () => {
    const machine = await signedIn("user")
    const issued = await issue({ name: "disabled soon", userId: machine.id })
    const disabled = await send("PATCH", `/api/users/${machine.id}`, { active: false }, admin.token)
    expect(disabled.status).toBe(200)
    await expectProblem(await withKey(`/api/users/${machine.id}`, issued.key), 403)
  })

  it("lets a public route through with any Authorization, as anonymous", async () => {
    expect((await withKey("/api/auth/.well-known/jwks.json", unknownKey())).status).toBe(200)
  })
})

describe("quotas", () => {
  it("admits exactly the per-minute quota of a concurrent burst, and refuses the rest with 429 and Retry-After", async () => {
    const issued = await issue({ name: "burst", userId: user.id, perMinute: 5, perDay: 1000 })
    await awayFromMinuteEdge()
    const answers = await Promise.all(Array.from({ length: 12 }, () => withKey(`/api/users/${user.id}`, issued.key)))
    const statuses = answers.map((response) => response.status)
    expect(statuses.filter((status) => status === 200)).toHaveLength(5)
    expect(statuses.filter((status) => status === 429)).toHaveLength(7)
    const refused = answers.find((response) => response.status === 429)!
    const problem = await expectProblem(refused, 429)
    expect(problem["detail"]).toBe("The API key's quota of 5 requests a minute is used up")
    const retryAfter = Number(refused.headers.get("retry-after"))
    expect(retryAfter).toBeGreaterThan(0)
    expect(retryAfter).toBeLessThanOrEqual(60)
    expect(refused.headers.get("ratelimit")).toMatch(/"key-minute";r=0;t=\d+/)
  })

  it("refuses past the per-day quota until the UTC day ends", async () => {
    const issued = await issue({ name: "daily", userId: user.id, perMinute: 100, perDay: 3 })
    await awayFromMinuteEdge()
    for (let i = 0; i < 3; i++) expect((await withKey(`/api/users/${user.id}`, issued.key)).status).toBe(200)
    const refused = await withKey(`/api/users/${user.id}`, issued.key)
    expect((await expectProblem(refused, 429))["detail"]).toBe("The API key's quota of 3 requests a day is used up")
    const now = new Date()
    const untilMidnight = (Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()) / 1000
    expect(Math.abs(Number(refused.headers.get("retry-after")) - untilMidnight)).toBeLessThan(5)
  })

  it("counts each key apart, and keys not at all when it refuses them", async () => {
    const first = await issue({ name: "one", userId: user.id, perMinute: 1, perDay: 100 })
    const second = await issue({ name: "two", userId: user.id, perMinute: 1, perDay: 100 })
    await awayFromMinuteEdge()
    expect((await withKey(`/api/users/${user.id}`, first.key)).status).toBe(200)
    expect((await withKey(`/api/users/${user.id}`, first.key)).status).toBe(429)
    expect((await withKey(`/api/users/${user.id}`, second.key)).status).toBe(200)
  })
})
