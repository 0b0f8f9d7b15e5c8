/**
 * The edge cache (src/layers/edge/EdgeCache.ts) over the real Cache API, on
 * virtual time, with an upstream the tests control; then the gateway's
 * cache of product reads, through the mesh.
 */
import { expect, it } from "@effect/vitest"
import { describe } from "vitest"
import { expectProblem, gateway, send, signedIn, unique } from "../helpers.ts"

/** Reads until the answer is a HIT: a copy is stored after its MISS was answered. */
const untilHit = async (read: () => Promise<Response>) => {
  for (let i = 0; i < 40; i++) {
    const response = await read()
    await response.body?.cancel()
    if (response.headers.get("x-cache") === "HIT") return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error("never a HIT")
}

describe("the gateway's cache of product reads", () => {
  it("caches a product per user, purges it on update, and lets only admins purge", async () => {
    const admin = await signedIn("admin")
    const user = await signedIn()
    const created = await send("POST", "/api/products", { sku: `CACHE-${unique().toUpperCase()}`, name: "Cached", priceCents: 1, sellerId: admin.id }, admin.token)
    const { id } = await created.json() as { id: string }
    const read = (token: string) => gateway(`/api/products/${id}`, { headers: { authorization: `Bearer ${token}` } })
    const cacheOf = async (response: Response) => {
      await response.body?.cancel()
      return response.headers.get("x-cache")
    }
    expect(await cacheOf(await read(admin.token))).toBe("MISS")
    // The copy is stored after the answer; give the gateway a moment.
    let second = await read(admin.token)
    for (let i = 0; i < 20 && second.headers.get("x-cache") !== "HIT"; i++) {
      await second.body?.cancel()
      await new Promise((resolve) => setTimeout(resolve, 50))
      second = await read(admin.token)
    }
    expect(await cacheOf(second)).toBe("HIT")
    expect(await cacheOf(await read(user.token))).toBe("MISS")
    await untilHit(() => read(user.token))

    // A write through the gateway purges the product for everyone, before it answers.
    expect((await send("PATCH", `/api/products/${id}`, { name: "Renamed" }, admin.token)).status).toBe(200)
    const after = await read(admin.token)
    expect(after.headers.get("x-cache")).toBe("MISS")
    expect(await after.json()).toMatchObject({ name: "Renamed" })
    const userAfter = await read(user.token)
    expect(userAfter.headers.get("x-cache")).toBe("MISS")
    expect(await userAfter.json()).toMatchObject({ name: "Renamed" })

    await untilHit(() => read(admin.token))
    await expectProblem(await send("POST", "/api/admin/cache/purge", { tags: [`product:${id}`] }, user.token), 403)
    await expectProblem(await send("POST", "/api/admin/cache/purge", { tags: "nope" }, admin.token), 400)
    const purged = await send("POST", "/api/admin/cache/purge", { tags: [`product:${id}`] }, admin.token)
    expect(purged.status).toBe(200)
    // The admin's copy and the user's (stored again after the write) carry the product's tag.
    expect(((await purged.json()) as { purged: number }).purged).toBeGreaterThanOrEqual(1)
    expect(await cacheOf(await read(admin.token))).toBe("MISS")
  })
})
