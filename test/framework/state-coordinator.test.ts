/**
 * The state coordinator inside real Durable Objects (the sessions' objects,
 * and a counter on virtual time for idle expiry), and its If-Match parsing.
 * Through HTTP it is tested as the sessions API (test/mesh/sessions.test.ts).
 */
import { expect, it } from "@effect/vitest"
import { runInDurableObject } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Effect, Result, Schema } from "effect"
import { TestClock } from "effect/testing"
import { describe } from "vitest"
import * as Sharding from "../../src/layers/state/Sharding.ts"
import * as StateCoordinator from "../../src/layers/state/StateCoordinator.ts"
import { SessionState } from "../../src/services/sessions/Sessions.ts"

describe("If-Match parsing", () => {
  it("reads *, strong tags, and skips weak ones", () => {
    expect(StateCoordinator.parseIfMatch(undefined)).toBeUndefined()
    expect(StateCoordinator.parseIfMatch(" * ")).toBe("*")
    expect(StateCoordinator.parseIfMatch('"1"')).toEqual([1])
    expect(StateCoordinator.parseIfMatch('"1", W/"2" ,"3", "x"')).toEqual([1, 3])
    expect(StateCoordinator.parseIfMatch('W/"4"')).toEqual([])
    expect(StateCoordinator.parseIfMatch('"1",,"2"')).toEqual([1, 2])
    for (const bad of ["", "1", '"1" "2"', '"1', "*, \"1\""]) {
      expect(() => StateCoordinator.parseIfMatch(bad)).toThrow(SyntaxError)
    }
  })
})

it.effect("ends 1000 concurrent increments through the coordinator at exactly 1000", () =>
  Effect.gen(function*() {
    const sessions = SessionState.client(env.SESSIONS)
    const id = crypto.randomUUID()
    yield* sessions.create(id, "owner")
    const increment = sessions.update(id, "owner", [{ _tag: "Increment", counter: "clicks" }])
    const versions = yield* Effect.all(Array.from({ length: 1000 }, () => increment), { concurrency: "unbounded" })
    // Each write saw its own version: none was lost or applied twice.
    expect(new Set(versions.map((entry) => entry.version)).size).toBe(1000)
    const final = yield* sessions.get(id, "owner")
    expect(final).toEqual({ key: id, version: 1001, state: { attributes: {}, cart: {}, counters: { clicks: 1000 } } })
  }))

const Counter = StateCoordinator.define({
  name: "counter",
  state: Schema.Struct({ n: Schema.Int }),
  change: Schema.Int,
  initial: { n: 0 },
  apply: (state, by) => Result.succeed({ n: state.n + by }),
  idleTtl: "1 minute"
})

it.effect("deletes an entry once it has not been written for its idle ttl, by alarm, and never reuses its version", () =>
  Effect.gen(function*() {
    const stub = env.COUNTER.get(env.COUNTER.idFromName(`idle-${crypto.randomUUID()}`))
    yield* Effect.promise(() =>
      runInDurableObject(stub, (_, state) =>
        Effect.runPromise(Effect.gen(function*() {
          const start = Math.ceil(Date.now() / 1000) * 1000 + 3_600_000
          yield* TestClock.setTime(start)
          const table = StateCoordinator.makeTable(Counter.definition, state)
          expect(yield* table.create("k", "me", { n: 0 })).toMatchObject({ _tag: "Ok", version: 1 })
          expect(yield* Effect.promise(() => state.storage.getAlarm())).toBe(start + 60_000)

          yield* TestClock.adjust("40 seconds")
          expect(yield* table.update("k", "me", [1], undefined)).toMatchObject({ _tag: "Ok", version: 2 })
          // Written again: its expiry moved on.
          expect(yield* Effect.promise(() => state.storage.getAlarm())).toBe(start + 100_000)
          yield* TestClock.adjust("40 seconds")
          yield* table.expire
          expect(yield* table.get("k", "me")).toMatchObject({ _tag: "Ok", state: { n: 1 } })

          yield* TestClock.adjust("30 seconds")
          // Idle past its ttl: gone for reads and writes even before the alarm runs.
          expect(yield* table.get("k", "me")).toEqual({ _tag: "NotFound" })
          expect(yield* table.update("k", "me", [1], undefined)).toEqual({ _tag: "NotFound" })
          yield* table.expire
          expect(yield* table.get("k", "me")).toEqual({ _tag: "NotFound" })
          expect(yield* Effect.promise(() => state.storage.getAlarm())).toBeNull()
          // A new entry under the key counts on from the deleted one's version.
          expect(yield* table.create("k", "me", undefined)).toMatchObject({ _tag: "Ok", version: 4, state: { n: 0 } })
        }).pipe(Effect.provide(TestClock.layer())))
      )
    )
  }))

/** The stats of the session object of `id` (a read-only diagnostic of the object itself). */
export const sessionStorage = (id: string) =>
  Effect.promise(() => {
    const stub = env.SESSIONS.get(env.SESSIONS.idFromName(Sharding.objectName("session", Sharding.perKey, id)))
    return (stub as unknown as { stats(): Promise<StateCoordinator.StorageStats> }).stats()
  })

it.live("creates no storage for reads (and refused writes) of keys never written: 400 random keys", () =>
  Effect.gen(function*() {
    const sessions = SessionState.client(env.SESSIONS)
    // The measure sees storage: a created session is one table and one row.
    const created = crypto.randomUUID()
    yield* sessions.create(created, "owner")
    expect(yield* sessionStorage(created)).toMatchObject({ tables: 1, rows: 1 })

    const ids = Array.from({ length: 400 }, () => crypto.randomUUID())
    const refusals = yield* Effect.forEach(ids, (id, i) => {
      // Mostly reads; every tenth key a write of something that does not exist, which is refused.
      const attempt = i % 10 === 1
        ? sessions.update(id, "owner", [{ _tag: "Increment", counter: "n" }])
        : i % 10 === 2
        ? sessions.replace(id, "owner", { attributes: {}, cart: {}, counters: {} }, [1])
        : i % 10 === 3
        ? sessions.remove(id, "owner", { ifMatch: "*" })
        : sessions.get(id, "owner")
      return Effect.map(Effect.flip(attempt), (error) => error._tag)
    }, { concurrency: 50 })
    expect(new Set(refusals)).toEqual(new Set(["meshwork/StateCoordinator/StateNotFound", "meshwork/StateCoordinator/VersionMismatch"]))

    const stored = yield* Effect.forEach(ids, sessionStorage, { concurrency: 50 })
    const tables = stored.reduce((sum, stats) => sum + stats.tables, 0)
    const rows = stored.reduce((sum, stats) => sum + stats.rows, 0)
    // 400 objects were asked, and none wrote anything: no table, no row (so Cloudflare keeps none of them).
    expect({ tables, rows }).toEqual({ tables: 0, rows: 0 })
  }), { timeout: 120_000 })
