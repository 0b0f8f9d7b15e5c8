/**
 * Circuit breakers per upstream, built on Effect's `CircuitBreaker`
 * (`effect/persistence`).
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
 * - Stays open `openMs`, doubling with each consecutive opening up to
 *   `maxOpenMs`; while open every call is refused at once with 503 and a
 *   `Retry-After`, without reaching the upstream.
 * - Half-open admits exactly `probes` calls, however many arrive at once; it
 *   closes when all of them succeed and reopens on any failure.
 * - State is per isolate by default (a memory store); with `BREAKER_STORE =
 *   "durable-object"` one Durable Object holds it for every isolate. Every
 *   transition is logged, and `/health` reports each breaker's state.
 *
 * Add `CircuitBreakers.layer` to a proxy Worker's layer to turn them on.
 */
import { Cause, Clock, Config, Context, Duration, Effect, Exit, Layer, Metric, Schedule, Schema, Scope } from "effect"
import { CircuitBreaker } from "effect/persistence"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Problem from "../../runtime/Problem.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

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
  /** First open time (default 1 s), doubling per consecutive opening... */
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

/** Open time: doubling from `openMs`, capped at `maxOpenMs`. */
export const openDuration = (settings: BreakerSettings) => {
  const cap = settings.maxOpenMs ?? 30_000
  return Schedule.exponential(Duration.millis(settings.openMs ?? 1_000)).pipe(
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.millis(cap))))
  )
}

interface Entry {
  state: "Closed" | "Open" | "HalfOpen"
  generation: number
  streak: number
  ring: Array<boolean>
  ringFailures: number
  openUntil: number
  consecutiveOpenings: number
  lastOpenFor: number
  resetAt: number
  /** The probes admitted in this half-open period and not yet recorded: generation -> admitted at. */
  probesInFlight: Map<number, number>
  probesSucceeded: number
}

/** How long a half-open probe holds its slot if its outcome never comes back (a lost RPC, a dead isolate). */
export const probeLeaseMillis = 30_000

/**
 * An in-memory `CircuitBreakerStore` whose half-open state admits `probes(key)`
 * calls (Effect's own memory store admits one). `admit` and `record` run
 * without yielding, so concurrent callers in one isolate never see a state
 * between them: exactly `probes` are admitted. A probe whose outcome is not
 * recorded within `probeLeaseMillis` frees its slot. Transitions are logged.
 * Generations start at a random offset, so a store that restarted (an evicted
 * Durable Object) cannot take an old outcome for a new call.
 */
export const makeStore = (probes: (key: string) => number): CircuitBreaker.CircuitBreakerStore["Service"] => {
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
        consecutiveOpenings: 0,
        lastOpenFor: 0,
        resetAt: 0,
        probesInFlight: new Map(),
        probesSucceeded: 0
      }
      entries.set(key, found)
    }
    return found
  }
  const open = (key: string, e: Entry, from: "Closed" | "HalfOpen", openFor: Duration.Duration, now: number) => {
    e.state = "Open"
    e.generation = nextGeneration++
    e.lastOpenFor = Duration.toMillis(openFor)
    e.openUntil = now + e.lastOpenFor
    e.consecutiveOpenings++
    e.streak = 0
    e.ring = []
    e.ringFailures = 0
    e.probesInFlight.clear()
    e.probesSucceeded = 0
    return { key, from, to: "Open" as const, retryAfter: openFor, consecutiveOpenings: e.consecutiveOpenings }
  }
  const trips = (e: Entry, policy: CircuitBreaker.TripPolicy) =>
    policy._tag === "Consecutive"
      ? e.streak >= policy.failures
      : e.ring.length >= policy.minimumCalls && e.ringFailures > 0 && e.ringFailures / e.ring.length >= policy.threshold
  const log = (transition: CircuitBreaker.Transition | undefined) =>
    transition === undefined
      ? Effect.void
      : Effect.logInfo("circuit breaker", transition.key, `${transition.from} -> ${transition.to}`).pipe(
        Effect.annotateLogs({ breaker: transition.key, from: transition.from, to: transition.to })
      )

  return CircuitBreaker.CircuitBreakerStore.of({
    admit: (key) =>
      Effect.flatMap(Clock.currentTimeMillis, (now): Effect.Effect<CircuitBreaker.Admission, CircuitBreaker.CircuitBreakerError> => {
        const e = entry(key)
        let transition: CircuitBreaker.Transition | undefined
        if (e.state === "Closed") {
          if (e.consecutiveOpenings > 0 && now >= e.resetAt) e.consecutiveOpenings = 0
          return Effect.succeed({ generation: e.generation, probe: false, consecutiveOpenings: e.consecutiveOpenings, transition })
        }
        if (e.state === "Open") {
          if (now < e.openUntil) {
            return Effect.fail(
              new CircuitBreaker.CircuitBreakerError({
                reason: new CircuitBreaker.CircuitOpen({ key, retryAfter: Duration.millis(e.openUntil - now) })
              })
            )
          }
          e.state = "HalfOpen"
          e.probesInFlight.clear()
          e.probesSucceeded = 0
          transition = { key, from: "Open", to: "HalfOpen" }
        }
        for (const [generation, admittedAt] of e.probesInFlight) {
          if (now - admittedAt >= probeLeaseMillis) e.probesInFlight.delete(generation)
        }
        if (e.probesInFlight.size + e.probesSucceeded >= probes(key)) {
          return Effect.fail(new CircuitBreaker.CircuitBreakerError({ reason: new CircuitBreaker.CircuitHalfOpen({ key }) }))
        }
        const generation = nextGeneration++
        e.probesInFlight.set(generation, now)
        return Effect.as(log(transition), {
          generation,
          probe: true,
          consecutiveOpenings: e.consecutiveOpenings,
          transition
        })
      }),
    record: ({ generation, key, openFor, outcome, tripPolicy }) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const e = entry(key)
        let transition: CircuitBreaker.Transition | undefined
        if (e.state === "HalfOpen" && e.probesInFlight.delete(generation)) {
          if (outcome === "Failure") transition = open(key, e, "HalfOpen", openFor, now)
          else if (outcome === "Success" && ++e.probesSucceeded >= probes(key)) {
            e.state = "Closed"
            e.generation = nextGeneration++
            e.resetAt = now + e.lastOpenFor
            e.streak = 0
            e.ring = []
            e.ringFailures = 0
            transition = { key, from: "HalfOpen", to: "Closed" }
          }
        } else if (e.state === "Closed" && e.generation === generation && outcome !== "Ignored") {
          const failed = outcome === "Failure"
          e.streak = failed ? e.streak + 1 : 0
          if (tripPolicy._tag === "Rate") {
            e.ring.push(failed)
            if (failed) e.ringFailures++
            while (e.ring.length > tripPolicy.size) if (e.ring.shift()) e.ringFailures--
          }
          if (trips(e, tripPolicy)) transition = open(key, e, "Closed", openFor, now)
        }
        return Effect.as(log(transition), transition)
      }),
    state: (key) =>
      Effect.map(Clock.currentTimeMillis, (now): CircuitBreaker.State => {
        const e = entries.get(key)
        if (e === undefined || e.state === "Closed") return { _tag: "Closed", key }
        if (e.state === "Open" && now < e.openUntil) {
          return {
            _tag: "Open",
            key,
            retryAfter: Duration.millis(e.openUntil - now),
            consecutiveOpenings: e.consecutiveOpenings
          }
        }
        return {
          _tag: "HalfOpen",
          key,
          probing: e.probesInFlight.size > 0,
          consecutiveOpenings: e.consecutiveOpenings
        }
      })
  })
}

/**
 * A Durable Object holding one shared breaker store, for breakers whose state
 * must be the same in every isolate (`BREAKER_STORE = "durable-object"`). The
 * router exports it and binds it as BREAKERS; every key lives in one object
 * (`idFromName("breakers")`), so admissions are serialized exactly as in one
 * isolate. Durations cross the RPC boundary as milliseconds.
 */
export class CircuitBreakerObject extends DurableObjects.make({
  name: "CircuitBreakerObject",
  layer: Layer.empty
}) {
  readonly #probes = new Map<string, number>()
  readonly #store = makeStore((key) => this.#probes.get(key) ?? 1)

  admit(key: string, probes: number): Promise<RemoteAdmission> {
    this.#probes.set(key, probes)
    return this.run(
      this.#store.admit(key).pipe(
        Effect.scoped,
        Effect.map((admission): RemoteAdmission => ({ _tag: "Admitted", ...admission, transition: toRemote(admission.transition) })),
        Effect.catch((error) =>
          Effect.succeed<RemoteAdmission>(
            error.reason._tag === "CircuitOpen"
              ? { _tag: "Open", retryAfterMillis: Duration.toMillis(error.reason.retryAfter) }
              : { _tag: "HalfOpen" }
          )
        )
      )
    )
  }

  record(options: {
    readonly key: string
    readonly generation: number
    readonly outcome: "Success" | "Failure" | "Ignored"
    readonly tripPolicy: CircuitBreaker.TripPolicy
    readonly openForMillis: number
  }): Promise<RemoteTransition | undefined> {
    return this.run(
      Effect.map(
        Effect.orDie(this.#store.record({ ...options, openFor: Duration.millis(options.openForMillis) })),
        toRemote
      )
    )
  }

  state(key: string): Promise<RemoteState> {
    return this.run(
      Effect.map(Effect.orDie(this.#store.state(key)), (state): RemoteState =>
        state._tag === "Open"
          ? { ...state, retryAfter: undefined, retryAfterMillis: Duration.toMillis(state.retryAfter) }
          : state)
    )
  }
}

type RemoteTransition = Omit<CircuitBreaker.Transition, "retryAfter"> & { readonly retryAfterMillis?: number }
type RemoteState = (Omit<CircuitBreaker.State, "retryAfter"> & { readonly retryAfterMillis?: number; readonly retryAfter?: undefined })
type RemoteAdmission =
  | (Omit<CircuitBreaker.Admission, "transition"> & { readonly _tag: "Admitted"; readonly transition: RemoteTransition | undefined })
  | { readonly _tag: "Open"; readonly retryAfterMillis: number }
  | { readonly _tag: "HalfOpen" }

const toRemote = (transition: CircuitBreaker.Transition | undefined): RemoteTransition | undefined =>
  transition === undefined
    ? undefined
    : "retryAfter" in transition
    ? { ...transition, retryAfter: undefined, retryAfterMillis: Duration.toMillis(transition.retryAfter) } as RemoteTransition
    : transition

const fromRemote = (transition: RemoteTransition | undefined): CircuitBreaker.Transition | undefined =>
  transition === undefined
    ? undefined
    : transition.to === "Open"
    ? { ...transition, to: "Open", retryAfter: Duration.millis(transition.retryAfterMillis ?? 0) } as CircuitBreaker.Transition
    : transition as CircuitBreaker.Transition

/** A breaker store that is the shared `CircuitBreakerObject`, reached over RPC. */
export const durableObjectStore = (
  namespace: DurableObjectNamespace,
  probes: (key: string) => number
): CircuitBreaker.CircuitBreakerStore["Service"] => {
  const object = () => namespace.get(namespace.idFromName("breakers")) as unknown as Pick<
    CircuitBreakerObject,
    "admit" | "record" | "state"
  >
  const storeError = (cause: unknown) =>
    new CircuitBreaker.CircuitBreakerError({
      reason: new CircuitBreaker.CircuitBreakerStoreError({ message: "The breaker object did not answer", cause })
    })
  const call = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: storeError })
  return CircuitBreaker.CircuitBreakerStore.of({
    admit: (key) =>
      Effect.flatMap(call(() => object().admit(key, probes(key))), (answer) => {
        switch (answer._tag) {
          case "Admitted":
            return Effect.succeed({ ...answer, transition: fromRemote(answer.transition) })
          case "Open":
            return Effect.fail(
              new CircuitBreaker.CircuitBreakerError({
                reason: new CircuitBreaker.CircuitOpen({ key, retryAfter: Duration.millis(answer.retryAfterMillis) })
              })
            )
          case "HalfOpen":
            return Effect.fail(new CircuitBreaker.CircuitBreakerError({ reason: new CircuitBreaker.CircuitHalfOpen({ key }) }))
        }
      }),
    record: ({ openFor, ...options }) =>
      Effect.map(call(() => object().record({ ...options, openForMillis: Duration.toMillis(openFor) })), fromRemote),
    state: (key) =>
      Effect.map(call(() => object().state(key)), (state): CircuitBreaker.State =>
        state._tag === "Open"
          ? {
            _tag: "Open",
            key: state.key,
            retryAfter: Duration.millis(state.retryAfterMillis ?? 0),
            consecutiveOpenings: (state as unknown as { consecutiveOpenings: number }).consecutiveOpenings
          }
          : state as CircuitBreaker.State)
  })
}

/** What a call to an upstream returned, as a breaker sees it. */
const classify = (startedAt: number, slowCallMs: number | undefined) => (exit: Exit.Exit<Response, unknown>) =>
  Effect.map(Clock.currentTimeMillis, (now) => {
    if (slowCallMs !== undefined && now - startedAt > slowCallMs) return CircuitBreaker.failure()
    if (Exit.isSuccess(exit)) return exit.value.status >= 500 ? CircuitBreaker.failure() : CircuitBreaker.success
    const error = Cause.findErrorOption(exit.cause)
    return error._tag === "Some" && !(error.value instanceof Problem.BadGateway || error.value instanceof Problem.GatewayTimeout)
      ? CircuitBreaker.success
      : CircuitBreaker.failure()
  })

const stateValue = { Closed: 0, HalfOpen: 1, Open: 2 } as const

const observeState = (key: string, state: keyof typeof stateValue, event: string, attributes: Record<string, unknown> = {}) =>
  Effect.andThen(
    Telemetry.event(event, { "meshwork.breaker": key, "meshwork.breaker.state": state, ...attributes }),
    Telemetry.record(breakerState, stateValue[state], { upstream: key })
  )

const observeTransition = (transition: CircuitBreaker.Transition | undefined) =>
  transition === undefined
    ? Effect.void
    : observeState(transition.key, transition.to, "breaker.transition", { "meshwork.breaker.from": transition.from })

/**
 * `store`, with each decision seen: transitions and refusals are events on
 * the current span and set the `meshwork.breaker.state` gauge.
 */
const observed = (store: CircuitBreaker.CircuitBreakerStore["Service"]): CircuitBreaker.CircuitBreakerStore["Service"] =>
  CircuitBreaker.CircuitBreakerStore.of({
    ...store,
    admit: (key) =>
      store.admit(key).pipe(
        Effect.tap((admission) => observeTransition(admission.transition)),
        Effect.tapError((error) =>
          error.reason._tag === "CircuitOpen" || error.reason._tag === "CircuitHalfOpen"
            ? observeState(key, error.reason._tag === "CircuitOpen" ? "Open" : "HalfOpen", "breaker.refused")
            : Effect.void
        )
      ),
    record: (options) => Effect.tap(store.record(options), observeTransition)
  })

/** The breakers of a proxy Worker, one per upstream that has `breaker` settings. */
export class CircuitBreakers extends Context.Service<CircuitBreakers, {
  /** Runs `call` through `upstream`'s breaker; 503 with Retry-After at once while it is open. */
  readonly guard: <E, R>(
    upstream: { readonly service: string; readonly breaker?: BreakerSettings | undefined },
    call: Effect.Effect<Response, E, R>
  ) => Effect.Effect<Response, E | Problem.ServiceUnavailable, R>
  readonly state: (service: string) => Effect.Effect<CircuitBreaker.State["_tag"] | undefined>
}>()("meshwork/layers/resilience/CircuitBreakers") {
  /**
   * Breakers over `BREAKER_STORE`: `memory` (default, per isolate) or
   * `durable-object` (shared by every isolate: the BREAKERS binding).
   */
  static readonly layer = Layer.effect(
    CircuitBreakers,
    Effect.gen(function*() {
      const scope = yield* Effect.scope
      const settingsOf = new Map<string, BreakerSettings>()
      const probes = (key: string) => settingsOf.get(key)?.probes ?? 1
      const kind = yield* Config.Literals(["memory", "durable-object"], "BREAKER_STORE").pipe(Config.withDefault("memory"))
      const store = observed(
        kind === "memory" ? makeStore(probes) : durableObjectStore(yield* Bindings.durableObject("BREAKERS"), probes)
      )
      // Built on first use (routes are known only to the caller), never torn down but with the isolate.
      const breakers = new Map<string, CircuitBreaker.CircuitBreaker>()
      const breakerFor = (service: string, settings: BreakerSettings) =>
        Effect.suspend(() => {
          const existing = breakers.get(service)
          if (existing !== undefined) return Effect.succeed(existing)
          settingsOf.set(service, settings)
          return CircuitBreaker.make({ tripPolicy: tripPolicy(settings), openDuration: openDuration(settings) }).pipe(
            Effect.provideService(CircuitBreaker.CircuitBreakerStore, store),
            Scope.provide(scope),
            Effect.tap((breaker) => Effect.sync(() => breakers.set(service, breaker)))
          )
        })
      return CircuitBreakers.of({
        guard: (upstream, call) => {
          const settings = upstream.breaker
          if (settings === undefined) return call
          return Effect.gen(function*() {
            const breaker = yield* breakerFor(upstream.service, settings)
            const startedAt = yield* Clock.currentTimeMillis
            return yield* breaker.execute(call, {
              key: upstream.service,
              classify: classify(startedAt, settings.slowCallMs)
            }).pipe(
              Effect.catchIf(
                (error): error is CircuitBreaker.CircuitBreakerError =>
                  error instanceof CircuitBreaker.CircuitBreakerError,
                (error) =>
                Effect.fail(
                  new Problem.ServiceUnavailable({
                    detail: `The ${upstream.service} service is failing; its circuit is open`,
                    retryAfterSeconds: error.reason._tag === "CircuitOpen"
                      ? Math.max(1, Math.ceil(Duration.toSeconds(error.reason.retryAfter)))
                      : 1
                  })
                ))
            )
          })
        },
        state: (service) =>
          store.state(service).pipe(
            Effect.map((state) => state._tag),
            // A store that cannot answer leaves the state unknown; /health still answers.
            Effect.catch(() => Effect.succeed(undefined))
          )
      })
    })
  )
}
