/** The sharding rule of src/layers/state/Sharding.ts: where a key's Durable Object is. */
import { env } from "cloudflare:workers"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import * as ShardedCounters from "../../src/layers/state/ShardedCounters.ts"
import * as Sharding from "../../src/layers/state/Sharding.ts"
import { expectProblem, send, signedIn, unique } from "../helpers.ts"

describe("counters sharded over Durable Objects", () => {
  it("keeps each key on the shard the rule names, with exact counts, and merges the top over all shards", async () => {
    const prefix = `views-${unique()}`
    const placement = Sharding.shards(4)
    const counters = ShardedCounters.make(env.COUNTER_SHARDS, { prefix, shards: placement })
    const expected = new Map(Array.from({ length: 200 }, (_, i) => [`product-${i}`, (i % 7) + 1]))
    const adds = [...expected].flatMap(([key, count]) => Array.from({ length: count }, () => counters.add(key)))
    await Effect.runPromise(Effect.all(adds, { concurrency: 100 }))

    // Ask each shard object itself what it holds.
    const seen = new Map<string, number>()
    for (const [shard, name] of Sharding.allObjectNames(prefix, placement).entries()) {
      const object = env.COUNTER_SHARDS.get(env.COUNTER_SHARDS.idFromName(name)) as unknown as ShardedCounters.CounterShardObject
      const held = await object.top(1000)
      expect(held.length).toBeGreaterThan(0)
      for (const { key, count } of held) {
        expect(Sharding.shardOf(key, 4)).toBe(shard)
        seen.set(key, count)
      }
    }
    expect(seen).toEqual(expected)

    const trueTop = [...expected].sort(([a, x], [b, y]) => y - x || (a < b ? -1 : 1)).slice(0, 10)
    expect(await Effect.runPromise(counters.top(10))).toEqual(trueTop.map(([key, count]) => ({ key, count })))
    expect(await Effect.runPromise(counters.get("product-6"))).toBe(7)
    expect(await Effect.runPromise(counters.get("never-seen"))).toBe(0)
  })

  it("counts product views through the gateway on the product's shard, and ranks them", async () => {
    const admin = await signedIn("admin")
    const tag = unique().toUpperCase()
    const ids: Array<string> = []
    for (const n of [0, 1, 2]) {
      const response = await send("POST", "/api/products", { sku: `VIEW-${tag}-${n}`, name: `Viewed ${n}`, priceCents: 1, sellerId: admin.id }, admin.token)
      expect(response.status).toBe(201)
      ids.push((await response.json() as { id: string }).id)
    }
    const viewsOf = [5, 3, 1]
    await Promise.all(ids.flatMap((id, i) =>
      Array.from({ length: viewsOf[i]! }, async () => {
        const response = await send("POST", `/api/products/${id}/views`, undefined, admin.token)
        expect(response.status).toBe(200)
      })
    ))
    for (const [i, id] of ids.entries()) {
      const stats = await (await send("GET", `/api/products/${id}/stats`, undefined, admin.token)).json()
      // The products Worker runs 8 view shards (VIEW_SHARDS in its wrangler config).
      expect(stats).toEqual({ productId: id, views: viewsOf[i], shard: Sharding.shardOf(id, 8) })
    }
    const popular = await (await send("GET", "/api/products/popular?limit=100", undefined, admin.token)).json() as {
      items: Array<{ productId: string; views: number }>
    }
    expect(popular.items.filter((item) => ids.includes(item.productId))).toEqual(
      ids.map((id, i) => ({ productId: id, views: viewsOf[i] }))
    )
    await expectProblem(await send("POST", `/api/products/${crypto.randomUUID()}/views`, undefined, admin.token), 404)
    await expectProblem(await send("GET", "/api/products/popular?limit=0", undefined, admin.token), 400)
  })
})
