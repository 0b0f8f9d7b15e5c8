/**
 * Black-box tests of the whole mesh: every request enters through the
 * gateway's service binding, crosses the router, and reaches the services,
 * all five running as separate Workers in workerd with D1.
 */
import { beforeAll, describe, expect, it } from "vitest"
import { expectProblem, gateway as rawGateway, send as rawSend, signedIn, unique } from "../helpers.ts"

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

describe("users", () => {
  it("creates, reads, updates and deletes a user", async () => {
    const created = await createUser({ name: "Grace", role: "admin" })
    expect(created).toMatchObject({ name: "Grace", role: "admin", active: true })
    expect(typeof created.id).toBe("string")

    expect(await (await gateway(`/api/users/${created.id}`)).json()).toEqual(created)

    const patched = await send("PATCH", `/api/users/${created.id}`, { name: "Grace Hopper", active: false })
    expect(patched.status).toBe(200)
    expect(await patched.json()).toMatchObject({ id: created.id, name: "Grace Hopper", active: false, role: "admin" })

    expect((await send("DELETE", `/api/users/${created.id}`)).status).toBe(204)
    const gone = await expectProblem(await gateway(`/api/users/${created.id}`), 404)
    expect(gone).toMatchObject({ type: "urn:meshwork:problem:user-not-found", userId: created.id })
    await expectProblem(await send("DELETE", `/api/users/${created.id}`), 404)
    await expectProblem(await send("PATCH", `/api/users/${created.id}`, { name: "x" }), 404)
  })

  it("refuses a second user with the same email, whatever its case, with 409", async () => {
    const email = `${unique()}@example.com`
    await createUser({ email })
    const conflict = await expectProblem(await send("POST", "/api/users", { email: email.toUpperCase(), name: "B" }), 409)
    expect(conflict).toMatchObject({ type: "urn:meshwork:problem:email-taken" })
    const other = await createUser()
    await expectProblem(await send("PATCH", `/api/users/${other.id}`, { email }), 409)
  })

  it("pages through every user once, in id order", async () => {
    const mine = await Promise.all(Array.from({ length: 5 }, () => createUser()))
    const seen: Array<string> = []
    let cursor: string | null = null
    do {
      const query: string = cursor === null ? "?limit=2" : `?limit=2&cursor=${cursor}`
      const response = await gateway(`/api/users${query}`)
      expect(response.status).toBe(200)
      const page = await response.json() as { items: Array<User>; nextCursor: string | null }
      expect(page.items.length).toBeLessThanOrEqual(2)
      seen.push(...page.items.map((user) => user.id))
      cursor = page.nextCursor
    } while (cursor !== null)
    expect(new Set(seen).size).toBe(seen.length)
    expect(seen).toEqual([...seen].sort())
    expect(seen).toEqual(expect.arrayContaining(mine.map((user) => user.id)))
  })

  it.each([
    ["limit=0", "limit"],
    ["limit=101", "limit"],
    ["limit=ten", "limit"],
    ["cursor=not%20a%20cursor", "cursor"]
  ])("refuses ?%s with a 400 naming the parameter", async (query, field) => {
    const problem = await expectProblem(await gateway(`/api/users?${query}`), 400)
    expect(JSON.stringify(problem["errors"])).toContain(field)
  })
})
