/**
 * Black-box tests of the whole mesh: every request enters through the
 * gateway's service binding, crosses the router, and reaches the services,
 * all five running as separate Workers in workerd with D1.
 */
import { env } from "cloudflare:workers"
import { beforeAll, describe, expect, it } from "vitest"
import { expectProblem, gateway as rawGateway, meshHeaders, send as rawSend, signedIn, stream, unique } from "../helpers.ts"

// Every request but the public auth routes needs a token: these tests act as an admin.
let adminToken = ""
beforeAll(async () => {
  adminToken = (await signedIn("admin")).token
})

const gateway = (path: string, init: RequestInit = {}) =>
  rawGateway(path, { ...init, headers: { authorization: `Bearer ${adminToken}`, ...init.headers } })

const send = (method: string, path: string, body?: unknown) => rawSend(method, path, body, adminToken)

interface User {
  readonly id: string
  readonly email: string
  readonly name: string
  readonly role: string
  readonly active: boolean
}

const createUser = async (overrides: Record<string, unknown> = {}) => {
  const response = await send("POST", "/api/users", { email: `${unique()}@example.com`, name: "Ada", ...overrides })
  expect(response.status).toBe(201)
  return await response.json() as User
}

describe("routing at the edge", () => {
  it("routes /api/users and everything below it to the users service", async () => {
    expect((await gateway("/api/users")).status).toBe(200)
    const user = await createUser()
    expect((await gateway(`/api/users/${user.id}`)).status).toBe(200)
  })

  it.each(["/api/usersadmin", "/api/users-admin", "/api/nothing", "/api", "/", "/users", "/apix/users"])(
    "answers %s with a 404 problem",
    async (path) => {
      await expectProblem(await gateway(path), 404)
    }
  )

  it.each([
    "/api//users",
    "/api/users//x",
    "/api/users%2Fadmin",
    "/api/users/a%2fb",
    "/api/users%5Cadmin",
    "/api/users/a%5cb",
    "/api/users/%00"
  ])("refuses the ambiguous path %s with a 400 problem", async (path) => {
    await expectProblem(await gateway(path), 400)
  })

  it("keeps the query string on its way to the service", async () => {
    await createUser()
    await createUser()
    const page = await (await gateway("/api/users?limit=1")).json() as { items: Array<User> }
    expect(page.items).toHaveLength(1)
  })

  it("answers the public GET /health with its status only: no Worker, latency or breaker behind it", async () => {
    for (const headers of [{}, { authorization: `Bearer ${adminToken}` }]) {
      const response = await rawGateway("/health", { headers })
      expect(response.status).toBe(200)
      expect(response.headers.get("cache-control")).toBe("no-store")
      expect(await response.json()).toEqual({ status: "ok" })
    }
  })

  it("reports every Worker and version of the mesh, with readiness, to admins at GET /api/admin/health", async () => {
    const response = await gateway("/api/admin/health")
    expect(response.status).toBe(200)
    const report = await response.json() as { status: string; upstreams: Record<string, Record<string, unknown>> }
    const d1 = { d1: { status: "up" } }
    expect(report).toMatchObject({
      service: "gateway",
      status: "ok",
      upstreams: {
        router: { status: "up" },
        auth: { status: "up", breaker: "Closed", checks: d1 },
        users: { status: "up", version: "blue", breaker: "Closed", checks: d1 },
        "users@green": { status: "up", version: "green", breaker: "Closed", checks: d1 },
        products: { status: "up", breaker: "Closed", checks: { ...d1, durableObjects: { status: "up" } } },
        sessions: { status: "up", breaker: "Closed", checks: { durableObjects: { status: "up" } } }
      }
    })
    const member = await signedIn()
    await expectProblem(await rawGateway("/api/admin/health", { headers: { authorization: `Bearer ${member.token}` } }), 403)
    await expectProblem(await rawGateway("/api/admin/health"), 401)
  })
})

describe("bad input never reaches a 500", () => {
  it.each([
    ["a missing field", { name: "Ada" }, "email"],
    ["a wrong type", { email: "a@example.com", name: 5 }, "name"],
    ["an invalid email", { email: "not-an-email", name: "Ada" }, "email"],
    ["an unknown role", { email: "r@example.com", name: "Ada", role: "root" }, "role"],
    ["a blank name", { email: "b@example.com", name: "" }, "name"]
  ])("answers %s with a 400 problem naming the field", async (_, body, field) => {
    const problem = await expectProblem(await send("POST", "/api/users", body), 400)
    expect(problem["errors"]).toEqual(expect.arrayContaining([expect.objectContaining({ path: ["payload", field] })]))
  })

  it("answers an empty PATCH with 400", async () => {
    const user = await createUser()
    await expectProblem(await send("PATCH", `/api/users/${user.id}`, {}), 400)
  })

  it("answers an over-long id with a 400 naming the parameter", async () => {
    const problem = await expectProblem(await gateway(`/api/users/${"x".repeat(65)}`), 400)
    expect(problem["errors"]).toEqual([expect.objectContaining({ path: ["params", "id"] })])
  })

  it("answers a body that is not JSON with 400", async () => {
    await expectProblem(
      await gateway("/api/users", { method: "POST", body: "{not json", headers: { "content-type": "application/json" } }),
      400
    )
  })

  it.each([
    ["text/plain", "text/plain"],
    ["form data", "application/x-www-form-urlencoded"],
    ["JSON-like", "application/merge-patch+json"],
    ["no content type", undefined]
  ])("answers a %s body with 415", async (_, contentType) => {
    const response = await gateway("/api/users", {
      method: "POST",
      // Bytes, not a string: fetch gives a string body a text/plain type of its own.
      body: new TextEncoder().encode(JSON.stringify({ email: "x@example.com", name: "X" })),
      ...(contentType === undefined ? {} : { headers: { "content-type": contentType } })
    })
    await expectProblem(response, 415)
  })

  it("takes an empty body with no content type as no body", async () => {
    const seller = await createUser()
    const created = await send("POST", "/api/products", { sku: `EMPTY-${unique().toUpperCase()}`, name: "Empty", priceCents: 1, sellerId: seller.id })
    const { id } = await created.json() as { id: string }
    const response = await gateway(`/api/products/${id}/views`, { method: "POST", body: new Uint8Array(0) })
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ productId: id, views: 1 })
  })

  it("answers an oversized body with 413", async () => {
    const body = JSON.stringify({ email: "big@example.com", name: "x".repeat(70_000) })
    const problem = await expectProblem(
      await gateway("/api/users", { method: "POST", body, headers: { "content-type": "application/json" } }),
      413
    )
    expect(problem).toMatchObject({ limit: 65_536 })
  })

  it("answers a body over the gateway's own 1 MiB limit with 413 at the edge", async () => {
    const body = JSON.stringify({ email: "huge@example.com", name: "x".repeat(1_100_000) })
    const problem = await expectProblem(
      await gateway("/api/users", { method: "POST", body, headers: { "content-type": "application/json" } }),
      413
    )
    expect(problem).toMatchObject({ limit: 1_048_576 })
  })

  it("answers a streamed body without Content-Length over the gateway's limit with 413", async () => {
    const response = await gateway("/api/users", {
      method: "POST",
      body: stream(80, 16_384), // 1.25 MiB in chunks, no length announced
      headers: { "content-type": "application/json" }
    })
    expect(await expectProblem(response, 413)).toMatchObject({ limit: 1_048_576 })
  })

  it("answers a streamed body over the service's own limit with 413 at the service", async () => {
    // Straight to the users Worker (with a valid mesh identity), so no proxy buffers it first.
    const response = await env.USERS.fetch("http://users.internal/api/users", {
      method: "POST",
      body: stream(8, 16_384),
      headers: { "content-type": "application/json", ...await meshHeaders({ to: "users", method: "POST", path: "/api/users" }) }
    })
    expect(await expectProblem(response, 413)).toMatchObject({ limit: 65_536 })
  })
})
