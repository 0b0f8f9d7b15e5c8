/**
 * Deployment strategies: traffic splits between versions (src/layers/release/TrafficManager.ts),
 * feature flags (src/layers/release/FeatureFlags.ts), both over the mesh's real KV
 * store, and the gateway's admin API that drives them.
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { describe } from "vitest"
import * as FeatureFlags from "../../src/layers/release/FeatureFlags.ts"
import type { Identity } from "../../src/layers/security/Identity.ts"
import * as Traffic from "../../src/layers/release/TrafficManager.ts"
import { Invocation } from "../../src/runtime/Bindings.ts"
import { unique } from "../helpers.ts"

const kv = env.MESH_CONFIG
const user = (n: number): Identity => ({ kind: "user", sub: `user-${n}`, roles: ["user"] })
const request = new Request("http://mesh.test/api/x")

/** Two versions of a made-up service, answering with their name. */
const versionsOf = (service: string): Traffic.Versions => ({
  service,
  defaultVersion: "blue",
  fetchers: new Map(["blue", "green"].map((name) => [name, { fetch: async () => new Response(name) } as unknown as Fetcher]))
})

describe("traffic splits", () => {
  it("sends 20% of 10,000 users to the canary, within 2%", () => {
    const split: Traffic.TrafficSplit = { stable: "blue", canary: "green", weight: 20 }
    let green = 0
    for (let n = 0; n < 10_000; n++) if (Traffic.versionFor(split, Traffic.bucketOf("users", `user:user-${n}`)) === "green") green++
    expect(Math.abs(green / 10_000 - 0.2)).toBeLessThan(0.02)
  })

  it("keeps users where they are while the weight moves: only users whose bucket crosses the line move", () => {
    const at = (weight: number) =>
      new Set(Array.from({ length: 10_000 }, (_, n) => `user:user-${n}`).filter((subject) =>
        Traffic.versionFor({ stable: "blue", canary: "green", weight }, Traffic.bucketOf("users", subject)) === "green"
      ))
    const ten = at(10)
    const twenty = at(20)
    const fifty = at(50)
    for (const subject of ten) expect(twenty.has(subject)).toBe(true)
    for (const subject of twenty) expect(fifty.has(subject)).toBe(true)
    // Those who moved from 10% to 20% are about a tenth of users, each with a bucket between the two lines.
    const moved = [...twenty].filter((subject) => !ten.has(subject))
    expect(Math.abs(moved.length / 10_000 - 0.1)).toBeLessThan(0.02)
    for (const subject of moved) {
      const bucket = Traffic.bucketOf("users", subject)
      expect(bucket >= 1000 && bucket < 2000).toBe(true)
    }
    // A user's version is the same on every request.
    const manager = Traffic.TrafficManager.make(kv, 0)
    const service = `sticky-${unique()}`
    return Effect.runPromise(Effect.gen(function*() {
      yield* Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 50 })
      for (let n = 0; n < 20; n++) {
        const first = yield* manager.choose(versionsOf(service), user(n), request)
        for (let again = 0; again < 5; again++) {
          expect((yield* manager.choose(versionsOf(service), user(n), request)).version).toBe(first.version)
        }
      }
    }))
  })

  it.effect("takes a rollback within the cache time, and not before", () =>
    Effect.gen(function*() {
      const service = `ttl-${unique()}`
      const manager = Traffic.TrafficManager.make(kv, 5_000)
      yield* Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 100 })
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("green")
      yield* Traffic.rollback(kv, service, "test")
      yield* TestClock.adjust("4 seconds")
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("green")
      yield* TestClock.adjust("2 seconds")
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("blue")
    }))

  it.effect("rolls back automatically when the canary fails, not under normal errors, nor when the stable version fails", () =>
    Effect.gen(function*() {
      const manager = Traffic.TrafficManager.make(kv, 60_000)
      const run = (service: string, failureEvery: number, failing = "green") =>
        Effect.gen(function*() {
          // Half the users on each version: the stable one answers too.
          yield* Traffic.writeSplit(kv, service, {
            stable: "blue",
            canary: "green",
            weight: 50,
            autoRollback: { errorRate: 0.2, minRequests: 50, windowSeconds: 60 }
          })
          const versions = versionsOf(service)
          const background: Array<Promise<unknown>> = []
          for (let n = 0; n < 200; n++) {
            const { version } = yield* manager.choose(versions, user(n), request)
            yield* manager.record(versions, version, version === failing && n % failureEvery === 0).pipe(
              Effect.provideService(Invocation, { waitUntil: (promise) => void background.push(promise) })
            )
            yield* TestClock.adjust("100 millis")
          }
          yield* Effect.promise(() => Promise.all(background))
          return yield* Traffic.readSplit(kv, service)
        })
      // One answer in 50 failing (2%): the canary keeps its traffic.
      const healthy = yield* run(`healthy-${unique()}`, 50)
      expect(healthy).toMatchObject({ weight: 50 })
      expect(healthy?.rolledBack).toBeUndefined()
      // One in 2 of green's answers failing: rolled back at its 50th answer, and later requests go to blue at once.
      const service = `failing-${unique()}`
      const failing = yield* run(service, 2)
      expect(failing).toMatchObject({ weight: 0, rolledBack: { canary: "green", reason: expect.stringMatching(/^automatic: \d+ of 50 answers of green failed/) } })
      expect((yield* manager.choose(versionsOf(service), user(999), request)).version).toBe("blue")
      // The stable version failing is not the canary's fault.
      const stableFailing = yield* run(`stable-failing-${unique()}`, 1, "blue")
      expect(stableFailing).toMatchObject({ weight: 50 })
      expect(stableFailing?.rolledBack).toBeUndefined()
    }))

  it.effect("counts a canary's answers across isolates: two routers each below the threshold roll it back together, once", () =>
    Effect.gen(function*() {
      const service = `thin-${unique()}`
      yield* Traffic.writeSplit(kv, service, {
        stable: "blue",
        canary: "green",
        weight: 100,
        autoRollback: { errorRate: 0.2, minRequests: 30, windowSeconds: 60 }
      })
      // Two isolates: the split cached for a minute, the counts shared in one RolloutObject.
      const isolates = [Traffic.TrafficManager.make(kv, 60_000, env.ROLLOUTS), Traffic.TrafficManager.make(kv, 60_000, env.ROLLOUTS)]
      const perIsolate = [Traffic.TrafficManager.make(kv, 60_000), Traffic.TrafficManager.make(kv, 60_000)]
      const versions = versionsOf(service)
      const answer = (manager: Traffic.TrafficManager["Service"], n: number) =>
        Effect.gen(function*() {
          const background: Array<Promise<unknown>> = []
          const { version } = yield* manager.choose(versions, user(n), request)
          yield* manager.record(versions, version, true).pipe(
            Effect.provideService(Invocation, { waitUntil: (promise) => void background.push(promise) })
          )
          yield* Effect.promise(() => Promise.all(background))
        })
      // 20 failed answers in each isolate: below 30 in either, so counted per isolate nothing happens...
      for (let n = 0; n < 20; n++) for (const manager of perIsolate) yield* answer(manager, n)
      expect(yield* Traffic.readSplit(kv, service)).toMatchObject({ weight: 100 })
      // ...while counted across both, the 30th answer trips it, once.
      for (let n = 0; n < 20; n++) for (const manager of isolates) yield* answer(manager, n)
      const rolledBack = yield* Traffic.readSplit(kv, service)
      expect(rolledBack).toMatchObject({ weight: 0, rolledBack: { canary: "green", reason: expect.stringMatching(/^automatic: 30 of 30 answers of green failed/) } })
    }))

  it.effect("keeps its last split when KV fails, and never fails the request", () =>
    Effect.gen(function*() {
      const service = `kv-down-${unique()}`
      yield* Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 100 })
      let down = false
      const flaky = {
        get: (...args: Parameters<KVNamespace["get"]>) => down ? Promise.reject(new Error("KV is down")) : kv.get(...args)
      } as unknown as KVNamespace
      const manager = Traffic.TrafficManager.make(flaky, 1_000)
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("green")
      down = true
      yield* TestClock.adjust("2 seconds")
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("green")
      // Without any split read yet, the default.
      expect((yield* manager.choose(versionsOf(`never-read-${unique()}`), user(1), request)).version).toBe("blue")
      // Without the store at all, the default too.
      expect((yield* Traffic.TrafficManager.make(undefined, 0).choose(versionsOf(service), user(1), request)).version).toBe("blue")
    }))

  it.effect("drops a canary the route does not have, keeping the stable version; an unknown stable version means the default", () =>
    Effect.gen(function*() {
      const service = `unknown-${unique()}`
      const manager = Traffic.TrafficManager.make(kv, 0)
      yield* Traffic.writeSplit(kv, service, { stable: "green", canary: "purple", weight: 100 })
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("green")
      yield* Traffic.writeSplit(kv, service, { stable: "purple", canary: "green", weight: 0 })
      expect((yield* manager.choose(versionsOf(service), user(1), request)).version).toBe("blue")
    }))
})

describe("feature flags", () => {
  const ids = Array.from({ length: 100_000 }, (_, n) => `user-${n}`)
  const share = (flag: FeatureFlags.Flag, name = "rollout") =>
    ids.filter((id) => FeatureFlags.evaluate(flag, name, { kind: "user", sub: id, roles: [] })).length / ids.length

  it("rolls out to a uniform 10% of 100,000 users, within 0.5%", () => {
    expect(Math.abs(share({ enabled: true, percentage: 10 }) - 0.1)).toBeLessThan(0.005)
    // Another flag picks other users: flags are independent.
    const a = new Set(ids.filter((id) => FeatureFlags.evaluate({ enabled: true, percentage: 10 }, "a", { kind: "user", sub: id, roles: [] })))
    const both = ids.filter((id) => a.has(id) && FeatureFlags.evaluate({ enabled: true, percentage: 10 }, "b", { kind: "user", sub: id, roles: [] }))
    expect(Math.abs(both.length / ids.length - 0.01)).toBeLessThan(0.002)
  })

  it("is monotonic: everyone in at 10% is in at 20%", () => {
    for (const id of ids.slice(0, 20_000)) {
      const identity: Identity = { kind: "user", sub: id, roles: [] }
      if (FeatureFlags.evaluate({ enabled: true, percentage: 10 }, "grow", identity)) {
        expect(FeatureFlags.evaluate({ enabled: true, percentage: 20 }, "grow", identity)).toBe(true)
      }
    }
  })

  it("targets users and roles, obeys its kill switch, and is off when it does not exist", () => {
    const ada: Identity = { kind: "user", sub: "ada", roles: ["admin"] }
    const bob: Identity = { kind: "user", sub: "bob", roles: ["user"] }
    expect(FeatureFlags.evaluate({ enabled: true, percentage: 0, users: ["bob"] }, "f", bob)).toBe(true)
    expect(FeatureFlags.evaluate({ enabled: true, percentage: 0, roles: ["admin"] }, "f", ada)).toBe(true)
    expect(FeatureFlags.evaluate({ enabled: true, percentage: 0, roles: ["admin"] }, "f", bob)).toBe(false)
    expect(FeatureFlags.evaluate({ enabled: false, percentage: 100, users: ["bob"] }, "f", bob)).toBe(false)
    expect(FeatureFlags.evaluate({ enabled: true, percentage: 100 }, "f", { kind: "anonymous" })).toBe(false)
    expect(FeatureFlags.evaluate(undefined, "f", bob)).toBe(false)
  })

  it.effect("reads flags from KV, and an unreadable one as off", () =>
    Effect.gen(function*() {
      const flags = FeatureFlags.FeatureFlags.make(kv, 0)
      const name = `flag-${unique()}`
      yield* FeatureFlags.writeFlag(kv, name, { enabled: true, percentage: 100 })
      expect(yield* flags.isOn(name, user(1))).toBe(true)
      yield* Effect.promise(() => kv.put(`flags/${name}`, "{not json"))
      expect(yield* flags.isOn(name, user(1))).toBe(false)
      // KV failing: the last copy stands; never read, off; no store at all, off.
      yield* FeatureFlags.writeFlag(kv, name, { enabled: true, percentage: 100 })
      let down = false
      const flaky = { get: (...args: Parameters<KVNamespace["get"]>) => down ? Promise.reject(new Error("down")) : kv.get(...args) } as unknown as KVNamespace
      const cached = FeatureFlags.FeatureFlags.make(flaky, 0)
      expect(yield* cached.isOn(name, user(1))).toBe(true)
      down = true
      expect(yield* cached.isOn(name, user(1))).toBe(true)
      expect(yield* cached.isOn(`other-${name}`, user(1))).toBe(false)
      expect(yield* FeatureFlags.FeatureFlags.make(undefined, 0).isOn(name, user(1))).toBe(false)
    }))
})
