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

describe("changing one's own email", () => {
  const changeEmail = (self: { id: string; token: string }, body: Record<string, unknown>) =>
    rawSend("PUT", `/api/auth/users/${self.id}/email`, body, self.token)

  /** What a client can tell two answers apart by. */
  const observable = async (response: Response) => ({
    status: response.status,
    contentType: response.headers.get("content-type"),
    retryAfter: response.headers.get("retry-after"),
    body: await response.text()
  })

  it("needs the current password, and answers alike whether the address is taken or free", async () => {
    const self = await signedIn()
    const taken = await createUser()
    const takenByDisabled = await createUser({ active: false })
    const free = `${unique()}@example.com`

    // Not through users: that would tell whether the address is taken, and asks for no password.
    const refused = await expectProblem(await rawSend("PATCH", `/api/users/${self.id}`, { email: free }, self.token), 403)
    expect(refused["detail"]).toContain("/api/auth/users/{id}/email")
    await expectProblem(await rawSend("PATCH", `/api/users/${self.id}`, { name: "N", email: taken.email }, self.token), 403)
    // Without the current password, or with a wrong one.
    await expectProblem(await changeEmail(self, { email: free }), 400)
    await expectProblem(await changeEmail(self, { email: free, current_password: "not-the-password" }), 401)

    const answers = [
      await observable(await changeEmail(self, { email: taken.email.toUpperCase(), current_password: self.password })),
      await observable(await changeEmail(self, { email: takenByDisabled.email, current_password: self.password })),
      await observable(await changeEmail(self, { email: free, current_password: self.password }))
    ]
    expect(answers[0]).toEqual({ status: 202, contentType: null, retryAfter: null, body: "" })
    expect(answers[1]).toEqual(answers[0])
    expect(answers[2]).toEqual(answers[0])
    // The free address was taken on; the others' owners kept theirs.
    const me = await rawSend("GET", `/api/users/${self.id}`, undefined, self.token)
    expect(await me.json()).toMatchObject({ id: self.id, email: free })
    expect(await (await gateway(`/api/users/${taken.id}`)).json()).toMatchObject({ email: taken.email })
  })

  it("is for one's own email only, and a few changes an hour", async () => {
    const self = await signedIn()
    const other = await createUser()
    await expectProblem(await changeEmail({ id: other.id, token: self.token }, { email: `${unique()}@example.com`, current_password: self.password }), 403)
    // Five changes, made or not, then the sixth waits (1 min, doubling up to an hour).
    for (let change = 0; change < 5; change++) {
      expect((await changeEmail(self, { email: `${unique()}@example.com`, current_password: self.password })).status).toBe(202)
    }
    const blocked = await changeEmail(self, { email: `${unique()}@example.com`, current_password: self.password })
    const problem = await expectProblem(blocked, 429)
    expect(problem).toMatchObject({ type: "urn:meshwork:problem:too-many-attempts" })
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(50)
  })

  it("still tells an admin that an address is taken, with 409, for disabled accounts too", async () => {
    const target = await createUser()
    const disabled = await createUser({ active: false })
    const conflict = await expectProblem(await send("PATCH", `/api/users/${target.id}`, { email: disabled.email }), 409)
    expect(conflict).toMatchObject({ type: "urn:meshwork:problem:email-taken" })
    expect((await send("PATCH", `/api/users/${target.id}`, { email: `${unique()}@example.com` })).status).toBe(200)
  })
})
