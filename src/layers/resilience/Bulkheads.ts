/**
 * Bulkheads: a cap on the calls in flight to each upstream, per isolate, so
 * that one slow upstream cannot take every request of the Worker with it.
 * A call over the cap is shed at once with 503 and `Retry-After`, before it
 * reaches the upstream.
 *
 * A route of the `ROUTES` table may carry `bulkhead`:
 *
 * ```toml
 * bulkhead = { maxConcurrent = 200, adaptive = true, minConcurrent = 10, latencyMs = 2000 }
 * ```
 *
 * With `adaptive`, the cap moves between `minConcurrent` and `maxConcurrent`
 * by AIMD (as TCP does): each call that succeeds within `latencyMs` raises it
 * by 1/cap, each failure (5xx, unreachable, timeout) or slow call halves it.
 * An upstream that starts to collapse therefore gets less concurrency at
 * once, and earns it back gradually as it recovers. On in a Worker when its
 * layer has `Bulkheads.layer` (the router has it).
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schema from "effect/Schema"
import * as Problem from "../../runtime/Problem.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as LiveStats from "../observability/LiveStats.ts"

const Count = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100_000 }))

export const BulkheadSettings = Schema.Struct({
  /** At most this many calls in flight to the upstream per isolate. */
  maxConcurrent: Count,
  /** Adapt the cap to the upstream's health by AIMD (default off: the cap is `maxConcurrent`). */
  adaptive: Schema.optionalKey(Schema.Boolean),
  /** The lowest the adaptive cap goes (default 1). */
  minConcurrent: Schema.optionalKey(Count),
  /** A call slower than this counts against the adaptive cap like a failure (default 1000). */
  latencyMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600_000 })))
})
export type BulkheadSettings = typeof BulkheadSettings.Type

/** Calls shed by a bulkhead, per upstream. */
export const bulkheadShed = Metric.counter("meshwork.bulkhead.shed", {
  description: "Calls refused by a bulkhead because the upstream's concurrency cap was reached"
})

interface State {
  inFlight: number
  /** The adaptive cap, fractional; `maxConcurrent` when not adaptive. */
  limit: number
}

/** Bulkheads per upstream, in this isolate's memory. */
export class Bulkheads extends Context.Service<Bulkheads, {
  /** Runs `call` within the upstream's bulkhead, or sheds it with 503. */
  readonly guard: <A, E, R>(
    upstream: { readonly service: string; readonly bulkhead?: BulkheadSettings | undefined },
    call: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | Problem.ServiceUnavailable, R>
  /** The current cap and calls in flight of an upstream (for health reports and tests). */
  readonly state: (service: string) => { readonly inFlight: number; readonly limit: number } | undefined
}>()("meshwork/layers/resilience/Bulkheads") {
  static readonly layer = Layer.sync(Bulkheads, () => {
    const states = new Map<string, State>()
    const stateOf = (service: string, settings: BulkheadSettings): State => {
      let state = states.get(service)
      if (state === undefined) {
        state = { inFlight: 0, limit: settings.maxConcurrent }
        states.set(service, state)
      }
      return state
    }
    return Bulkheads.of({
      state: (service) => {
        const state = states.get(service)
        return state === undefined ? undefined : { inFlight: state.inFlight, limit: Math.floor(state.limit) }
      },
      guard: (upstream, call) => {
        const settings = upstream.bulkhead
        if (settings === undefined) return call
        const state = stateOf(upstream.service, settings)
        const cap = Math.max(1, Math.floor(state.limit))
        if (state.inFlight >= cap) {
          return Effect.andThen(
            Effect.all([
              Telemetry.event("bulkhead.shed", { "meshwork.upstream": upstream.service, "meshwork.bulkhead.limit": cap }),
              Telemetry.record(bulkheadShed, 1, { upstream: upstream.service }),
              LiveStats.count("bulkhead.shed", upstream.service)
            ], { discard: true }),
            Effect.fail(new Problem.ServiceUnavailable({
              retryAfterSeconds: 1,
              detail: `${upstream.service} is at its concurrency limit; try again shortly`
            }))
          )
        }
        state.inFlight++
        return Effect.flatMap(Clock.currentTimeMillis, (started) =>
          Effect.onExit(call, (exit) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) =>
              Effect.sync(() => {
                state.inFlight--
                if (settings.adaptive !== true) return
                const min = Math.min(settings.minConcurrent ?? 1, settings.maxConcurrent)
                const healthy = isHealthy(exit) && now - started <= (settings.latencyMs ?? 1000)
                state.limit = healthy
                  ? Math.min(settings.maxConcurrent, state.limit + 1 / state.limit)
                  : Math.max(min, state.limit / 2)
              })
            )))
      }
    })
  })
}

/** A call that answered below 500 (a Response), or succeeded otherwise. */
const isHealthy = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isSuccess(exit) && !(exit.value instanceof Response && exit.value.status >= 500)
