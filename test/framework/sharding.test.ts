/** The sharding rule of src/layers/state/Sharding.ts: where a key's Durable Object is. */
import { describe, expect, it } from "vitest"
import * as Sharding from "../../src/layers/state/Sharding.ts"

const keys = Array.from({ length: 20_000 }, (_, i) => `product-${i}`)

describe("the sharding rule", () => {
  it("is FNV-1a 64 of the key's UTF-8 bytes", () => {
    // The published FNV-1a test vectors.
    expect(Sharding.fnv1a64("")).toBe(0xcbf29ce484222325n)
    expect(Sharding.fnv1a64("a")).toBe(0xaf63dc4c8601ec8cn)
    expect(Sharding.fnv1a64("foobar")).toBe(0x85944171f73967e8n)
  })

  it("puts every key on one shard in range, the same one every time", () => {
    for (const count of [1, 2, 7, 16, 1000]) {
      for (const key of keys.slice(0, 2000)) {
        const shard = Sharding.shardOf(key, count)
        expect(shard).toBeGreaterThanOrEqual(0)
        expect(shard).toBeLessThan(count)
        expect(Sharding.shardOf(key, count)).toBe(shard)
      }
    }
  })

  it("spreads keys evenly", () => {
    const count = 16
    const load = new Array<number>(count).fill(0)
    for (const key of keys) load[Sharding.shardOf(key, count)]!++
    const mean = keys.length / count
    // 1250 keys a shard; a fair spread stays well within 10% of it.
    for (const keysOnShard of load) expect(Math.abs(keysOnShard - mean) / mean).toBeLessThan(0.1)
  })

  it("moves only keys onto the new shard when shards are added, about 1/(n+1) of them", () => {
    for (const count of [4, 8, 15]) {
      let moved = 0
      for (const key of keys) {
        const before = Sharding.shardOf(key, count)
        const after = Sharding.shardOf(key, count + 1)
        if (after !== before) {
          expect(after).toBe(count)
          moved++
        }
      }
      const expected = keys.length / (count + 1)
      expect(Math.abs(moved - expected) / expected).toBeLessThan(0.1)
    }
  })

  it("names one object per key, or the key's shard", () => {
    expect(Sharding.objectName("lock", Sharding.perKey, "product:7")).toBe("lock/product:7")
    const placement = Sharding.shards(8)
    expect(Sharding.objectName("views", placement, "p1")).toBe(`views/${Sharding.shardOf("p1", 8)}`)
    expect(Sharding.allObjectNames("views", placement)).toEqual(Array.from({ length: 8 }, (_, i) => `views/${i}`))
    expect(() => Sharding.shards(0)).toThrow(RangeError)
    expect(() => Sharding.shards(1.5)).toThrow(RangeError)
  })
})
