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
