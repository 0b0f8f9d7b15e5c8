/**
 * Circuit breakers on virtual time. The policy mechanics use calls that are
 * plain effects (counted, failing or slow on TestClock); the end-to-end test
 * goes through a proxy Worker to a real failing upstream (FLAKY).
 */
import { expect, it } from "@effect/vitest"
import { createExecutionContext } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Effect, Exit, Fiber, Layer } from "effect"
import { TestClock } from "effect/testing"
import { type BreakerSettings, CircuitBreakers, memoryStore, probeLeaseMillis } from "../../src/layers/resilience/CircuitBreakers.ts"
import { IdentityKey, requireIdentity } from "../../src/layers/security/Identity.ts"
import { RoutingTable } from "../../src/layers/routing/RoutingTable.ts"
import { proxy } from "../../src/layers/routing/Proxy.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { meshEnv, meshHeaders } from "../helpers.ts"

const Breakers = CircuitBreakers.layer.pipe(Layer.provide(Worker.envLayer({})))

const counter = () => {
  let calls = 0
  return {
    calls: () => calls,
    answer: (status: number, delayMs = 0) =>
      Effect.andThen(Effect.sleep(delayMs), Effect.sync(() => {
        calls++
        return new Response(null, { status })
      }))
  }
}

const run = (breakers: CircuitBreakers["Service"], upstream: { service: string; breaker: BreakerSettings }) =>
  <E>(call: Effect.Effect<Response, E>) => Effect.exit(breakers.guard(upstream, call))

const statusOf = (exit: Exit.Exit<Response, unknown>) =>
  Exit.isSuccess(exit) ? exit.value.status : (exit.cause.reasons[0] as { error?: { status?: number } }).error?.status

it.effect("opens at its threshold of consecutive failures and refuses at once, without calling the upstream", () =>
  Effect.gen(function*() {
    const breakers = yield* CircuitBreakers
    const upstream = counter()
    const call = run(breakers, { service: "a", breaker: { consecutiveFailures: 3, openMs: 1_000 } })
    for (let i = 0; i < 2; i++) expect(statusOf(yield* call(upstream.answer(503)))).toBe(503)
    expect(yield* breakers.state("a")).toBe("Closed")
    expect(statusOf(yield* call(upstream.answer(503)))).toBe(503)
    expect(yield* breakers.state("a")).toBe("Open")

    const refused = yield* call(upstream.answer(200))
    expect(upstream.calls()).toBe(3)
    const error = Exit.isFailure(refused) ? (refused.cause.reasons[0] as { error: { _tag: string; retryAfterSeconds: number } }).error : undefined
    expect(error).toMatchObject({ _tag: "ServiceUnavailable", retryAfterSeconds: 1 })
  }).pipe(Effect.provide(Breakers)))

it.effect("counts 4xx answers as the client's, not failures; a success resets the streak", () =>
  Effect.gen(function*() {
    const breakers = yield* CircuitBreakers
    const upstream = counter()
    const call = run(breakers, { service: "b", breaker: { consecutiveFailures: 2 } })
    for (const status of [503, 404, 503, 400, 429, 503]) yield* call(upstream.answer(status))
    expect(yield* breakers.state("b")).toBe("Closed")
    yield* call(upstream.answer(500))
    expect(yield* breakers.state("b")).toBe("Open")
  }).pipe(Effect.provide(Breakers)))

it.effect("trips on a failure rate only once the minimum number of calls is seen", () =>
  Effect.gen(function*() {
    const breakers = yield* CircuitBreakers
    const upstream = counter()
    const call = run(breakers, { service: "c", breaker: { failureRate: 0.5, minimumCalls: 10, window: 10 } })
    for (const status of [503, 503, 503, 503, 503, 200, 200, 200, 200]) yield* call(upstream.answer(status))
    expect(yield* breakers.state("c")).toBe("Closed") // 5 of 9 failed, but 9 < 10 calls
    yield* call(upstream.answer(200))
    expect(yield* breakers.state("c")).toBe("Open") // 5 of 10
  }).pipe(Effect.provide(Breakers)))

it.effect("counts slow calls as failures", () =>
  Effect.gen(function*() {
    const breakers = yield* CircuitBreakers
    const upstream = counter()
    const call = run(breakers, { service: "d", breaker: { consecutiveFailures: 2, slowCallMs: 100 } })
    for (let i = 0; i < 2; i++) {
      const fiber = yield* Effect.forkChild(call(upstream.answer(200, 150)))
      yield* TestClock.adjust("150 millis")
      expect(statusOf(yield* Fiber.join(fiber))).toBe(200)
    }
    expect(yield* breakers.state("d")).toBe("Open")
  }).pipe(Effect.provide(Breakers)))

it.effect("half-open admits exactly K of 50 concurrent calls, closes when they succeed, reopens on a failure", () =>
  Effect.gen(function*() {
    const breakers = yield* CircuitBreakers
    const upstream = counter()
    const settings = { consecutiveFailures: 1, openMs: 1_000, maxOpenMs: 3_000, probes: 3 }
    const call = run(breakers, { service: "e", breaker: settings })
    yield* call(upstream.answer(503))
    expect(yield* breakers.state("e")).toBe("Open")
    yield* TestClock.adjust("1 second")

    // Forked one after another, all running at once: each sleeps 100 ms (virtual) inside the breaker.
    const fibers = yield* Effect.forEach(Array.from({ length: 50 }), () => Effect.forkChild(call(upstream.answer(200, 100))))
    yield* TestClock.adjust("100 millis")
    const exits = yield* Effect.forEach(fibers, Fiber.join)
    expect(exits.filter(Exit.isSuccess)).toHaveLength(3)
    expect(exits.filter((exit) => statusOf(exit) === 503)).toHaveLength(47)
    expect(upstream.calls()).toBe(1 + 3)
    expect(yield* breakers.state("e")).toBe("Closed")

    // It recovered: the next opening is a first one again (1 s), not a doubled one...
    yield* call(upstream.answer(503))
    expect(yield* breakers.state("e")).toBe("Open")
    yield* TestClock.adjust("1 second")
    expect(yield* breakers.state("e")).toBe("HalfOpen")
    // ...while a failed probe doubles it (2 s), and the third opening in a row (4 s) is capped at maxOpenMs (3 s).
    yield* call(upstream.answer(503))
    yield* TestClock.adjust("1900 millis")
    expect(yield* breakers.state("e")).toBe("Open")
    yield* TestClock.adjust("100 millis")
    expect(yield* breakers.state("e")).toBe("HalfOpen")
    yield* call(upstream.answer(503))
    yield* TestClock.adjust("2900 millis")
    expect(yield* breakers.state("e")).toBe("Open")
    yield* TestClock.adjust("100 millis")
    expect(yield* breakers.state("e")).toBe("HalfOpen")
  }).pipe(Effect.provide(Breakers)))

it.effect("answers 503 with Retry-After at the edge while open, and /health shows the state", () =>
  Effect.gen(function*() {
    // A proxy inside the mesh (as the router is): its detailed /health is for other Workers of the mesh.
    const worker = Worker.make({
      name: "edge",
      layer: Layer.mergeAll(RoutingTable.layer, IdentityKey.layer, CircuitBreakers.layer),
      fetch: requireIdentity(proxy("edge"))
    })
    const key = crypto.randomUUID()
    const edgeEnv = {
      ROUTES: [{ service: "flaky", prefix: "/status", binding: "FLAKY", breaker: { consecutiveFailures: 2, openMs: 30_000 } }],
      FLAKY: env.FLAKY,
      ...meshEnv("router", [{ from: ["gateway"], paths: ["*"] }]),
      OTLP_ENDPOINT: env.OTLP_ENDPOINT
    }
    const get = (path: string) =>
      Effect.promise(async () =>
        worker.fetch!(
          new Request(`http://edge${path}`, {
            headers: await meshHeaders({ to: "router", from: "gateway", path: new URL(`http://edge${path}`).pathname })
          }) as never,
          edgeEnv,
          createExecutionContext()
        )
      )
    expect((yield* get(`/status/503?key=${key}`)).status).toBe(503)
    expect((yield* get(`/status/503?key=${key}`)).status).toBe(503)
    const refused = yield* get(`/status/200?key=${key}`)
    expect(refused.status).toBe(503)
    expect(refused.headers.get("retry-after")).toBe("30")
    expect(refused.headers.get("content-type")).toBe("application/problem+json")
    const count = yield* Effect.promise(async () => (await env.FLAKY.fetch(`http://flaky/count?key=${key}`)).json())
    expect(count).toMatchObject({ calls: 2 })
    const healthResponse = yield* get("/health")
    const health = yield* Effect.promise(() => healthResponse.json())
    expect(health).toMatchObject({ upstreams: { flaky: { breaker: "Open" } } })
  }))

it.effect("a Durable Object store shares one breaker between isolates", () =>
  Effect.gen(function*() {
    const shared = { BREAKER_STORE: "durable-object", BREAKERS: env.BREAKERS }
    // Two layers built apart: two isolates' worth of breakers over one store.
    const first = yield* Effect.provide(CircuitBreakers, CircuitBreakers.layer.pipe(Layer.provide(Worker.envLayer(shared))))
    const second = yield* Effect.provide(CircuitBreakers, CircuitBreakers.layer.pipe(Layer.provide(Worker.envLayer(shared))))
    const upstream = counter()
    const settings = { service: `shared-${crypto.randomUUID()}`, breaker: { consecutiveFailures: 2, openMs: 60_000 } }
    yield* run(first, settings)(upstream.answer(503))
    yield* run(second, settings)(upstream.answer(503)) // the second failure, seen through the other isolate
    expect(yield* first.state(settings.service)).toBe("Open")
    const refused = yield* run(second, settings)(upstream.answer(200))
    expect(statusOf(refused)).toBe(503)
    expect(upstream.calls()).toBe(2)
  }))

it("frees a half-open probe slot whose outcome never comes back, after the lease", () => {
  const store = memoryStore()
  const settings = { consecutiveFailures: 1, openMs: 1_000 }
  const closed = store.admit("lost", settings, 0)
  expect(closed._tag).toBe("Admitted")
  if (closed._tag === "Admitted") store.record("lost", settings, closed.generation, "Failure", 0)
  expect(store.admit("lost", settings, 1_000)._tag).toBe("Admitted") // the probe, whose outcome is lost
  expect(store.admit("lost", settings, 1_000)._tag).toBe("HalfOpen")
  expect(store.admit("lost", settings, 1_000 + probeLeaseMillis)._tag).toBe("Admitted")
})

it.effect("lets about half the calls through when half fail, with the reference mesh's rate-based settings; a streak-based breaker lets a fraction through", () =>
  Effect.gen(function*() {
    const breakers = yield* CircuitBreakers
    // A fixed pseudo-random sequence of outcomes, half of them failures.
    const outcomes = (seed: number) => {
      let state = seed
      return () => {
        state = (state * 1103515245 + 12345) % 2 ** 31
        return state / 2 ** 31 < 0.5 ? 503 : 200
      }
    }
    const successes = function*(service: string, breaker: BreakerSettings) {
      const next = outcomes(42)
      const call = run(breakers, { service, breaker })
      let ok = 0
      for (let i = 0; i < 400; i++) {
        if (statusOf(yield* call(counter().answer(next()))) === 200) ok++
        yield* TestClock.adjust("10 millis") // 100 calls a second
      }
      return ok / 400
    }
    // The router's routes (src/services/router/wrangler.toml).
    const reference = { failureRate: 0.75, minimumCalls: 20, window: 50, slowCallMs: 2000, openMs: 1000, maxOpenMs: 30000, probes: 2 }
    const rateBased = yield* successes("half-failing", reference)
    expect(rateBased).toBeGreaterThan(0.4)
    expect(rateBased).toBeLessThan(0.6)
    const streakBased = yield* successes("half-failing-streak", { consecutiveFailures: 5, openMs: 1000, maxOpenMs: 30000, probes: 2 })
    expect(streakBased).toBeLessThan(rateBased / 2)
  }).pipe(Effect.provide(Breakers)), 60_000)
