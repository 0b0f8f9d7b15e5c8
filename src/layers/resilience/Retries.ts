/**
 * Retries and timeouts for calls to upstream Workers.
 *
 * - Only idempotent requests are retried (GET, HEAD, OPTIONS, PUT, DELETE, or
 *   any request carrying an `Idempotency-Key`), and only when the upstream
 *   answered 502, 503 or 504, could not be reached, or did not answer within
 *   the route's timeout. Any other answer, 4xx or 5xx, is final.
 * - Delays grow exponentially with full jitter, capped, at least what a
 *   `Retry-After` asks for, drawn from Effect's `Random` and slept on its
 *   `Clock` (so tests run them on virtual time).
 *   Every attempt stays inside the overall deadline: a retry whose delay
 *   would end past it is not made, and an attempt's timeout is cut to what is
 *   left of the deadline, so the attempt running at the deadline is cancelled.
 * - A retry budget per upstream: over the last 10 s, retries may be at most
 *   20% of requests, or 10 per second, whichever allows more. A failing
 *   upstream then sees at most 1.2x its normal traffic, not 3x.
 * - The route's timeout cancels the attempt: its fetch is aborted.
 *
 * Settings come from each route of the `ROUTES` table (`timeoutMs`, `retry`);
 * add `Retries.layer` to a proxy Worker to turn retries on.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"
import type { HttpClientResponse } from "effect/http"
import * as HttpClientError from "effect/http/HttpClientError"
import * as Problem from "../../runtime/Problem.ts"
import type * as ServiceClient from "../../runtime/ServiceClient.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import { LiveStats, type Recorder } from "../observability/LiveStats.ts"

const Millis = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600_000 }))

export const RetrySettings = Schema.Struct({
  /** Attempts in all, the first included (default 3). */
  attempts: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10 }))),
  /** The first retry's delay before jitter (default 50 ms); each next one doubles. */
  baseDelayMs: Schema.optionalKey(Millis),
  /** The largest delay before jitter (default 1 s). */
  maxDelayMs: Schema.optionalKey(Millis),
  /** Every attempt ends by then, counted from the first (default 5 s). */
  deadlineMs: Schema.optionalKey(Millis),
  /**
   * GET and HEAD only: when the first attempt has not answered within this
   * many ms, a second is sent beside it, if the retry budget has a retry; the
   * first good answer wins and the other is cancelled. Default: no hedging.
   */
  hedgeAfterMs: Schema.optionalKey(Millis)
})
export type RetrySettings = typeof RetrySettings.Type

export const defaults = { attempts: 3, baseDelayMs: 50, maxDelayMs: 1_000, deadlineMs: 5_000 } as const

const idempotentMethods = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
/** Reads: what a hedge may send twice at once. */
const hedgeableMethods = new Set(["GET", "HEAD"])

/** Whether a request may be sent twice: an idempotent method, or an `Idempotency-Key`. */
export const isIdempotent = (method: string, hasIdempotencyKey: boolean): boolean =>
  idempotentMethods.has(method.toUpperCase()) || hasIdempotencyKey

export const retryableStatuses: ReadonlySet<number> = new Set([502, 503, 504])

/** The delay a `Retry-After` value asks for (seconds or an HTTP date), if any. */
export const parseRetryAfter = (value: string | null | undefined, now: number): Duration.Duration | undefined => {
  if (value === null || value === undefined) return undefined
  const seconds = Number(value)
  if (value.trim() !== "" && Number.isFinite(seconds) && seconds >= 0) return Duration.seconds(seconds)
  const date = Date.parse(value)
  return Number.isNaN(date) ? undefined : Duration.millis(Math.max(0, date - now))
}

/**
 * The retry budget of one upstream: counts of requests and retries per second
 * over the last `windowSeconds`, in this isolate. Plain numbers, no I/O.
 */
export class RetryBudget {
  readonly #requests: Array<number>
  readonly #retries: Array<number>
  #second = 0

  constructor(
    readonly ratio = 0.2,
    readonly minPerSecond = 10,
    readonly windowSeconds = 10
  ) {
    this.#requests = new Array(windowSeconds).fill(0)
    this.#retries = new Array(windowSeconds).fill(0)
  }

  #advance(now: number) {
    const second = Math.floor(now / 1000)
    const steps = Math.min(second - this.#second, this.windowSeconds)
    for (let i = 1; i <= steps; i++) {
      const slot = (this.#second + i) % this.windowSeconds
      this.#requests[slot] = 0
      this.#retries[slot] = 0
    }
    if (second > this.#second) this.#second = second
    return this.#second % this.windowSeconds
  }

  request(now: number): void {
    this.#requests[this.#advance(now)]! += 1
  }

  /** Takes one retry from the budget if it has one. */
  tryRetry(now: number): boolean {
    const slot = this.#advance(now)
    const requests = this.#requests.reduce((a, b) => a + b, 0)
    const retries = this.#retries.reduce((a, b) => a + b, 0)
    if (retries >= Math.max(this.ratio * requests, this.minPerSecond * this.windowSeconds)) return false
    this.#retries[slot]! += 1
    return true
  }
}

/** Retries for upstream calls; present in a Worker's layer means on. */
export class Retries extends Context.Service<Retries, {
  readonly budget: (upstream: string) => RetryBudget
}>()("meshwork/layers/resilience/Retries") {
  /**
   * A typed client's policy (`ServiceClient.make(api, binding, { policy })`):
   * its idempotent calls to `upstream` retried as a route's are, when the
   * calling Worker's layer has `Retries`. A deadline that passes is a
   * transport error, like an attempt's timeout.
   */
  static readonly policy = (upstream: string, retry?: RetrySettings): ServiceClient.Policy => (attempt, request) =>
    withRetries({
      upstream,
      method: request.method,
      hasIdempotencyKey: request.headers["idempotency-key"] !== undefined,
      timeoutMs: undefined,
      retry,
      attempt,
      answer: clientResponse,
      unreachable: isTransportError
    }).pipe(Effect.mapError((error) =>
      error instanceof Problem.GatewayTimeout
        ? new HttpClientError.HttpClientError({
          reason: new HttpClientError.TransportError({ request, description: error.detail ?? "timed out" })
        })
        : error
    ))

  static readonly layer = Layer.sync(Retries, () => {
    const budgets = new Map<string, RetryBudget>()
    return Retries.of({
      budget: (upstream) => {
        let budget = budgets.get(upstream)
        if (budget === undefined) budgets.set(upstream, budget = new RetryBudget())
        return budget
      }
    })
  })
}

/**
 * The delay before retry number `retry` (0 for the first): exponential from
 * `baseDelayMs`, capped at `maxDelayMs`, with full jitter (uniform from 0).
 */
const jitteredDelay = (settings: { readonly baseDelayMs: number; readonly maxDelayMs: number }, retry: number) =>
  Effect.map(Random.next, (random) => random * Math.min(settings.maxDelayMs, settings.baseDelayMs * 2 ** retry))

/** What an upstream answered, as far as retrying is concerned. */
export interface Answer<A> {
  readonly status: (answer: A) => number
  readonly retryAfter: (answer: A) => string | null | undefined
  /** Frees an answer that is dropped for a retry (its body). */
  readonly release: (answer: A) => void
}

/** Answers that are Web Responses (the proxies). */
export const webResponse: Answer<Response> = {
  status: (response) => response.status,
  retryAfter: (response) => response.headers.get("retry-after"),
  release: (response) => void response.body?.cancel()
}

/**
 * One upstream call with the route's timeout (it aborts the fetch), retried
 * by the route's policy when `Retries` is in the Worker's layer (or given as
 * `retries`). `unreachable` tells which failures mean the upstream could not
 * be reached.
 *
 * Written as a plain loop rather than `Effect.retry` over a schedule under an
 * outer deadline race: each attempt's own timeout is cut to what is left of
 * the deadline, so the call that succeeds at once (nearly every call) pays
 * one timeout and nothing else.
 */
export const withRetries = <A, E, R>(options: {
  readonly upstream: string
  readonly method: string
  readonly hasIdempotencyKey: boolean
  readonly timeoutMs: number | undefined
  readonly retry: RetrySettings | undefined
  readonly attempt: Effect.Effect<A, E, R>
  readonly answer: Answer<A>
  readonly unreachable: (error: E) => boolean
  /** The Worker's `Retries`, when the caller has already looked it up; otherwise it is read from the context. */
  readonly retries?: Retries["Service"] | undefined
  /**
   * `attempt` bounded by a timeout of its own making (a fetch's signal aborted by a timer), failing
   * with `timedOut()` when it passes: cheaper than the Effect timeout used without it, which races
   * the attempt against a sleep in two fibers. It must cover all of the attempt's waiting.
   */
  readonly attemptWithin?: ((millis: number, timedOut: () => Problem.GatewayTimeout) => Effect.Effect<A, E | Problem.GatewayTimeout, R>) | undefined
}): Effect.Effect<A, E | Problem.GatewayTimeout, R> => {
  const { answer, upstream, attempt, attemptWithin } = options
  const within = (millis: number, what: string): Effect.Effect<A, E | Problem.GatewayTimeout, R> => {
    const timedOut = () => new Problem.GatewayTimeout({ detail: `${upstream} did not answer within ${what}` })
    return attemptWithin !== undefined
      ? attemptWithin(Math.max(0, millis), timedOut)
      : Effect.timeoutOrElse(attempt, { duration: Duration.millis(Math.max(0, millis)), orElse: () => Effect.fail(timedOut()) })
  }
  const timeout = options.timeoutMs
  const once = timeout === undefined ? attempt : within(timeout, `${timeout} ms`)
  const retryable = (error: E | Problem.GatewayTimeout): boolean =>
    error instanceof Problem.GatewayTimeout || options.unreachable(error as E)
  /**
   * `attempt`, and after `afterMs` without an answer a second one beside it
   * when `mayHedge()` (the budget) allows: the first good answer (not a
   * retryable status) wins and the other is cancelled; when neither is good,
   * a retryable answer is kept over a failure, and what is dropped is released.
   */
  const hedged = (
    attempt: Effect.Effect<A, E | Problem.GatewayTimeout, R>,
    afterMs: number,
    mayHedge: () => boolean
  ): Effect.Effect<A, E | Problem.GatewayTimeout, R> =>
    Effect.suspend(() => {
      const exits: Array<Exit.Exit<A, E | Problem.GatewayTimeout>> = []
      const good = (exit: Exit.Exit<A, E | Problem.GatewayTimeout>) =>
        Exit.isSuccess(exit) && !retryableStatuses.has(answer.status(exit.value))
      const settle = Effect.flatMap(Effect.exit(attempt), (exit) => {
        exits.push(exit)
        return good(exit) ? Effect.succeed(exit) : Effect.fail(undefined)
      })
      const second = Effect.andThen(
        Effect.sleep(Duration.millis(afterMs)),
        Effect.suspend(() =>
          mayHedge()
            ? Effect.andThen(Telemetry.event("hedge", { "meshwork.retry.upstream": upstream, "meshwork.retry.hedge_after_ms": afterMs }), settle)
            : Effect.fail(undefined)
        )
      )
      return settle.pipe(
        Effect.race(second),
        Effect.catch(() => Effect.succeed(undefined)),
        Effect.flatMap((won) => {
          const chosen = won ?? exits.find(Exit.isSuccess) ?? exits[0]!
          for (const exit of exits) if (exit !== chosen && Exit.isSuccess(exit)) answer.release(exit.value)
          return chosen
        })
      )
    })
  const run = (retries: Retries["Service"] | undefined): Effect.Effect<A, E | Problem.GatewayTimeout, R> => {
    if (retries === undefined || !isIdempotent(options.method, options.hasIdempotencyKey)) return once
    const settings = { ...defaults, ...options.retry }
    const budget = retries.budget(upstream)
    return Effect.withFiber((fiber) => {
      const clock = fiber.getRef(Clock.Clock)
      const started = clock.currentTimeMillisUnsafe()
      budget.request(started)
      const recorder = Context.getOrUndefined(fiber.context, LiveStats)?.recorder
      const deadline = started + settings.deadlineMs
      // The latest retryable answer: what the caller gets if retrying runs out.
      let latest: A | undefined
      const settle = (exit: Exit.Exit<A, E | Problem.GatewayTimeout>): Effect.Effect<A, E | Problem.GatewayTimeout> => {
        if (latest === undefined) return exit
        if (Exit.isSuccess(exit) && exit.value === latest) return exit
        if (Exit.isSuccess(exit)) answer.release(latest)
        return Exit.succeed(latest)
      }
      // A hedge is one of the attempts, and takes a retry from the budget.
      const hedgeAfter = settings.hedgeAfterMs !== undefined && settings.attempts >= 2 && hedgeableMethods.has(options.method.toUpperCase())
        ? settings.hedgeAfterMs
        : undefined
      let hedges = 0
      // Made only for a call that may hedge: every other call pays nothing for hedging.
      const mayHedge = hedgeAfter === undefined ? undefined : () => {
        if (!takeRetry(budget, recorder, upstream, clock.currentTimeMillisUnsafe())) return false
        hedges = 1
        return true
      }
      const loop = (retry: number): Effect.Effect<A, E | Problem.GatewayTimeout, R> => {
        const left = deadline - clock.currentTimeMillisUnsafe()
        const limited = timeout === undefined || left < timeout ? within(left, "the deadline") : within(timeout, `${timeout} ms`)
        const first = retry === 0 && hedgeAfter !== undefined && mayHedge !== undefined && hedgeAfter < left
          ? hedged(limited, hedgeAfter, mayHedge)
          : limited
        return Effect.flatMap(Effect.exit(first), (exit) => {
          let reason: string
          let retryAfter: string | null | undefined
          if (Exit.isSuccess(exit)) {
            const status = answer.status(exit.value)
            if (!retryableStatuses.has(status)) {
              if (latest !== undefined) answer.release(latest)
              latest = undefined
              return exit
            }
            if (latest !== undefined && latest !== exit.value) answer.release(latest)
            latest = exit.value
            reason = String(status)
            retryAfter = answer.retryAfter(exit.value)
          } else {
            const error = Cause.findErrorOption(exit.cause)
            if (error._tag === "None" || !retryable(error.value)) return settle(exit)
            reason = Telemetry.errorTag(error.value) ?? "error"
          }
          // The attempts used so far, less one: the first, and its hedge if one was sent.
          const used = retry === 0 ? hedges : retry
          if (used >= settings.attempts - 1) return settle(exit)
          // The delay is drawn before the retry is decided: none past the deadline (delay
          // included) or the budget, and only a retry that will run takes from the budget.
          return Effect.flatMap(jitteredDelay(settings, used), (jittered) => {
            const now = clock.currentTimeMillisUnsafe()
            const asked = parseRetryAfter(retryAfter, now)
            const delay = Math.max(jittered, asked === undefined ? 0 : Duration.toMillis(asked))
            if (now + delay >= deadline || !takeRetry(budget, recorder, upstream, now)) return settle(exit)
            return Telemetry.event("retry", {
              "meshwork.retry.upstream": upstream,
              "meshwork.retry.attempt": used + 2,
              "meshwork.retry.delay_ms": Math.round(delay),
              "meshwork.retry.reason": reason
            }).pipe(Effect.andThen(Effect.sleep(Duration.millis(delay))), Effect.andThen(loop(used + 1)))
          })
        })
      }
      // An interrupted call drops what it kept.
      return Effect.onInterrupt(loop(0), () => Effect.sync(() => latest !== undefined && answer.release(latest)))
    })
  }
  return options.retries !== undefined ? run(options.retries) : Effect.flatMap(Effect.serviceOption(Retries), (retries) => run(Option.getOrUndefined(retries)))
}

/** Takes a retry from `budget`, counting it, or its refusal, in the Worker's live figures (when it keeps them). */
const takeRetry = (budget: RetryBudget, recorder: Recorder | undefined, upstream: string, now: number): boolean => {
  const allowed = budget.tryRetry(now)
  recorder?.count(allowed ? "retries" : "retry.refused", upstream)
  return allowed
}

/** Answers of a typed client (`effect/http` responses); their bodies are released by Effect's client. */
const clientResponse: Answer<HttpClientResponse.HttpClientResponse> = {
  status: (response) => response.status,
  retryAfter: (response) => response.headers["retry-after"],
  release: () => {}
}

const isTransportError = (error: HttpClientError.HttpClientError) => error.reason._tag === "TransportError"
