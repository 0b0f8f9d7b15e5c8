/**
 * Deployment strategies: traffic splits between versions (src/layers/release/TrafficManager.ts),
 * feature flags (src/layers/release/FeatureFlags.ts), both over the mesh's real KV
 * store, and the gateway's admin API that drives them.
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { afterEach, describe } from "vitest"
import { eventually, expectProblem, gateway, login, seedUser, send, signedIn } from "../helpers.ts"

const kv = env.MESH_CONFIG

describe("the admin API and the router", () => {
  afterEach(async () => {
    await kv.delete("traffic/users")
    await kv.delete("flags/new-checkout")
  })

  it("shifts users' traffic between blue and green, rolls back, and lets an admin pick a version", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    const versionOf = async (token: string, headers: Record<string, string> = {}) => {
      const response = await gateway(`/api/users/${member.id}`, { headers: { authorization: `Bearer ${token}`, ...headers } })
      expect(response.status).toBe(200)
      await response.body?.cancel()
      return response.headers.get("x-meshwork-version")
    }
    expect(await versionOf(admin.token)).toBe("blue")

    const shifted = await send("PUT", "/api/admin/traffic/users", { stable: "blue", canary: "green", weight: 100 }, admin.token)
    expect(shifted.status).toBe(200)
    expect(await versionOf(admin.token)).toBe("green")
    expect(await versionOf(member.token)).toBe("green")

    const status = await (await send("GET", "/api/admin/status", undefined, admin.token)).json() as { traffic: Record<string, unknown> }
    expect(status.traffic["users"]).toMatchObject({ stable: "blue", canary: "green", weight: 100 })

    const rolledBack = await send("POST", "/api/admin/traffic/users/rollback", undefined, admin.token)
    expect(rolledBack.status).toBe(200)
    expect(await rolledBack.json()).toMatchObject({ weight: 0, rolledBack: { canary: "green" } })
    expect(await versionOf(member.token)).toBe("blue")

    // The override header is an admin's alone.
    expect(await versionOf(admin.token, { "x-use-version": "green" })).toBe("green")
    expect(await versionOf(member.token, { "x-use-version": "green" })).toBe("blue")
  })

  it("judges each split an admin sets on its own answers: the routers' shared count starts afresh", async () => {
    const admin = await signedIn("admin")
    const rollouts = env.ROLLOUTS.get(env.ROLLOUTS.idFromName("users")) as unknown as {
      record: (canary: string, answers: { total: number; failed: number }, settings: Record<string, number>) => Promise<string | undefined>
    }
    expect((await send("PUT", "/api/admin/traffic/users", { stable: "blue", canary: "green", weight: 0 }, admin.token)).status).toBe(200)
    // 30 failed answers of green, under a threshold they do not reach.
    expect(await rollouts.record("green", { total: 30, failed: 30 }, { minRequests: 100 })).toBeUndefined()
    // One more would trip the default rollback (20 answers, a fifth failed)...
    // ...but the admin sets the split again (a fix deployed): counting starts afresh.
    expect((await send("PUT", "/api/admin/traffic/users", { stable: "blue", canary: "green", weight: 10 }, admin.token)).status).toBe(200)
    expect(await rollouts.record("green", { total: 1, failed: 1 }, {})).toBeUndefined()
    // Without a new split, the count goes on: 19 more failures trip it.
    expect(await rollouts.record("green", { total: 19, failed: 19 }, {})).toMatch(/^automatic: 20 of 20 answers of green failed/)
  })

  it("turns a flag on for a user, which the sessions service sees", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    const created = await send("POST", "/api/sessions", {}, member.token)
    const { id } = await created.json() as { id: string }
    const checkout = async () => ((await (await send("GET", `/api/sessions/${id}/cart`, undefined, member.token)).json()) as { checkout: string }).checkout
    expect(await checkout()).toBe("classic")
    expect((await send("PUT", "/api/admin/flags/new-checkout", { enabled: true, percentage: 0, users: [member.id] }, admin.token)).status).toBe(200)
    expect(await checkout()).toBe("new")
    expect(await (await send("GET", "/api/admin/flags", undefined, admin.token)).json()).toMatchObject({ "new-checkout": { users: [member.id] } })
    // The kill switch.
    await send("PUT", "/api/admin/flags/new-checkout", { enabled: false, percentage: 100, users: [member.id] }, admin.token)
    expect(await checkout()).toBe("classic")
    expect((await send("DELETE", "/api/admin/flags/new-checkout", undefined, admin.token)).status).toBe(204)
  })

  it("refuses non-admins on every admin endpoint, and bad input with 400", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    for (const [method, path, body] of [
      ["GET", "/api/admin/status", undefined],
      ["GET", "/api/admin/traffic", undefined],
      ["PUT", "/api/admin/traffic/users", { stable: "blue", canary: "green", weight: 50 }],
      ["POST", "/api/admin/traffic/users/rollback", undefined],
      ["GET", "/api/admin/flags", undefined],
      ["PUT", "/api/admin/flags/x", { enabled: true, percentage: 5 }],
      ["DELETE", "/api/admin/flags/x", undefined],
      ["POST", "/api/admin/cache/purge", { tags: ["x"] }]
    ] as const) {
      await expectProblem(await send(method, path, body, member.token), 403)
    }
    await expectProblem(await gateway("/api/admin/status"), 401)
    await expectProblem(await send("PUT", "/api/admin/traffic/users", { stable: "blue", weight: 20 }, admin.token), 400)
    await expectProblem(await send("PUT", "/api/admin/traffic/users", { stable: "blue", canary: "green", weight: 120 }, admin.token), 400)
    await expectProblem(await send("PUT", "/api/admin/traffic/Users", { stable: "blue", weight: 0 }, admin.token), 400)
    await expectProblem(await send("PUT", "/api/admin/flags/new-checkout", { enabled: "yes" }, admin.token), 400)
    await expectProblem(await send("POST", "/api/admin/traffic/nothing-here/rollback", undefined, admin.token), 404)
    await expectProblem(await send("GET", "/api/admin/nope", undefined, admin.token), 404)
  })

  it("answers a method a resource does not take with 405 and the Allow header it must carry (RFC 9110)", async () => {
    const admin = await signedIn("admin")
    for (const [method, path, allow] of [
      ["DELETE", "/api/admin/status", "GET"],
      ["POST", "/api/admin/traffic/users", "GET, PUT"],
      ["PATCH", "/api/admin/flags/x", "GET, PUT, DELETE"],
      ["GET", "/api/admin/cache/purge", "POST"]
    ] as const) {
      const response = await send(method, path, undefined, admin.token)
      await expectProblem(response.clone(), 405)
      expect(response.headers.get("allow")).toBe(allow)
    }
    const health = await gateway("/health", { method: "POST" })
    expect(health.status).toBe(405)
    expect(health.headers.get("allow")).toBe("GET, HEAD")
  })
})

describe("the admin API's limits and checks", () => {
  afterEach(async () => {
    for (const key of ["traffic/users", "traffic/nothing-here", "traffic/products", "flags/huge"]) await kv.delete(key)
  })

  it("refuses a body over its limit (413), and one that is not JSON (415), storing nothing", async () => {
    const admin = await signedIn("admin")
    const huge = { enabled: true, percentage: 5, users: Array.from({ length: 1000 }, (_, i) => `${i}`.padEnd(3000, "x")) }
    const tooLarge = await expectProblem(await send("PUT", "/api/admin/flags/huge", huge, admin.token), 413)
    expect(tooLarge).toMatchObject({ limit: 128 * 1024 })
    const notJson = await gateway("/api/admin/flags/huge", {
      method: "PUT",
      headers: { authorization: `Bearer ${admin.token}`, "content-type": "text/plain" },
      body: JSON.stringify({ enabled: true, percentage: 5 })
    })
    await expectProblem(notJson, 415)
    // A user id is at most 64 characters, as everywhere in the mesh.
    const longId = await expectProblem(await send("PUT", "/api/admin/flags/huge", { enabled: true, percentage: 5, users: ["x".repeat(65)] }, admin.token), 400)
    expect(longId["errors"]).toEqual([expect.objectContaining({ path: ["payload", "users", 0] })])
    expect(await kv.get("flags/huge")).toBeNull()
  })

  it("refuses a split for a service the mesh does not route, or for versions it lacks", async () => {
    const admin = await signedIn("admin")
    await expectProblem(await send("PUT", "/api/admin/traffic/nothing-here", { stable: "blue", weight: 0 }, admin.token), 404)
    const noVersions = await expectProblem(await send("PUT", "/api/admin/traffic/products", { stable: "blue", weight: 0 }, admin.token), 400)
    expect(noVersions["errors"]).toEqual([expect.objectContaining({ path: ["params", "service"] })])
    const purple = await expectProblem(
      await send("PUT", "/api/admin/traffic/users", { stable: "blue", canary: "purple", weight: 10 }, admin.token),
      400
    )
    expect(purple["errors"]).toEqual([{ path: ["payload", "canary"], message: "users has no version purple; its versions are blue, green" }])
    const status = await (await send("GET", "/api/admin/status", undefined, admin.token)).json() as { traffic: Record<string, unknown> }
    expect(Object.keys(status.traffic)).not.toContain("nothing-here")
    expect(status.traffic["users"]).toBeUndefined()
    expect((await send("PUT", "/api/admin/traffic/users", { stable: "green", weight: 0 }, admin.token)).status).toBe(200)
  })

  it("answers invalid input with the services' problem: about:blank, errors naming each field", async () => {
    const admin = await signedIn("admin")
    const fromService = await expectProblem(await send("POST", "/api/users", { email: "x@example.com", name: 5 }, admin.token), 400)
    const fromAdmin = await expectProblem(
      await send("PUT", "/api/admin/traffic/users", { stable: "blue", canary: "green", weight: 120 }, admin.token),
      400
    )
    for (const problem of [fromService, fromAdmin]) {
      expect(Object.keys(problem).sort()).toEqual(["detail", "errors", "status", "title", "type"])
      expect(problem).toMatchObject({ type: "about:blank", title: "Bad Request", detail: "Request validation failed" })
    }
    expect(fromService["errors"]).toEqual([expect.objectContaining({ path: ["payload", "name"] })])
    expect(fromAdmin["errors"]).toEqual([expect.objectContaining({ path: ["payload", "weight"] })])
    const badName = await expectProblem(await send("PUT", "/api/admin/traffic/Users", { stable: "blue", weight: 0 }, admin.token), 400)
    expect(badName["errors"]).toEqual([expect.objectContaining({ path: ["params", "service"] })])
    const noCanary = await expectProblem(await send("PUT", "/api/admin/traffic/users", { stable: "blue", weight: 20 }, admin.token), 400)
    expect(noCanary["errors"]).toEqual([{ path: ["payload", "canary"], message: "A weight above 0 needs a canary" }])
  })
})

describe("credentials follow their user", () => {
  const credentialRows = async (userId: string) =>
    (await env.AUTH_DB.prepare("SELECT COUNT(*) AS n FROM credentials WHERE user_id = ?").bind(userId).first<{ n: number }>())!.n
  const refreshRows = async (userId: string) =>
    (await env.AUTH_DB.prepare("SELECT COUNT(*) AS n FROM refresh_tokens WHERE user_id = ?").bind(userId).first<{ n: number }>())!.n

  it("refuses to set a password for a user that does not exist, creating no credential", async () => {
    const admin = await signedIn("admin")
    const unknown = crypto.randomUUID()
    const problem = await expectProblem(
      await send("PUT", `/api/auth/users/${unknown}/password`, { password: "a-long-enough-password" }, admin.token),
      404
    )
    expect(problem).toMatchObject({ type: "urn:meshwork:problem:user-not-found", userId: unknown })
    expect(await credentialRows(unknown)).toBe(0)
    // An existing user's password is still set.
    const member = await seedUser()
    expect((await send("PUT", `/api/auth/users/${member.id}/password`, { password: "a-long-enough-password" }, admin.token)).status).toBe(204)
  })

  it("forgets a deleted user's credentials and refresh tokens", async () => {
    const admin = await signedIn("admin")
    const member = await seedUser()
    await login(member)
    await login(member)
    expect(await credentialRows(member.id)).toBe(1)
    expect(await refreshRows(member.id)).toBe(2)
    expect((await send("DELETE", `/api/users/${member.id}`, undefined, admin.token)).status).toBe(204)
    await eventually(async () => (await credentialRows(member.id)) === 0 && (await refreshRows(member.id)) === 0)
    await expectProblem(await send("DELETE", `/api/users/${member.id}`, undefined, admin.token), 404)
  })
})
