/**
 * Bulkheads on virtual time: calls over an upstream's cap are shed at once
 * with 503 and Retry-After, without reaching it; the adaptive cap halves on
 * failures and slow calls and climbs back as the upstream recovers.
 */
import { expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { Bulkheads, type BulkheadSettings } from "../../src/layers/resilience/Bulkheads.ts"

const errorOf = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) ? (exit.cause.reasons[0] as { error?: { _tag: string; retryAfterSeconds?: number } }).error : undefined

it.effect("sheds the calls over the cap at once, with 503 and Retry-After, without calling the upstream", () =>
  Effect.gen(function*() {
    const bulkheads = yield* Bulkheads
    const upstream = { service: "slow", bulkhead: { maxConcurrent: 3 } satisfies BulkheadSettings }
    const gate = yield* Deferred.make<void>()
    let calls = 0
    const call = Effect.andThen(Effect.sync(() => calls++), Deferred.await(gate))
    const fibers = yield* Effect.forEach(Array.from({ length: 10 }), () => Effect.forkChild(Effect.exit(bulkheads.guard(upstream, call))))
    yield* Effect.yieldNow
    expect(bulkheads.state("slow")).toEqual({ inFlight: 3, limit: 3 })
    yield* Deferred.succeed(gate, undefined)
    const exits = yield* Effect.forEach(fibers, Fiber.join)
    expect(calls).toBe(3)
    expect(exits.filter(Exit.isSuccess)).toHaveLength(3)
    expect(exits.filter(Exit.isFailure).map(errorOf)).toEqual(
      Array.from({ length: 7 }, () => expect.objectContaining({ _tag: "ServiceUnavailable", retryAfterSeconds: 1 }))
    )
    // Once they are done, the upstream takes calls again.
    expect(bulkheads.state("slow")?.inFlight).toBe(0)
    expect(Exit.isSuccess(yield* Effect.exit(bulkheads.guard(upstream, Effect.void)))).toBe(true)
  }).pipe(Effect.provide(Bulkheads.layer)))

it.effect("halves the adaptive cap on failures and slow calls, down to its floor, and earns it back on healthy calls", () =>
  Effect.gen(function*() {
    const bulkheads = yield* Bulkheads
    const upstream = { service: "flaky", bulkhead: { maxConcurrent: 64, adaptive: true, minConcurrent: 4, latencyMs: 100 } }
    const answer = (status: number, delay: Duration.Input = "0 millis") => bulkheads.guard(upstream, Effect.as(Effect.sleep(delay), new Response(null, { status })))
    yield* answer(200)
    expect(bulkheads.state("flaky")?.limit).toBe(64)
    yield* answer(503)
    expect(bulkheads.state("flaky")?.limit).toBe(32)
    // A slow success counts like a failure.
    const slow = yield* Effect.forkChild(answer(200, "200 millis"))
    yield* TestClock.adjust("200 millis")
    yield* Fiber.join(slow)
    expect(bulkheads.state("flaky")?.limit).toBe(16)
    yield* Effect.exit(bulkheads.guard(upstream, Effect.fail("unreachable")))
    for (let i = 0; i < 5; i++) yield* answer(502)
    expect(bulkheads.state("flaky")?.limit).toBe(4)
    // Additive increase: about cap more healthy calls to raise the cap by one.
    for (let i = 0; i < 200; i++) yield* answer(200)
    const recovered = bulkheads.state("flaky")!.limit
    expect(recovered).toBeGreaterThan(15)
    expect(recovered).toBeLessThan(64)
  }).pipe(Effect.provide(Bulkheads.layer)))

it.effect("leaves a route without bulkhead settings alone", () =>
  Effect.gen(function*() {
    const bulkheads = yield* Bulkheads
    const gate = yield* Deferred.make<void>()
    const fibers = yield* Effect.forEach(Array.from({ length: 50 }), () =>
      Effect.forkChild(Effect.exit(bulkheads.guard({ service: "open" }, Deferred.await(gate)))))
    yield* Deferred.succeed(gate, undefined)
    const exits = yield* Effect.forEach(fibers, Fiber.join)
    expect(exits.every(Exit.isSuccess)).toBe(true)
    expect(bulkheads.state("open")).toBeUndefined()
  }).pipe(Effect.provide(Bulkheads.layer)))
