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

describe("products", () => {
  const product = (sellerId: string, overrides: Record<string, unknown> = {}) => ({
    sku: `SKU-${unique().toUpperCase()}`,
    name: "Widget",
    priceCents: 1999,
    sellerId,
    ...overrides
  })

  it("creates, reads, updates and deletes a product sold by an active user", async () => {
    const seller = await createUser()
    const created = await send("POST", "/api/products", product(seller.id, { stock: 3 }))
    expect(created.status).toBe(201)
    const item = await created.json() as { id: string; sku: string }
    expect(item).toMatchObject({ name: "Widget", priceCents: 1999, currency: "USD", stock: 3, sellerId: seller.id })

    expect(await (await gateway(`/api/products/${item.id}`)).json()).toEqual(item)
    const patched = await send("PATCH", `/api/products/${item.id}`, { priceCents: 2499, stock: 0 })
    expect(await patched.json()).toMatchObject({ priceCents: 2499, stock: 0, sku: item.sku })

    expect((await send("DELETE", `/api/products/${item.id}`)).status).toBe(204)
    const gone = await expectProblem(await gateway(`/api/products/${item.id}`), 404)
    expect(gone).toMatchObject({ type: "urn:meshwork:problem:product-not-found" })
  })

  it("asks the users service, through its typed client, whether the seller exists and is active", async () => {
    const unknownSeller = await expectProblem(await send("POST", "/api/products", product("no-such-user")), 422)
    expect(unknownSeller).toMatchObject({ type: "urn:meshwork:problem:unknown-seller", sellerId: "no-such-user" })

    const disabled = await createUser({ active: false })
    await expectProblem(await send("POST", "/api/products", product(disabled.id)), 422)

    const seller = await createUser()
    const item = await (await send("POST", "/api/products", product(seller.id))).json() as { id: string }
    await expectProblem(await send("PATCH", `/api/products/${item.id}`, { sellerId: disabled.id }), 422)
  })

  it("refuses an id that is no path segment (`.`, `..`, `a/b`) at its edge with a 400 naming the field, never a 500", async () => {
    const seller = await createUser()
    const item = await (await send("POST", "/api/products", product(seller.id))).json() as { id: string }
    for (const sellerId of [".", "..", "a/b", "a b"]) {
      const created = await expectProblem(await send("POST", "/api/products", product(sellerId)), 400)
      expect(JSON.stringify(created)).toContain("sellerId")
      await expectProblem(await send("PATCH", `/api/products/${item.id}`, { sellerId }), 400)
      // An import checks its items when it is submitted, not on a queue that would retry them.
      await expectProblem(await send("POST", "/api/products/imports", { products: [product(sellerId)] }), 400)
    }
  })

  it("refuses a duplicate SKU with 409", async () => {
    const seller = await createUser()
    const first = product(seller.id)
    expect((await send("POST", "/api/products", first)).status).toBe(201)
    const conflict = await expectProblem(await send("POST", "/api/products", { ...first, name: "Other" }), 409)
    expect(conflict).toMatchObject({ type: "urn:meshwork:problem:sku-taken", sku: first.sku })
  })

  it.each([
    ["a negative price", { priceCents: -1 }, "priceCents"],
    ["a fractional price", { priceCents: 1.5 }, "priceCents"],
    ["a price given as a string", { priceCents: "19.99" }, "priceCents"],
    ["a lower-case SKU", { sku: "abc" }, "sku"],
    ["a bad currency", { currency: "dollars" }, "currency"]
  ])("refuses %s with a 400 naming the field", async (_, overrides, field) => {
    const problem = await expectProblem(await send("POST", "/api/products", product("any", overrides)), 400)
    expect(problem["errors"]).toEqual(expect.arrayContaining([expect.objectContaining({ path: ["payload", field] })]))
  })

  it("pages through products with a cursor", async () => {
    const seller = await createUser()
    for (let i = 0; i < 3; i++) await send("POST", "/api/products", product(seller.id))
    const first = await (await gateway("/api/products?limit=2")).json() as { items: Array<unknown>; nextCursor: string }
    expect(first.items).toHaveLength(2)
    expect(first.nextCursor).toEqual(expect.any(String))
    const second = await gateway(`/api/products?limit=2&cursor=${first.nextCursor}`)
    expect(second.status).toBe(200)
  })
})
