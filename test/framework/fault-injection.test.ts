/** Fault injection from route configuration, on virtual time, against a real upstream (FLAKY). */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect, Fiber, Layer, Random } from "effect"
import { TestClock } from "effect/testing"
import { FaultInjection, type FaultSettings } from "../../src/layers/resilience/FaultInjection.ts"
import * as Proxy from "../../src/layers/routing/Proxy.ts"
import { envLayer } from "../../src/runtime/Worker.ts"

const FaultsOn = FaultInjection.layer.pipe(Layer.provide(envLayer({ FAULT_INJECTION: "true" })))
const FaultsOff = FaultInjection.layer.pipe(Layer.provide(envLayer({})))

const calls = (key: string) =>
  Effect.promise(async () => ((await (await env.FLAKY.fetch(`http://flaky/count?key=${key}`)).json()) as { calls: number }).calls)

const call = (key: string, faults: FaultSettings) =>
  Effect.map(
    Proxy.forward({ service: "flaky", fetcher: env.FLAKY, faults }, new Request(`http://flaky/status/200?key=${key}`)),
    (response) => response.status
  )

it.effect("aborts the configured share of calls without reaching the upstream", () =>
  Effect.gen(function*() {
    const key = crypto.randomUUID()
    const statuses = yield* Effect.forEach(Array.from({ length: 400 }), () => call(key, { abortPercent: 25, abortStatus: 503 }))
    const aborted = statuses.filter((status) => status === 503).length
    // 25% of 400 is 100; the seeded generator makes the draw the same on every run.
    expect(aborted).toBeGreaterThan(80)
    expect(aborted).toBeLessThan(120)
    expect(yield* calls(key)).toBe(400 - aborted)
  }).pipe(Random.withSeed("faults"), Effect.provide(FaultsOn)))

it.effect("delays the configured share of calls by delayMs, on the clock", () =>
  Effect.gen(function*() {
    const key = crypto.randomUUID()
    const fiber = yield* Effect.forkChild(call(key, { delayPercent: 100, delayMs: 2_000 }))
    yield* TestClock.adjust("1999 millis")
    expect(fiber.pollUnsafe()).toBeUndefined()
    expect(yield* calls(key)).toBe(0)
    yield* TestClock.adjust("1 millis")
    expect(yield* Fiber.join(fiber)).toBe(200)
    expect(yield* calls(key)).toBe(1)
  }).pipe(Effect.provide(FaultsOn)))

it.effect.each([["without FaultInjection in the layer", Layer.empty], ["with FAULT_INJECTION unset", FaultsOff]] as const)(
  "does nothing %s, whatever the route's settings say",
  ([, layer]) =>
  Effect.gen(function*() {
    const key = crypto.randomUUID()
    const statuses = yield* Effect.forEach(Array.from({ length: 20 }), () => call(key, { abortPercent: 100 }))
    expect(statuses.every((status) => status === 200)).toBe(true)
    expect(yield* calls(key)).toBe(20)
  }).pipe(Effect.provide(layer)))
