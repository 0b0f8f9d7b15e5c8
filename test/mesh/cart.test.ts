/**
 * Batched lookups (src/layers/edge/Batching.ts): the resolver on its own, the
 * products client against the real products Worker, and the sessions cart
 * fan-out through the gateway.
 */
import { describe, expect, it } from "vitest"
import { expectProblem, send, signedIn, unique } from "../helpers.ts"

describe("fan-outs through the mesh", () => {
  it("answers ?ids= with the products that exist, in the order asked", async () => {
    const admin = await signedIn("admin")
    const tag = unique().toUpperCase()
    const ids: Array<string> = []
    for (const n of [0, 1, 2]) {
      const response = await send("POST", "/api/products", { sku: `IDS-${tag}-${n}`, name: `Ids ${n}`, priceCents: 1, sellerId: admin.id }, admin.token)
      ids.push((await response.json() as { id: string }).id)
    }
    const ghost = crypto.randomUUID()
    const page = await (await send("GET", `/api/products?ids=${ids[2]},${ghost},${ids[0]},${ids[2]}`, undefined, admin.token)).json() as {
      items: Array<{ id: string }>
      nextCursor: null
    }
    expect(page.items.map((product) => product.id)).toEqual([ids[2], ids[0]])
    expect(page.nextCursor).toBeNull()
    const tooMany = Array.from({ length: 101 }, (_, i) => `id${i}`).join(",")
    await expectProblem(await send("GET", `/api/products?ids=${tooMany}`, undefined, admin.token), 400)
    await expectProblem(await send("GET", "/api/products?ids=a,,b", undefined, admin.token), 400)
  })

  it("enriches a session's cart with its products, a product that is gone as null", async () => {
    const admin = await signedIn("admin")
    const tag = unique().toUpperCase()
    const ids: Array<string> = []
    for (let n = 0; n < 12; n++) {
      const response = await send("POST", "/api/products", { sku: `CART-${tag}-${n}`, name: `Cart ${n}`, priceCents: 100 + n, sellerId: admin.id }, admin.token)
      ids.push((await response.json() as { id: string }).id)
    }
    expect((await send("DELETE", `/api/products/${ids[11]}`, undefined, admin.token)).status).toBe(204)
    const created = await send("POST", "/api/sessions", { cart: Object.fromEntries(ids.map((id, n) => [id, n + 1])) }, admin.token)
    const session = await created.json() as { id: string }
    const cart = await (await send("GET", `/api/sessions/${session.id}/cart`, undefined, admin.token)).json() as {
      lines: Array<{ productId: string; quantity: number; product: { id: string; priceCents: number } | null }>
    }
    expect(cart.lines).toHaveLength(12)
    for (const line of cart.lines) {
      const n = ids.indexOf(line.productId)
      expect(line.quantity).toBe(n + 1)
      expect(line.product).toEqual(n === 11 ? null : expect.objectContaining({ id: line.productId, priceCents: 100 + n }))
    }
    const other = await signedIn()
    await expectProblem(await send("GET", `/api/sessions/${session.id}/cart`, undefined, other.token), 404)
  })
})
