/**
 * Batched lookups (src/layers/edge/Batching.ts): the resolver on its own, the
 * products client against the real products Worker, and the sessions cart
 * fan-out through the gateway.
 */
import { env } from "cloudflare:workers"
import { Effect, Exit, Fiber } from "effect"
import { describe, expect, it } from "vitest"
import * as Batching from "../../src/layers/edge/Batching.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { ProductsClient, productLookups } from "../../src/services/products/client.ts"
import { meshEnv, send, signedIn, unique } from "../helpers.ts"

class Missing {
  readonly _tag = "Missing"
  constructor(readonly key: string) {}
}

/** A lookup over a table of `known` keys that records every call it gets. */
const upstream = (known: ReadonlySet<string>) => {
  const calls: Array<ReadonlyArray<string>> = []
  const lookup = (keys: ReadonlyArray<string>) =>
    Effect.sync(() => {
      calls.push(keys)
      return new Map(keys.filter((key) => known.has(key)).map((key) => [key, `value of ${key}`]))
    })
  return { calls, lookup }
}

const keys = Array.from({ length: 30 }, (_, i) => `k${i}`)

describe("batched lookups", () => {
  it("sends 100 concurrent lookups of 30 distinct keys as ceil(30 / 10) calls, with the seed's defaults", async () => {
    const { calls, lookup } = upstream(new Set(keys))
    const results = await Effect.runPromise(Effect.gen(function*() {
      const get = yield* Batching.lookups({ lookup, missing: (key) => new Missing(key) })
      return yield* Effect.all(Array.from({ length: 100 }, (_, i) => get(keys[i % 30]!)), { concurrency: "unbounded" })
    }))
    expect(results).toEqual(Array.from({ length: 100 }, (_, i) => `value of k${i % 30}`))
    expect(calls).toHaveLength(3)
    for (const call of calls) {
      expect(call.length).toBeLessThanOrEqual(10)
      expect(new Set(call).size).toBe(call.length)
    }
    expect(new Set(calls.flat())).toEqual(new Set(keys))
  })

  it("fails only the lookup of a missing key, and only the batch of a failed call", async () => {
    const { lookup } = upstream(new Set(["a", "b"]))
    const exits = await Effect.runPromise(Effect.gen(function*() {
      const get = yield* Batching.lookups({ lookup, missing: (key) => new Missing(key), window: 0 })
      return yield* Effect.all(["a", "ghost", "b", "ghost"].map((key) => Effect.exit(get(key))), { concurrency: "unbounded" })
    }))
    expect(exits.map((exit) => Exit.isSuccess(exit) ? exit.value : "failed")).toEqual(["value of a", "failed", "value of b", "failed"])

    let call = 0
    const flaky = (batch: ReadonlyArray<string>) =>
      call++ === 0 ? Effect.fail("down" as const) : Effect.succeed(new Map(batch.map((key) => [key, key])))
    const outcome = await Effect.runPromise(Effect.gen(function*() {
      const get = yield* Batching.lookups({ lookup: flaky, missing: (key) => new Missing(key), maxBatchSize: 2, window: 0 })
      return yield* Effect.all(["x", "y", "z"].map((key) => Effect.exit(get(key))), { concurrency: "unbounded" })
    }))
    // The first call (x, y) failed; z went in the second.
    expect(outcome.map((exit) => Exit.isSuccess(exit) ? exit.value : "failed")).toEqual(["failed", "failed", "z"])
  })

  it("does not fail the other lookups of a key when its first caller is interrupted", async () => {
    const { calls, lookup } = upstream(new Set(["a"]))
    const result = await Effect.runPromise(Effect.gen(function*() {
      const get = yield* Batching.lookups({ lookup, missing: (key) => new Missing(key), window: "20 millis" })
      const first = yield* Effect.forkChild(get("a"))
      const second = yield* Effect.forkChild(get("a"))
      yield* Effect.sleep("5 millis")
      yield* Fiber.interrupt(first)
      return yield* Fiber.join(second)
    }))
    expect(result).toBe("value of a")
    expect(calls.flat()).toEqual(["a"])
  })

  it("looks up real products in batches of 10 over the products Worker's ?ids=", async () => {
    const admin = await signedIn("admin")
    const tag = unique().toUpperCase()
    const ids: Array<string> = []
    for (let n = 0; n < 25; n++) {
      const response = await send("POST", "/api/products", { sku: `BATCH-${tag}-${n}`, name: `Batched ${n}`, priceCents: n, sellerId: admin.id }, admin.token)
      ids.push((await response.json() as { id: string }).id)
    }
    // Four ids that do not exist, and one that cannot even be asked for in a list.
    const wanted = [...ids, ...Array.from({ length: 4 }, () => crypto.randomUUID()), "a,b"]
    // The real products Worker, behind a binding that counts the calls it carries.
    const requests: Array<string> = []
    const counted = {
      fetch: (input: RequestInfo, init?: RequestInit) => {
        const request = new Request(input, init)
        requests.push(new URL(request.url).search)
        return env.PRODUCTS.fetch(request)
      }
    }
    const worker = Worker.make({
      name: "lookup-test",
      layer: ProductsClient.layer,
      fetch: () =>
        Effect.gen(function*() {
          const product = yield* productLookups()
          const exits = yield* Effect.all(Array.from({ length: 100 }, (_, i) => Effect.exit(product(wanted[i % 30]!))), { concurrency: "unbounded" })
          return Response.json(exits.map((exit) => Exit.isSuccess(exit) ? exit.value.id : (exit.cause.reasons[0] as { error?: { _tag: string } }).error?._tag))
        })
    })
    const response = await worker.fetch!(new Request("http://test/"), { PRODUCTS: counted, ...meshEnv("sessions"), OTLP_ENDPOINT: env.OTLP_ENDPOINT }, { waitUntil: () => {}, passThroughOnException: () => {}, props: {} } as never)
    const results = await response.json() as Array<string>
    expect(results).toEqual(Array.from({ length: 100 }, (_, i) => i % 30 < 25 ? wanted[i % 30] : "ProductNotFound"))
    expect(requests).toHaveLength(3)
    expect(requests.every((search) => search.startsWith("?ids="))).toBe(true)
  })
})
