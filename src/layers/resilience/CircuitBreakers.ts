/**
 * Circuit breakers per upstream.
 *
 * Each route of the router's `ROUTES` table may carry `breaker` settings:
 *
 * ```toml
 * breaker = { consecutiveFailures = 5, openMs = 1000, maxOpenMs = 30000, probes = 2 }
 * breaker = { failureRate = 0.5, minimumCalls = 20, window = 100, slowCallMs = 2000 }
 * ```
 *
 * - Trips on consecutive failures, or on a failure rate over the last
 *   `window` calls once `minimumCalls` were seen. A failure is a 5xx answer,
 *   an unreachable upstream, a timeout, or (with `slowCallMs`) a call slower
 *   than that. 4xx answers are the client's, not the upstream's: successes.
 *   An interrupted call is not counted.
 * - Stays open `openMs`; each reopening before the breaker has recovered
 *   doubles it, up to `maxOpenMs`. A recovery (every half-open probe
 *   succeeded) starts the next opening at `openMs` again, so an upstream that
 *   fails now and then is not kept out longer each time. While open every
 *   call is refused at once with 503 and a `Retry-After`, without reaching
 *   the upstream.
 * - Half-open admits exactly `probes` calls, however many arrive at once; it
 *   closes when all of them succeed and reopens on any failure. A probe whose
 *   outcome never comes back frees its slot after `probeLeaseMillis`.
 * - State is per isolate by default (a memory store, decided synchronously:
 *   no effect machinery on the request path); with `BREAKER_STORE =
 *   "durable-object"` one Durable Object holds it for every isolate. Every
 *   transition is logged, is an event on the request's span and sets the
 *   `meshwork.breaker.state` gauge; `/health` reports each breaker's state.
 *
 * The trip policies are Effect's (`CircuitBreaker.TripPolicy` of
 * `effect/persistence`); the guard is our own: Effect's `CircuitBreaker.execute`
 * measured as half of the router's own cost per request.
 *
 * Add `CircuitBreakers.layer` to a proxy Worker's layer to turn them on.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schema from "effect/Schema"
import * as CircuitBreaker from "effect/persistence/CircuitBreaker"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Problem from "../../runtime/Problem.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as LiveStats from "../observability/LiveStats.ts"

/** A circuit breaker's state per upstream: 0 closed, 1 half-open, 2 open. */
export const breakerState = Metric.gauge("meshwork.breaker.state", {
  description: "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open"
})

export const BreakerSettings = Schema.Struct({
  /** Open after this many failures in a row. */
  consecutiveFailures: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1000 }))),
  /** Or: open when this fraction of the last `window` calls failed... */
  failureRate: Schema.optionalKey(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 }))),
  /** ...once at least this many calls were recorded (default `window`). */
  minimumCalls: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10_000 }))),
  window: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10_000 }))),
  /** A call slower than this counts as a failure. */
  slowCallMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600_000 }))),
  /** First open time (default 1 s), doubling per reopening before a recovery... */
  openMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3_600_000 }))),
  /** ...up to this (default 30 s). */
  maxOpenMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3_600_000 }))),
  /** Calls admitted while half-open (default 1). */
  probes: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100 })))
})
export type BreakerSettings = typeof BreakerSettings.Type

export const tripPolicy = (settings: BreakerSettings): CircuitBreaker.TripPolicy =>
  settings.failureRate !== undefined
    ? CircuitBreaker.rate({
      threshold: settings.failureRate,
      size: settings.window ?? 100,
      minimumCalls: settings.minimumCalls ?? settings.window ?? 100
    })
    : CircuitBreaker.consecutive(settings.consecutiveFailures ?? 5)

/** The open time of the `opening`-th consecutive opening (1 for the first): doubling from `openMs`, capped at `maxOpenMs`. */
export const openMillis = (settings: BreakerSettings, opening: number): number =>
  Math.min(settings.maxOpenMs ?? 30_000, (settings.openMs ?? 1_000) * 2 ** Math.min(Math.max(0, opening - 1), 30))

export type BreakerState = "Closed" | "Open" | "HalfOpen"
export type Outcome = "Success" | "Failure" | "Ignored"

export interface Transition {
  readonly key: string
  readonly from: BreakerState
  readonly to: BreakerState
}

/** What a store answers a call that asks to go through. */
export type Admission =
  | { readonly _tag: "Admitted"; readonly generation: number; readonly transition?: Transition | undefined }
  | { readonly _tag: "Open"; readonly retryAfterMillis: number }
  | { readonly _tag: "HalfOpen" }

/** Where breaker state lives: the isolate's memory (answers at once) or a Durable Object (answers over RPC). */
export interface BreakerStore {
  readonly admit: (key: string, settings: BreakerSettings, now: number) => Admission | Promise<Admission>
  readonly record: (
    key: string,
    settings: BreakerSettings,
    generation: number,
    outcome: Outcome,
    now: number
  ) => Transition | undefined | Promise<Transition | undefined>
  readonly state: (key: string, now: number) => BreakerState | Promise<BreakerState>
}

interface Entry {
  state: BreakerState
  generation: number
  streak: number
  ring: Array<boolean>
  ringFailures: number
  openUntil: number
  /** Openings since the breaker last recovered. */
  openings: number
  /** The probes admitted in this half-open period and not yet recorded: generation -> admitted at. */
  probesInFlight: Map<number, number>
  probesSucceeded: number
}

/** How long a half-open probe holds its slot if its outcome never comes back (a lost RPC, a dead isolate). */
export const probeLeaseMillis = 30_000

/**
 * The breakers of one isolate (or of the shared object), in memory. Every
 * method is synchronous, so concurrent callers in one isolate never see a
 * state between an admission and its bookkeeping: exactly `probes` are
 * admitted while half-open. Generations start at a random offset, so a store
 * that restarted (an evicted Durable Object) cannot take an old outcome for a
 * new call.
 */
export interface MemoryStore extends BreakerStore {
  readonly admit: (key: string, settings: BreakerSettings, now: number) => Admission
  readonly record: (key: string, settings: BreakerSettings, generation: number, outcome: Outcome, now: number) => Transition | undefined
  readonly state: (key: string, now: number) => BreakerState
}

export const memoryStore = (): MemoryStore => {
  const entries = new Map<string, Entry>()
  let nextGeneration = crypto.getRandomValues(new Uint32Array(1))[0]! * 1024
  const entry = (key: string): Entry => {
    let found = entries.get(key)
    if (found === undefined) {
      found = {
        state: "Closed",
        generation: nextGeneration++,
        streak: 0,
        ring: [],
        ringFailures: 0,
        openUntil: 0,
        openings: 0,
        probesInFlight: new Map(),
        probesSucceeded: 0
      }
      entries.set(key, found)
    }
    return found
  }
  const resetCounts = (e: Entry) => {
    e.streak = 0
    e.ring = []
    e.ringFailures = 0
  }
  const open = (key: string, e: Entry, from: BreakerState, settings: BreakerSettings, now: number): Transition => {
    e.state = "Open"
    e.generation = nextGeneration++
    e.openings++
    e.openUntil = now + openMillis(settings, e.openings)
    resetCounts(e)
    e.probesInFlight.clear()
    e.probesSucceeded = 0
    return { key, from, to: "Open" }
  }
  const trips = (e: Entry, policy: CircuitBreaker.TripPolicy) =>
    policy._tag === "Consecutive"
      ? e.streak >= policy.failures
      : e.ring.length >= policy.minimumCalls && e.ringFailures > 0 && e.ringFailures / e.ring.length >= policy.threshold
  const policies = new WeakMap<BreakerSettings, CircuitBreaker.TripPolicy>()
  const policyOf = (settings: BreakerSettings) => {
    let policy = policies.get(settings)
    if (policy === undefined) policies.set(settings, policy = tripPolicy(settings))
    return policy
  }

  return {
    admit: (key, settings, now) => {
      const e = entry(key)
      if (e.state === "Closed") return { _tag: "Admitted", generation: e.generation }
      let transition: Transition | undefined
      if (e.state === "Open") {
        if (now < e.openUntil) return { _tag: "Open", retryAfterMillis: e.openUntil - now }
        e.state = "HalfOpen"
        e.probesInFlight.clear()
        e.probesSucceeded = 0
        transition = { key, from: "Open", to: "HalfOpen" }
      }
      for (const [generation, admittedAt] of e.probesInFlight) {
        if (now - admittedAt >= probeLeaseMillis) e.probesInFlight.delete(generation)
      }
      if (e.probesInFlight.size + e.probesSucceeded >= (settings.probes ?? 1)) return { _tag: "HalfOpen" }
      const generation = nextGeneration++
      e.probesInFlight.set(generation, now)
      return { _tag: "Admitted", generation, transition }
    },
    record: (key, settings, generation, outcome, now) => {
      const e = entry(key)
      if (e.state === "HalfOpen" && e.probesInFlight.delete(generation)) {
        if (outcome === "Failure") return open(key, e, "HalfOpen", settings, now)
        if (outcome === "Success" && ++e.probesSucceeded >= (settings.probes ?? 1)) {
          e.state = "Closed"
          e.generation = nextGeneration++
          // Recovered: the next opening is a first one again.
          e.openings = 0
          resetCounts(e)
          return { key, from: "HalfOpen", to: "Closed" }
        }
        return undefined
      }
      if (e.state !== "Closed" || e.generation !== generation || outcome === "Ignored") return undefined
      const failed = outcome === "Failure"
      e.streak = failed ? e.streak + 1 : 0
      const policy = policyOf(settings)
      if (policy._tag === "Rate") {
        e.ring.push(failed)
        if (failed) e.ringFailures++
        while (e.ring.length > policy.size) if (e.ring.shift()) e.ringFailures--
      }
      return trips(e, policy) ? open(key, e, "Closed", settings, now) : undefined
    },
    state: (key, now) => {
      const e = entries.get(key)
      if (e === undefined || e.state === "Closed") return "Closed"
      return e.state === "Open" && now < e.openUntil ? "Open" : "HalfOpen"
    }
  }
}

/**
 * A Durable Object holding one shared breaker store, for breakers whose state
 * must be the same in every isolate (`BREAKER_STORE = "durable-object"`). The
 * router exports it and binds it as BREAKERS; every key lives in one object
 * (`idFromName("breakers")`), so admissions are serialized exactly as in one
 * isolate. The object's own clock decides.
 */
export class CircuitBreakerObject extends DurableObjects.make({
  name: "CircuitBreakerObject",
  layer: Layer.empty
}) {
  readonly #store = memoryStore()

  admit(key: string, settings: BreakerSettings): Admission {
    return this.#store.admit(key, settings, Date.now())
  }

  record(key: string, settings: BreakerSettings, generation: number, outcome: Outcome): Transition | undefined | Promise<Transition | undefined> {
    return this.#store.record(key, settings, generation, outcome, Date.now())
  }

  state(key: string): BreakerState | Promise<BreakerState> {
    return this.#store.state(key, Date.now())
  }
}

/** A breaker store that is the shared `CircuitBreakerObject`, reached over RPC. */
export const durableObjectStore = (namespace: DurableObjectNamespace): BreakerStore => {
  const object = () => namespace.get(namespace.idFromName("breakers")) as unknown as Pick<CircuitBreakerObject, "admit" | "record" | "state">
  return {
    admit: (key, settings) => Promise.resolve(object().admit(key, settings)),
    record: (key, settings, generation, outcome) => Promise.resolve(object().record(key, settings, generation, outcome)),
    state: (key) => Promise.resolve(object().state(key))
  }
}

/** What a call to an upstream returned, as a breaker sees it. */
const classify = (exit: Exit.Exit<Response, unknown>, elapsedMillis: number, slowCallMs: number | undefined): Outcome => {
  if (Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause)) return "Ignored"
  if (slowCallMs !== undefined && elapsedMillis > slowCallMs) return "Failure"
  if (Exit.isSuccess(exit)) return exit.value.status >= 500 ? "Failure" : "Success"
  const error = Cause.findErrorOption(exit.cause)
  return error._tag === "Some" && !(error.value instanceof Problem.BadGateway || error.value instanceof Problem.GatewayTimeout)
    ? "Success"
    : "Failure"
}

const stateValue = { Closed: 0, HalfOpen: 1, Open: 2 } as const

const observe = (key: string, state: BreakerState, event: string, attributes: Record<string, unknown> = {}) =>
  Effect.andThen(
    Telemetry.event(event, { "meshwork.breaker": key, "meshwork.breaker.state": state, ...attributes }),
    Telemetry.record(breakerState, stateValue[state], { upstream: key })
  )

const observeTransition = (transition: Transition | undefined) =>
  transition === undefined ? Effect.void : Effect.andThen(
    Effect.all([
      observe(transition.key, transition.to, "breaker.transition", { "meshwork.breaker.from": transition.from }),
      LiveStats.transition(transition.key, transition.from, transition.to)
    ], { discard: true }),
    Effect.logInfo("circuit breaker", transition.key, `${transition.from} -> ${transition.to}`).pipe(
      Effect.annotateLogs({ breaker: transition.key, from: transition.from, to: transition.to })
    )
  )

/** An answer of the store: at once when it has one, else when its RPC settles. */
const answer = <A>(value: A | Promise<A>): Effect.Effect<A, Problem.ServiceUnavailable> =>
  value instanceof Promise
    ? Effect.tryPromise({
      try: () => value,
      catch: () => new Problem.ServiceUnavailable({ detail: "The circuit breaker store did not answer", retryAfterSeconds: 1 })
    })
    : Effect.succeed(value)

const refusal = (key: string, admission: Exclude<Admission, { _tag: "Admitted" }>) =>
  Effect.andThen(
    observe(key, admission._tag, "breaker.refused"),
    Effect.fail(
      new Problem.ServiceUnavailable({
        detail: `The ${key} service is failing; its circuit is open`,
        retryAfterSeconds: admission._tag === "Open" ? Math.max(1, Math.ceil(admission.retryAfterMillis / 1000)) : 1
      })
    )
  )

/** The breakers of a proxy Worker, one per upstream that has `breaker` settings. */
export class CircuitBreakers extends Context.Service<CircuitBreakers, {
  /** Runs `call` through `upstream`'s breaker; 503 with Retry-After at once while it is open. */
  readonly guard: <E, R>(
    upstream: { readonly service: string; readonly breaker?: BreakerSettings | undefined },
    call: Effect.Effect<Response, E, R>
  ) => Effect.Effect<Response, E | Problem.ServiceUnavailable, R>
  readonly state: (service: string) => Effect.Effect<BreakerState | undefined>
}>()("meshwork/layers/resilience/CircuitBreakers") {
  static readonly make = (store: BreakerStore): CircuitBreakers["Service"] => {
    const guard = <E, R>(
      upstream: { readonly service: string; readonly breaker?: BreakerSettings | undefined },
      call: Effect.Effect<Response, E, R>
    ): Effect.Effect<Response, E | Problem.ServiceUnavailable, R> => {
      const settings = upstream.breaker
      if (settings === undefined) return call
      const key = upstream.service
      return Effect.withFiber((fiber) => {
        const clock = fiber.getRef(Clock.Clock)
        const startedAt = clock.currentTimeMillisUnsafe()
        const run = (admission: Admission): Effect.Effect<Response, E | Problem.ServiceUnavailable, R> => {
          if (admission._tag !== "Admitted") return refusal(key, admission)
          const recorded = call.pipe(Effect.onExit((exit) => {
            const now = clock.currentTimeMillisUnsafe()
            const outcome = classify(exit, now - startedAt, settings.slowCallMs)
            // A store that cannot record leaves the breaker as it was; the call's own outcome stands.
            return Effect.flatMap(answer(store.record(key, settings, admission.generation, outcome, now)), observeTransition).pipe(
              Effect.catch(() => Effect.void)
            )
          }))
          return admission.transition === undefined ? recorded : Effect.andThen(observeTransition(admission.transition), recorded)
        }
        const admission = store.admit(key, settings, startedAt)
        return admission instanceof Promise ? Effect.flatMap(answer(admission), run) : run(admission)
      })
    }
    return CircuitBreakers.of({
      guard,
      state: (service) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          // A store that cannot answer leaves the state unknown; /health still answers.
          Effect.orElseSucceed(answer(store.state(service, now)), () => undefined))
    })
  }

  /**
   * Breakers over `BREAKER_STORE`: `memory` (default, per isolate) or
   * `durable-object` (shared by every isolate: the BREAKERS binding).
   */
  static readonly layer = Layer.effect(
    CircuitBreakers,
    Effect.gen(function*() {
      const kind = yield* Config.Literals(["memory", "durable-object"], "BREAKER_STORE").pipe(Config.withDefault("memory"))
      return CircuitBreakers.make(kind === "memory" ? memoryStore() : durableObjectStore(yield* Bindings.durableObject("BREAKERS")))
    })
  )
}
