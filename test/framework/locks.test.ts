/**
 * Locks with fencing tokens, in a real LockObject (the runner hosts the
 * class, so tests can reach inside it) and against the products store's real
 * D1. Expiry runs on virtual time: the lock table of the object's own SQLite
 * storage, driven by TestClock.
 */
import { expect, it } from "@effect/vitest"
import { evictDurableObject, runInDurableObject } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Deferred, Effect, Exit, Fiber, Layer } from "effect"
import { TestClock } from "effect/testing"
import { LockTable, Locks } from "../../src/layers/state/Locks.ts"
import * as Sharding from "../../src/layers/state/Sharding.ts"
import { WorkerEnv } from "../../src/runtime/Bindings.ts"
import { Products } from "../../src/services/products/Products.ts"
import * as D1 from "../../src/runtime/D1.ts"
import { expectProblem, send, signedIn, unique } from "../helpers.ts"

const locks = Locks.make(env.LOCKS)
const stubOf = (key: string) => Sharding.objectFor(env.LOCKS, "lock", Sharding.perKey, key)

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? (exit.cause.reasons[0] as { error?: { _tag: string } }).error?._tag : "Success"

it.effect("two owners never hold one lock: of 50 concurrent acquires exactly one wins, each time it is free", () =>
  Effect.gen(function*() {
    const key = `race-${unique()}`
    const round = () =>
      Effect.all(Array.from({ length: 50 }, () => Effect.exit(locks.acquire(key))), { concurrency: "unbounded" })
    const first = yield* round()
    const winners = first.filter(Exit.isSuccess)
    expect(winners).toHaveLength(1)
    expect(first.filter((exit) => failureTag(exit) === "meshwork/Locks/LockHeld")).toHaveLength(49)

    yield* locks.release(winners[0]!.value)
    const second = (yield* round()).filter(Exit.isSuccess)
    expect(second).toHaveLength(1)
    expect(second[0]!.value.fencingToken).toBe(winners[0]!.value.fencingToken + 1)
  }))

it.live("withLock runs critical sections one at a time, each with a higher fencing token", () =>
  Effect.gen(function*() {
    const key = `serial-${unique()}`
    let inside = 0
    let most = 0
    const tokens: Array<number> = []
    const section = (lease: { fencingToken: number }) =>
      Effect.gen(function*() {
        inside++
        most = Math.max(most, inside)
        tokens.push(lease.fencingToken)
        yield* Effect.sleep(5)
        inside--
      })
    yield* Effect.all(
      Array.from({ length: 12 }, () => locks.withLock(key, section, { wait: "30 seconds" })),
      { concurrency: "unbounded" }
    )
    expect(most).toBe(1)
    expect(tokens).toHaveLength(12)
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]!).toBeGreaterThan(tokens[i - 1]!)
    expect(yield* locks.holder(key)).toBeUndefined()
  }))

it.effect("a lock expires when its holder stops renewing: the alarm frees it and the next holder gets a higher token", () =>
  Effect.gen(function*() {
    const key = `expiry-${unique()}`
    const stub = stubOf(key)
    yield* Effect.promise(() =>
      runInDurableObject(stub, (_instance, state) =>
        Effect.runPromise(Effect.gen(function*() {
          const start = Date.now()
          yield* TestClock.setTime(start)
          const table = LockTable.make(state)
          const a = yield* table.acquire(key, "a", 10_000)
          expect(a).toEqual({ _tag: "Acquired", fencingToken: 1, expiresAt: start + 10_000 })
          expect(yield* Effect.promise(() => state.storage.getAlarm())).toBe(start + 10_000)

          yield* TestClock.adjust(9_999)
          expect(yield* table.acquire(key, "b", 10_000)).toEqual({ _tag: "Held", expiresAt: start + 10_000 })
          // Renewed, it would stay a's; a stops renewing instead.
          yield* TestClock.adjust(1)
          yield* table.expire // what the alarm runs
          expect(yield* table.holder(key)).toBeUndefined()
          expect(yield* Effect.promise(() => state.storage.getAlarm())).toBeNull()

          expect(yield* table.renew(key, "a", 1, 10_000)).toEqual({ _tag: "Lost" })
          const b = yield* table.acquire(key, "b", 10_000)
          expect(b).toMatchObject({ _tag: "Acquired", fencingToken: 2 })
          // Even without the alarm, a lease past its time is free to the next caller.
          yield* TestClock.adjust(10_000)
          expect(yield* table.acquire(key, "c", 10_000)).toMatchObject({ _tag: "Acquired", fencingToken: 3 })
          yield* table.release(key, "c", 3)
        }).pipe(Effect.provide(TestClock.layer())))
      )
    )
  }))

it.live("renewal keeps the lease past its ttl; a refused renewal interrupts the work with LockLost", () =>
  Effect.gen(function*() {
    const key = `renew-${unique()}`
    const started = yield* Deferred.make<void>()
    const interrupted = yield* Deferred.make<void>()
    const fiber = yield* locks.withLock(
      key,
      () =>
        Deferred.succeed(started, undefined).pipe(
          Effect.andThen(Effect.never),
          Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
        ),
      { ttl: "300 millis" }
    ).pipe(Effect.forkChild)
    yield* Deferred.await(started)
    const holder = yield* locks.holder(key)
    // Four ttls of real time: without renewals (every 100 ms) the lease would have expired.
    yield* Effect.sleep("1200 millis")
    const renewed = yield* locks.holder(key)
    expect(renewed?.fencingToken).toBe(holder?.fencingToken)
    expect(renewed!.expiresAt).toBeGreaterThan(holder!.expiresAt + 600)

    // Someone takes the lock behind the holder's back (as expiry and a new holder would): its next renewal is refused.
    yield* Effect.promise(() =>
      runInDurableObject(stubOf(key), (_instance, state) => {
        state.storage.sql.exec("UPDATE locks SET owner = 'thief' WHERE key = ?", key)
      })
    )
    const exit = yield* Fiber.await(fiber)
    expect(failureTag(exit)).toBe("meshwork/Locks/LockLost")
    expect(yield* Deferred.isDone(interrupted)).toBe(true)
  }))

it.live("lets the alarm free a lease whose holder stopped renewing", () =>
  Effect.gen(function*() {
    const key = `alarm-${unique()}`
    yield* locks.acquire(key, { ttl: "100 millis" })
    const stub = stubOf(key)
    const owner = () =>
      Effect.promise(() =>
        runInDurableObject(stub, (_instance, state) =>
          state.storage.sql.exec<{ owner: string | null }>("SELECT owner FROM locks WHERE key = ?", key).one().owner)
      )
    expect(yield* owner()).not.toBeNull()
    // Nobody calls the object again: its own alarm (run by the runtime at the expiry) frees the row.
    for (let i = 0; i < 40 && (yield* owner()) !== null; i++) yield* Effect.sleep("50 millis")
    expect(yield* owner()).toBeNull()
    expect(yield* Effect.promise(() => runInDurableObject(stub, (_instance, state) => state.storage.getAlarm()))).toBeNull()
  }))

it.effect("does not let two callers with the same owner label hold one lock", () =>
  Effect.gen(function*() {
    const key = `same-owner-${unique()}`
    const first = yield* locks.acquire(key, { owner: "products" })
    const second = yield* Effect.exit(locks.acquire(key, { owner: "products" }))
    expect(failureTag(second)).toBe("meshwork/Locks/LockHeld")
    yield* locks.release(first)
  }))

it.effect("only the owner releases a lock", () =>
  Effect.gen(function*() {
    const key = `release-${unique()}`
    const lease = yield* locks.acquire(key, { owner: "a" })
    expect(failureTag(yield* Effect.exit(locks.release({ ...lease, owner: "b" })))).toBe("meshwork/Locks/LockNotHeld")
    expect(failureTag(yield* Effect.exit(locks.release({ ...lease, fencingToken: lease.fencingToken + 1 })))).toBe("meshwork/Locks/LockNotHeld")
    expect((yield* locks.holder(key))?.owner).toMatch(/^a#/)
    yield* locks.release(lease)
    expect(yield* locks.holder(key)).toBeUndefined()
    expect(failureTag(yield* Effect.exit(locks.release(lease)))).toBe("meshwork/Locks/LockNotHeld")
  }))

it.effect("fencing tokens survive the object's restart", () =>
  Effect.gen(function*() {
    const key = `restart-${unique()}`
    const stub = stubOf(key)
    const first = yield* locks.acquire(key)
    yield* locks.release(first)
    yield* Effect.promise(() => runInDurableObject(stub, (instance) => Reflect.set(instance, "marker", true)))
    yield* Effect.promise(() => evictDurableObject(stub))
    const second = yield* locks.acquire(key)
    expect(yield* Effect.promise(() => runInDurableObject(stub, (instance) => Reflect.get(instance, "marker")))).toBeUndefined()
    expect(second.fencingToken).toBe(first.fencingToken + 1)
  }))

const ProductsStore = Products.layerNoDeps.pipe(Layer.provide(D1.layer("PRODUCTS_DB")), Layer.provide(WorkerEnv.layer(env)))

it.effect("a write with a stale fencing token is rejected by the products store", () =>
  Effect.gen(function*() {
    const products = yield* Products
    const product = yield* products.create({ sku: `FENCE-${unique().toUpperCase()}`, name: "Fenced", priceCents: 100, sellerId: crypto.randomUUID() })
    const key = `product:${product.id}`
    const stub = stubOf(key)
    // A holder that stalls past its lease, and the next holder, on virtual time in the real lock object.
    const [stale, current] = yield* Effect.promise(() =>
      runInDurableObject(stub, (_instance, state) =>
        Effect.runPromise(Effect.gen(function*() {
          yield* TestClock.setTime(Date.now())
          const table = LockTable.make(state)
          const a = yield* table.acquire(key, "a", 1_000)
          yield* TestClock.adjust(1_000)
          const b = yield* table.acquire(key, "b", 1_000)
          yield* table.release(key, "b", b._tag === "Acquired" ? b.fencingToken : -1)
          return [a, b].map((answer) => answer._tag === "Acquired" ? answer.fencingToken : -1)
        }).pipe(Effect.provide(TestClock.layer())))
      )
    )
    expect(current).toBe(stale! + 1)

    expect((yield* products.update(product.id, { stock: 7 }, current!)).stock).toBe(7)
    const refused = yield* Effect.flip(products.update(product.id, { stock: 1 }, stale!))
    expect(refused).toMatchObject({ _tag: "StaleFencingToken", fencingToken: stale, seen: current })
    expect((yield* products.get(product.id)).stock).toBe(7)
    // The same token writes again; a missing product is still NotFound.
    expect((yield* products.update(product.id, { stock: 8 }, current!)).stock).toBe(8)
    expect(yield* Effect.flip(products.update(crypto.randomUUID(), { stock: 1 }, 99))).toMatchObject({ _tag: "ProductNotFound" })
  }).pipe(Effect.provide(ProductsStore)))

it("product updates through the mesh take the product's lock and fence their writes", async () => {
  const admin = await signedIn("admin")
  const created = await send("POST", "/api/products", { sku: `LOCK-${unique().toUpperCase()}`, name: "Locked", priceCents: 500, sellerId: admin.id }, admin.token)
  expect(created.status).toBe(201)
  const { id } = await created.json() as { id: string }

  const updates = await Promise.all(
    Array.from({ length: 6 }, (_, i) => send("PATCH", `/api/products/${id}`, { stock: i + 1 }, admin.token))
  )
  const applied = updates.filter((response) => response.status === 200).length
  for (const response of updates) {
    if (response.status !== 200) await expectProblem(response, 409)
  }
  expect(applied).toBeGreaterThan(0)
  // Each applied update held a fresh lease, and the row kept the highest token it saw.
  const row = await env.PRODUCTS_DB.prepare("SELECT fence FROM products WHERE id = ?").bind(id).first<{ fence: number }>()
  expect(row?.fence).toBe(applied)
})
