/**
 * Deployment strategies: traffic splits between versions (src/layers/release/TrafficManager.ts),
 * feature flags (src/layers/release/FeatureFlags.ts), both over the mesh's real KV
 * store, and the gateway's admin API that drives them.
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect, Layer } from "effect"
import { TestClock } from "effect/testing"
import { describe } from "vitest"
import * as FeatureFlags from "../../src/layers/release/FeatureFlags.ts"
import { meshAdmin } from "../../src/layers/release/MeshAdmin.ts"
import { proxy } from "../../src/layers/routing/Proxy.ts"
import { RoutingTable } from "../../src/layers/routing/RoutingTable.ts"
import { type Identity, IdentityKey } from "../../src/layers/security/Identity.ts"
import * as Traffic from "../../src/layers/release/TrafficManager.ts"
import { Invocation } from "../../src/runtime/Bindings.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { meshEnv, unique } from "../helpers.ts"

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

  it.effect("sends a Worker calling as itself to the stable version, whatever the weight", () =>
    Effect.gen(function*() {
      const service = `machinery-${unique()}`
      yield* Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 100 })
      const manager = Traffic.TrafficManager.make(kv, 0)
      const versions = versionsOf(service)
      const gateway: Identity = { kind: "service", sub: "gateway" }
      expect((yield* manager.choose(versions, gateway, request)).version).toBe("blue")
      expect((yield* manager.choose(versions, user(1), request)).version).toBe("green")
    }))

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
            autoRollback: { errorRate: 0.2, minRequests: 50, windowSeconds: 60 },
            // The rollback's own thresholds, alone (outlier detection would act at 20 answers).
            outlierDetection: { enabled: false }
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

  it.effect("ejects a version whose failures stand out for a while, its callers on the other one, longer each time; a failing canary is rolled back", () =>
    Effect.gen(function*() {
      const manager = Traffic.TrafficManager.make(kv, 600_000)
      const background: Array<Promise<unknown>> = []
      const answer = (versions: Traffic.Versions, n: number, fails: (version: string) => boolean) =>
        Effect.gen(function*() {
          const { version } = yield* manager.choose(versions, user(n), request)
          yield* manager.record(versions, version, fails(version)).pipe(
            Effect.provideService(Invocation, { waitUntil: (promise) => void background.push(promise) })
          )
          return version
        })
      // The stable version fails every answer, the canary none.
      const service = `outlier-${unique()}`
      yield* Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 50, autoRollback: { minRequests: 1000 } })
      const versions = versionsOf(service)
      /** A user the split sends to blue, for a service. */
      const blueUserOf = (name: string) =>
        Array.from({ length: 100 }, (_, n) => n).find((n) =>
          Traffic.versionFor({ stable: "blue", canary: "green", weight: 50 }, Traffic.bucketOf(name, `user:user-${n}`)) === "blue"
        )!
      const blueUser = blueUserOf(service)
      const served = new Map<string, number>()
      for (let n = 0; n < 100; n++) {
        const version = yield* answer(versions, n, (v) => v === "blue")
        served.set(version, (served.get(version) ?? 0) + 1)
      }
      // Ejected at its 20th answer: blue served 20, everyone after that went to green.
      expect(served.get("blue")).toBe(20)
      expect((yield* manager.choose(versions, user(blueUser), request)).version).toBe("green")
      yield* TestClock.adjust("29 seconds")
      expect((yield* manager.choose(versions, user(blueUser), request)).version).toBe("green")
      yield* TestClock.adjust("2 seconds")
      expect((yield* manager.choose(versions, user(blueUser), request)).version).toBe("blue")
      // Ejected again within 5 minutes: 60 s this time.
      for (let n = 0; n < 100; n++) yield* answer(versions, n, (v) => v === "blue")
      yield* TestClock.adjust("45 seconds")
      expect((yield* manager.choose(versions, user(blueUser), request)).version).toBe("green")
      yield* TestClock.adjust("20 seconds")
      expect((yield* manager.choose(versions, user(blueUser), request)).version).toBe("blue")
      // The stable version was only sidestepped: the split is as it was.
      expect(yield* Traffic.readSplit(kv, service)).toMatchObject({ weight: 50 })

      // Both failing alike: neither stands out, nobody moves.
      const alike = `outlier-alike-${unique()}`
      yield* Traffic.writeSplit(kv, alike, { stable: "blue", canary: "green", weight: 50, autoRollback: { minRequests: 1000 } })
      for (let n = 0; n < 200; n++) yield* answer(versionsOf(alike), n, () => n % 3 !== 0)
      expect((yield* manager.choose(versionsOf(alike), user(blueUserOf(alike)), request)).version).toBe("blue")

      // Turned off: never.
      const off = `outlier-off-${unique()}`
      yield* Traffic.writeSplit(kv, off, { stable: "blue", canary: "green", weight: 50, outlierDetection: { enabled: false }, autoRollback: { minRequests: 1000 } })
      for (let n = 0; n < 100; n++) yield* answer(versionsOf(off), n, (v) => v === "blue")
      expect((yield* manager.choose(versionsOf(off), user(blueUserOf(off)), request)).version).toBe("blue")

      // The canary standing out is rolled back, with the reason.
      const canary = `outlier-canary-${unique()}`
      yield* Traffic.writeSplit(kv, canary, { stable: "blue", canary: "green", weight: 50, autoRollback: { minRequests: 1000 } })
      for (let n = 0; n < 100; n++) yield* answer(versionsOf(canary), n, (v) => v === "green")
      yield* Effect.promise(() => Promise.all(background))
      expect(yield* Traffic.readSplit(kv, canary)).toMatchObject({
        weight: 0,
        rolledBack: { canary: "green", reason: expect.stringMatching(/^automatic: outlier, 20 of 20 answers of green failed, against 0 of \d+ of blue/) }
      })
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

describe("mirroring", () => {
  it("compares shapes, not values: keys and types, arrays by their first item, statuses and content types", () => {
    const json = (status: number, value: unknown): Traffic.ComparedAnswer => ({ status, json: true, body: JSON.stringify(value) })
    expect(Traffic.compareAnswers(json(200, { id: "1", tags: [] }), json(200, { id: "2", tags: ["a"] }))).toBeUndefined()
    expect(Traffic.compareAnswers(json(200, { id: "1" }), json(404, { id: "1" }))).toBe("status 200 vs 404")
    expect(Traffic.compareAnswers(json(200, { id: "1", name: "a" }), json(200, { id: "1" }))).toBe("$.name: missing from the canary")
    expect(Traffic.compareAnswers(json(200, { id: "1" }), json(200, { id: "1", extra: 1 }))).toBe("$.extra: only in the canary")
    expect(Traffic.compareAnswers(json(200, { items: [{ n: 1 }] }), json(200, { items: [{ n: "1" }] }))).toBe("$.items[0].n: number vs string")
    expect(Traffic.compareAnswers(json(200, {}), { status: 200, json: false, body: "<html>" })).toBe("the canary's answer is not JSON")
    // Too large to read: statuses and content types only.
    expect(Traffic.compareAnswers(json(200, {}), { status: 200, json: true, body: undefined })).toBeUndefined()
  })

  /** A router with one versioned route, whose blue and green answer as given, and what each was sent. */
  const router = (service: string, answers: Record<"blue" | "green", (path: string) => Response>) => {
    const sent: Array<string> = []
    const version = (name: "blue" | "green") =>
      ({
        fetch: async (input: RequestInfo, init?: RequestInit) => {
          const request = new Request(input, init)
          const path = new URL(request.url).pathname
          sent.push(`${name} ${request.method} ${path}`)
          return answers[name](path)
        }
      }) as unknown as Fetcher
    const vars = {
      ...meshEnv("router"),
      ROUTES: [{ service, prefix: "/api/things", binding: "BLUE", versions: { blue: "BLUE", green: "GREEN" } }],
      BLUE: version("blue"),
      GREEN: version("green"),
      MESH_CONFIG: env.MESH_CONFIG,
      TRAFFIC_CACHE_SECONDS: "0",
      ROLLOUTS: env.ROLLOUTS
    }
    const worker = Worker.make({
      name: "router",
      layer: Layer.mergeAll(RoutingTable.layer, IdentityKey.layer, Traffic.TrafficManager.layer),
      fetch: proxy("router")
    })
    /** One request, and the work it left for after its answer, done. */
    const call = async (method: string, path: string) => {
      const background: Array<Promise<unknown>> = []
      const response = await worker.fetch!(
        new Request(`http://router${path}`, { method }) as Request<unknown, IncomingRequestCfProperties>,
        vars,
        { waitUntil: (promise: Promise<unknown>) => void background.push(promise), passThroughOnException: () => {}, props: {} } as unknown as ExecutionContext
      )
      const body = await response.text()
      await Promise.all(background)
      return { status: response.status, version: response.headers.get(Traffic.versionHeader), body }
    }
    return { sent, call, vars }
  }

  it("copies GETs to the canary after the answer, compares, counts mesh-wide and keeps the newest mismatches; never a POST", async () => {
    const service = `mirror-${unique()}`
    const { sent, call, vars } = router(service, {
      blue: (path) => Response.json(path.endsWith("/2") ? { id: "2", name: "Ada" } : { id: "1", name: "Ada", tags: [] }),
      green: (path) =>
        path.endsWith("/3")
          ? Response.json({ title: "Internal Server Error" }, { status: 500 })
          : Response.json(path.endsWith("/2") ? { id: "2", fullName: "Ada" } : { id: "1", name: "Bea", tags: ["x"] })
    })
    await Effect.runPromise(Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 0, mirror: { percentage: 100 } }))
    for (const path of ["/api/things/1", "/api/things/2", "/api/things/3"]) {
      // The client gets the stable version's answer, whole.
      const answer = await call("GET", path)
      expect(answer).toMatchObject({ status: 200, version: "blue" })
      expect(JSON.parse(answer.body)).toMatchObject({ name: "Ada" })
    }
    expect((await call("POST", "/api/things/1")).version).toBe("blue")
    expect(sent).toEqual([
      "blue GET /api/things/1", "green GET /api/things/1",
      "blue GET /api/things/2", "green GET /api/things/2",
      "blue GET /api/things/3", "green GET /api/things/3",
      "blue POST /api/things/1"
    ])
    const rollout = env.ROLLOUTS.get(env.ROLLOUTS.idFromName(service)) as unknown as { mirrorReport(): Promise<Traffic.MirrorReport> }
    expect(await rollout.mirrorReport()).toMatchObject({
      canary: "green",
      matched: 1,
      mismatched: 2,
      recent: [
        { path: "/api/things/3", stable: 200, canary: 500, difference: "status 200 vs 500" },
        { path: "/api/things/2", stable: 200, canary: 200, difference: "$.name: missing from the canary" }
      ]
    })
    // Mirrored answers move nobody, and count toward no rollback.
    expect(await Effect.runPromise(Traffic.readSplit(kv, service))).toMatchObject({ weight: 0, canary: "green" })

    // Admins read the same counts through the admin API.
    const admin = { kind: "user", sub: "ada", roles: ["admin"] } as const
    const report = await Effect.runPromise(
      meshAdmin(new Request(`http://gateway/api/admin/traffic/${service}/mirror`), admin).pipe(
        Effect.catch((error) => Effect.succeed(Problem.fromError(error))),
        Effect.provide(Layer.mergeAll(RoutingTable.layer, IdentityKey.layer).pipe(Layer.provideMerge(Worker.envLayer(vars)))),
        Effect.provideService(Invocation, { waitUntil: () => {} })
      )
    )
    expect(report.status).toBe(200)
    expect(await report.json()).toMatchObject({ canary: "green", matched: 1, mismatched: 2 })

    // At 0% nothing is copied.
    await Effect.runPromise(Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 0, mirror: { percentage: 0 } }))
    sent.length = 0
    await call("GET", "/api/things/1")
    expect(sent).toEqual(["blue GET /api/things/1"])
  })

  it("copies about the configured share of requests", async () => {
    const service = `mirror-share-${unique()}`
    const { sent, call } = router(service, { blue: () => Response.json({}), green: () => Response.json({}) })
    await Effect.runPromise(Traffic.writeSplit(kv, service, { stable: "blue", canary: "green", weight: 0, mirror: { percentage: 25 } }))
    for (let n = 0; n < 200; n++) await call("GET", `/api/things/${n}`)
    const copies = sent.filter((line) => line.startsWith("green")).length
    // 25% of 200 is 50; binomial, standard deviation about 6.
    expect(copies).toBeGreaterThan(25)
    expect(copies).toBeLessThan(75)
  })
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
