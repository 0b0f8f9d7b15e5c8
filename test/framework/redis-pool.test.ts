/**
 * Pooled Redis connections (src/runtime/Redis.ts) against a real redis-server
 * the test config starts (skipped without redis-server): within one test's scope, and held
 * by a Durable Object across the requests it serves.
 */
import { expect, it } from "@effect/vitest"
import { describe } from "vitest"
import { env } from "cloudflare:workers"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { Redis } from "../../src/runtime/Redis.ts"
import { hasRedis, redisUrl, unique } from "../helpers.ts"

const url = redisUrl
const admin = Redis.make(url)

/** The connections Redis has open under client name `name`. */
const connectionsNamed = (name: string) =>
  Effect.map(admin.send("CLIENT", "LIST"), (list) =>
    String(list).split("\n").filter((line) => line.includes(` name=${name} `)))

describe.skipIf(!hasRedis)("a Redis pool", () => {
  it.live("never opens more than its maximum under 100 concurrent users", () =>
    Effect.gen(function*() {
      const name = `pool-${unique()}`
      const redis = yield* Redis.pooled(url, { max: 5, name })
      let sampling = true
      let most = 0
      const sampler = yield* Effect.gen(function*() {
        while (sampling) {
          most = Math.max(most, (yield* connectionsNamed(name)).length)
          yield* Effect.sleep("5 millis")
        }
      }).pipe(Effect.forkChild)
      // Each user holds its connection for 20 ms inside Redis (a blocking pop that times out).
      const replies = yield* Effect.all(
        Array.from({ length: 100 }, (_, i) => Effect.andThen(redis.send("BLPOP", `nothing-${name}`, "0.02"), redis.send("ECHO", String(i)))),
        { concurrency: "unbounded" }
      )
      sampling = false
      yield* Fiber.join(sampler)
      expect(replies).toEqual(Array.from({ length: 100 }, (_, i) => String(i)))
      expect(most).toBeGreaterThan(1)
      expect(most).toBeLessThanOrEqual(5)
      expect((yield* connectionsNamed(name)).length).toBeLessThanOrEqual(5)
    }).pipe(Effect.scoped))

  it.live("serves waiters in the order they came", () =>
    Effect.gen(function*() {
      const redis = yield* Redis.pooled(url, { max: 1, name: `order-${unique()}` })
      const holder = yield* redis.send("BLPOP", `nothing-${unique()}`, "0.2").pipe(Effect.forkChild)
      yield* Effect.sleep("20 millis")
      const done: Array<number> = []
      const waiters = []
      for (let i = 0; i < 5; i++) {
        waiters.push(yield* Effect.tap(redis.send("PING"), () => Effect.sync(() => done.push(i))).pipe(Effect.forkChild))
        yield* Effect.sleep("5 millis")
      }
      yield* Fiber.join(holder)
      for (const waiter of waiters) yield* Fiber.join(waiter)
      expect(done).toEqual([0, 1, 2, 3, 4])
    }).pipe(Effect.scoped))

  it.live("replaces a connection that broke", () =>
    Effect.gen(function*() {
      const name = `broken-${unique()}`
      const redis = yield* Redis.pooled(url, { max: 1, name })
      const first = yield* redis.send("CLIENT", "ID")
      yield* admin.send("CLIENT", "KILL", "ID", String(first))
      // The command that finds the connection dead fails (it may or may not have run); the next gets a new one.
      const attempt = yield* Effect.exit(redis.send("CLIENT", "ID"))
      const second = attempt._tag === "Success" ? attempt.value : yield* redis.send("CLIENT", "ID")
      expect(attempt._tag).toBe("Failure")
      expect(second).not.toBe(first)
      expect(yield* redis.send("PING")).toBe("PONG")
      expect((yield* connectionsNamed(name)).length).toBe(1)
    }).pipe(Effect.scoped))

  it.live("replaces a connection whose command was interrupted or timed out, so no reply goes to the wrong user", () =>
    Effect.gen(function*() {
      const name = `interrupted-${unique()}`
      const redis = yield* Redis.pooled(url, { max: 1, name, commandTimeout: "300 millis" })
      const first = yield* redis.send("CLIENT", "ID")
      // Interrupted while Redis holds its reply for 200 ms.
      const blocked = yield* redis.send("BLPOP", `nothing-${name}`, "0.2").pipe(Effect.forkChild)
      yield* Effect.sleep("20 millis")
      yield* Fiber.interrupt(blocked)
      expect(yield* redis.send("ECHO", "mine")).toBe("mine")
      const second = yield* redis.send("CLIENT", "ID")
      expect(second).not.toBe(first)
      // Timed out: the command fails, and the next one gets its own reply on a new connection.
      const slow = yield* Effect.flip(redis.send("BLPOP", `nothing-${name}`, "1"))
      expect(slow.message).toMatch(/No reply within/)
      expect(yield* redis.send("ECHO", "again")).toBe("again")
      expect(yield* redis.send("CLIENT", "ID")).not.toBe(second)
    }).pipe(Effect.scoped))

  it.effect("closes connections left idle past their ttl", () =>
    Effect.gen(function*() {
      const name = `idle-${unique()}`
      const redis = yield* Redis.pooled(url, { max: 3, idleTtl: "30 seconds", name })
      yield* Effect.all([redis.send("PING"), redis.send("PING"), redis.send("PING")], { concurrency: "unbounded" })
      const open = (yield* connectionsNamed(name)).length
      expect(open).toBeGreaterThan(0)
      yield* TestClock.adjust("10 seconds")
      expect((yield* connectionsNamed(name)).length).toBe(open)
      yield* TestClock.adjust("25 seconds")
      // Closing is asynchronous on Redis's side: give it a moment of real time.
      let left = open
      for (let i = 0; i < 40 && left > 0; i++) {
        yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 25)))
        left = (yield* connectionsNamed(name)).length
      }
      expect(left).toBe(0)
    }).pipe(Effect.scoped))

  it.live("keeps warm connections in a Durable Object across the requests it serves", () =>
    Effect.gen(function*() {
      const redis = Redis.viaObject(env.REDIS_POOL)
      const key = `counter-${unique()}`
      yield* Effect.all(Array.from({ length: 100 }, () => redis.send("INCR", key)), { concurrency: "unbounded" })
      expect(yield* redis.send("GET", key)).toBe("100")
      const open = (yield* connectionsNamed("meshwork-pool")).length
      expect(open).toBeGreaterThan(0)
      expect(open).toBeLessThanOrEqual(4)
      // Another burst reuses them rather than opening more.
      const ids = yield* Effect.all(Array.from({ length: 20 }, () => redis.send("CLIENT", "ID")), { concurrency: "unbounded" })
      expect(new Set(ids).size).toBeLessThanOrEqual(4)
      expect(yield* redis.send("NO-SUCH-COMMAND").pipe(Effect.flip)).toMatchObject({ _tag: "meshwork/Redis/RedisError" })
      expect(yield* redis.send("PING")).toBe("PONG")
    }))
})
