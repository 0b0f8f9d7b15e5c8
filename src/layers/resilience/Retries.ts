/**
 * Retries and timeouts for calls to upstream Workers.
 *
 * - Only idempotent requests are retried (GET, HEAD, OPTIONS, PUT, DELETE, or
 *   any request carrying an `Idempotency-Key`), and only when the upstream
 *   answered 502, 503 or 504, could not be reached, or did not answer within
 *   the route's timeout. Any other answer, 4xx or 5xx, is final.
 * - Delays grow exponentially with full jitter, capped, at least what a
 *   `Retry-After` asks for: an Effect `Schedule` (`Schedule.fromStep`) that
 *   `Effect.retry` follows.
 *   Every attempt stays inside the overall deadline: a retry whose delay
 *   would end past it is not made, and the attempt running at the deadline is
 *   cancelled.
 * - A retry budget per upstream: over the last 10 s, retries may be at most
 *   20% of requests, or 10 per second, whichever allows more. A failing
 *   upstream then sees at most 1.2x its normal traffic, not 3x.
 * - The route's timeout cancels the attempt: its fetch is aborted.
 *
 * Settings come from each route of the `ROUTES` table (`timeoutMs`, `retry`);
 * add `Retries.layer` to a proxy Worker to turn retries on.
 */
import { Cause, Clock, Context, Duration, Effect, Layer, Random, Schedule, Schema } from "effect"
import { HttpClientError, type HttpClientResponse } from "effect/http"
import * as Problem from "../../runtime/Problem.ts"
import type * as ServiceClient from "../../runtime/ServiceClient.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

const Millis = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600_000 }))

export const RetrySettings = Schema.Struct({
  /** Attempts in all, the first included (default 3). */
  attempts: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10 }))),
  /** The first retry's delay before jitter (default 50 ms); each next one doubles. */
  baseDelayMs: Schema.optionalKey(Millis),
  /** The largest delay before jitter (default 1 s). */
  maxDelayMs: Schema.optionalKey(Millis),
  /** Every attempt ends by then, counted from the first (default 5 s). */
  deadlineMs: Schema.optionalKey(Millis)
})
export type RetrySettings = typeof RetrySettings.Type

export const defaults = { attempts: 3, baseDelayMs: 50, maxDelayMs: 1_000, deadlineMs: 5_000 } as const

const idempotentMethods = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])

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

/** An upstream answer worth retrying, held as a failure so `Effect.retry` sees it. */
class RetryableAnswer<A> {
  readonly _tag = "RetryableAnswer"
  constructor(readonly answer: A, readonly retryAfter: string | null | undefined) {}
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
const jitteredDelay = (settings: Required<RetrySettings>, retry: number) =>
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
 * by the route's policy when `Retries` is in the Worker's layer.
 * `unreachable` tells which failures mean the upstream could not be reached.
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
}): Effect.Effect<A, E | Problem.GatewayTimeout, R> => {
  const { answer, upstream } = options
  const timeout = options.timeoutMs
  const once = timeout === undefined
    ? options.attempt
    : Effect.timeoutOrElse(options.attempt, {
      duration: Duration.millis(timeout),
      orElse: () => Effect.fail(new Problem.GatewayTimeout({ detail: `${upstream} did not answer within ${timeout} ms` }))
    })
  const retryable = (error: unknown): boolean =>
    error instanceof RetryableAnswer || error instanceof Problem.GatewayTimeout || options.unreachable(error as E)
  return Effect.flatMap(Effect.serviceOption(Retries), (retries) => {
    if (retries._tag === "None" || !isIdempotent(options.method, options.hasIdempotencyKey)) return once
    const settings = { ...defaults, ...options.retry }
    const budget = retries.value.budget(upstream)
    return Effect.gen(function*() {
      const started = yield* Clock.currentTimeMillis
      budget.request(started)
      const deadline = started + settings.deadlineMs
      // The latest retryable answer: what the caller gets if retrying runs out.
      let latest: A | undefined
      const keep = (next: A) => {
        if (latest !== undefined && latest !== next) answer.release(latest)
        latest = next
      }
      // The retry schedule decides each retry, and draws its delay, before it
      // is made: none past the attempts, the budget or the deadline (its delay
      // included), and only a retry that will run takes from the budget.
      const schedule = Schedule.fromStep(Effect.sync(() => {
        let retries = 0
        return (now: number, error: unknown) => {
          if (!retryable(error) || retries >= settings.attempts - 1) return Cause.done(retries)
          return Effect.flatMap(jitteredDelay(settings, retries), (jittered) => {
            const asked = error instanceof RetryableAnswer ? parseRetryAfter(error.retryAfter, now) : undefined
            const delay = Math.max(jittered, asked === undefined ? 0 : Duration.toMillis(asked))
            if (now + delay >= deadline || !budget.tryRetry(now)) return Cause.done(retries)
            retries++
            return Effect.as(
              Telemetry.event("retry", {
                "meshwork.retry.upstream": upstream,
                "meshwork.retry.attempt": retries + 1,
                "meshwork.retry.delay_ms": Math.round(delay),
                "meshwork.retry.reason": error instanceof RetryableAnswer ? String(answer.status(error.answer as A)) : Telemetry.errorTag(error) ?? "error"
              }),
              [retries, Duration.millis(delay)] as [number, Duration.Duration]
            )
          })
        }
      }))
      return yield* once.pipe(
        Effect.flatMap((value) =>
          retryableStatuses.has(answer.status(value))
            ? Effect.fail(new RetryableAnswer(value, answer.retryAfter(value)))
            : Effect.succeed(value)
        ),
        Effect.tapError((error) => Effect.sync(() => error instanceof RetryableAnswer && keep(error.answer as A))),
        Effect.retry(schedule),
        Effect.catchIf(
          (error): error is RetryableAnswer<A> => error instanceof RetryableAnswer,
          (error) => Effect.succeed(error.answer)
        ),
        Effect.timeoutOrElse({
          duration: Duration.millis(settings.deadlineMs),
          orElse: () =>
            latest !== undefined
              ? Effect.succeed(latest)
              : Effect.fail(new Problem.GatewayTimeout({ detail: `${upstream} did not answer within the deadline` }))
        }),
        // A kept answer that is not the one returned is dropped: release its body.
        Effect.onExit((exit) =>
          Effect.sync(() => {
            if (latest !== undefined && !(exit._tag === "Success" && exit.value === latest)) answer.release(latest)
          })
        )
      )
    })
  })
}

/** Answers of a typed client (`effect/http` responses); their bodies are released by Effect's client. */
const clientResponse: Answer<HttpClientResponse.HttpClientResponse> = {
  status: (response) => response.status,
  retryAfter: (response) => response.headers["retry-after"],
  release: () => {}
}

const isTransportError = (error: HttpClientError.HttpClientError) => error.reason._tag === "TransportError"
