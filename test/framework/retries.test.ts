/**
 * Retries and timeouts on upstream calls, against a real upstream Worker
 * (FLAKY) on virtual time: the backoff sleeps on TestClock while the calls
 * themselves are real service-binding requests.
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Clock, Effect, Fiber, Random, Tracer } from "effect"
import { TestClock } from "effect/testing"
import * as Proxy from "../../src/layers/routing/Proxy.ts"
import { Retries, RetryBudget, type RetrySettings } from "../../src/layers/resilience/Retries.ts"
import * as Editable from "../../src/runtime/Editable.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import * as ServiceClient from "../../src/runtime/ServiceClient.ts"
import { envLayer } from "../../src/runtime/Worker.ts"

const key = () => crypto.randomUUID()

const calls = (k: string) =>
  Effect.promise(async () => (await (await env.FLAKY.fetch(`http://flaky/count?key=${k}`)).json()) as { calls: number; aborted: boolean })

/** Runs `effect` while advancing virtual time in `stepMs` steps, letting real I/O progress in between. */
const drive = <A, E>(effect: Effect.Effect<A, E>, stepMs = 5) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(effect)
    for (let i = 0; i < 20_000 && fiber.pollUnsafe() === undefined; i++) {
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 0)))
      yield* TestClock.adjust(stepMs)
    }
    return yield* Fiber.join(fiber)
  })

const call = (
  path: string,
  options: { method?: string; headers?: Record<string, string>; retry?: RetrySettings; timeoutMs?: number; service?: string } = {}
) =>
  Effect.flatMap(
    Proxy.forward(
      { service: options.service ?? "flaky", fetcher: env.FLAKY, retry: options.retry, timeoutMs: options.timeoutMs },
      new Request(`http://flaky${path}`, { method: options.method ?? "GET", headers: options.headers ?? {} })
    ),
    (response) => Effect.promise(async () => ({ status: response.status, body: await response.text() }))
  )

it.effect("retries an idempotent request on 503 up to its attempts, then answers the last 503", () =>
  Effect.gen(function*() {
    const k = key()
    const answer = yield* drive(call(`/status/503?key=${k}`, { retry: { attempts: 3 } }))
    expect(answer.status).toBe(503)
    expect((yield* calls(k)).calls).toBe(3)
  }).pipe(Effect.provide(Retries.layer)))

it.effect.each([["GET"], ["HEAD"], ["OPTIONS"], ["PUT"], ["DELETE"]])("retries %s", ([method]) =>
  Effect.gen(function*() {
    const k = key()
    yield* drive(call(`/status/502?key=${k}`, { method: method!, retry: { attempts: 2 } }))
    expect((yield* calls(k)).calls).toBe(2)
  }).pipe(Effect.provide(Retries.layer)))

it.effect("sends each attempt with the trace context of its own client span, on a request made for the hop or a caller's", () =>
  Effect.gen(function*() {
    const spans: Array<Tracer.Span> = []
    const tracer = Tracer.make({
      span(options) {
        const span = new Tracer.NativeSpan(options)
        spans.push(span)
        return span
      }
    })
    // A request this isolate made for the hop (its headers set in place), and one it was given (copied).
    for (const made of [true, false]) {
      spans.length = 0
      const k = key()
      const request = new Request(`http://flaky/status/503?key=${k}`)
      const forwarded = Proxy.forward({ service: "flaky", fetcher: env.FLAKY, retry: { attempts: 3 } }, made ? Editable.request(request) : request)
      yield* drive(Effect.provideService(Effect.withSpan(forwarded, "caller", { captureStackTrace: false }), Tracer.Tracer, tracer))
      const clients = spans.filter((span) => span.kind === "client")
      expect(clients).toHaveLength(3)
      const received = yield* Effect.promise(async () => await (await env.FLAKY.fetch(`http://flaky/traceparents?key=${k}`)).json())
      expect(received).toEqual(clients.map((span) => `00-${span.traceId}-${span.spanId}-01`))
    }
  }).pipe(Effect.provide(Retries.layer)))

it.effect("never retries a POST without an Idempotency-Key, and retries one with it", () =>
  Effect.gen(function*() {
    const bare = key()
    expect((yield* drive(call(`/status/503?key=${bare}`, { method: "POST", retry: { attempts: 3 } }))).status).toBe(503)
    expect((yield* calls(bare)).calls).toBe(1)
    const keyed = key()
    yield* drive(call(`/status/503?key=${keyed}`, {
      method: "POST",
      headers: { "idempotency-key": "order-42" },
      retry: { attempts: 3 }
    }))
    expect((yield* calls(keyed)).calls).toBe(3)
  }).pipe(Effect.provide(Retries.layer)))

it.effect.each([[500], [501], [429], [404], [400]])("never retries a %s", ([status]) =>
  Effect.gen(function*() {
    const k = key()
    expect((yield* drive(call(`/status/${status}?key=${k}`, { retry: { attempts: 3 } }))).status).toBe(status)
    expect((yield* calls(k)).calls).toBe(1)
  }).pipe(Effect.provide(Retries.layer)))

it.effect("waits at least what Retry-After asks", () =>
  Effect.gen(function*() {
    const k = key()
    const started = yield* Clock.currentTimeMillis
    yield* drive(call(`/status/503?retryAfter=2&key=${k}`, { retry: { attempts: 3, baseDelayMs: 10, deadlineMs: 10_000 } }), 50)
    expect((yield* calls(k)).calls).toBe(3)
    expect((yield* Clock.currentTimeMillis) - started).toBeGreaterThanOrEqual(4_000)
  }).pipe(Effect.provide(Retries.layer)))

it.effect("keeps every retry inside the deadline", () =>
  Effect.gen(function*() {
    const k = key()
    const started = yield* Clock.currentTimeMillis
    // Up to 10 attempts, each delay drawn from [0, 500] ms, but a 1 s deadline.
    const answer = yield* drive(
      call(`/status/503?key=${k}`, { retry: { attempts: 10, baseDelayMs: 500, maxDelayMs: 500, deadlineMs: 1_000 } })
    )
    expect((yield* Clock.currentTimeMillis) - started).toBeLessThanOrEqual(1_000 + 5)
    expect(answer.status).toBe(503)
    const made = (yield* calls(k)).calls
    expect(made).toBeGreaterThan(1)
    expect(made).toBeLessThan(10)
    // The seeded generator fixes the delays, so this holds on every run, not just most.
  }).pipe(Random.withSeed("deadline"), Effect.provide(Retries.layer)))

it.effect("cancels a hung attempt at the deadline, aborting its fetch", () =>
  Effect.gen(function*() {
    const k = key()
    const refused = yield* Effect.flip(drive(call(`/hang?key=${k}`, { retry: { attempts: 3, deadlineMs: 500 } })))
    expect(refused._tag).toBe("GatewayTimeout")
    yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
    expect(yield* calls(k)).toEqual({ calls: 1, aborted: true })
  }).pipe(Effect.provide(Retries.layer)))

it.effect("a route timeout cancels the upstream call, with or without retries", () =>
  Effect.gen(function*() {
    const k = key()
    const refused = yield* Effect.flip(drive(call(`/hang?key=${k}`, { timeoutMs: 100 })))
    expect(refused._tag).toBe("GatewayTimeout")
    yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
    expect(yield* calls(k)).toEqual({ calls: 1, aborted: true })
  }))

// On the live clock (as deployed) the proxy times an attempt out by its fetch's own signal, not by
// Effect's timeout: the same answers, on real time.
it.live("on the live clock, a route timeout and a deadline abort the upstream call by the fetch's own signal", () =>
  Effect.gen(function*() {
    const hung = key()
    const refused = yield* Effect.flip(call(`/hang?key=${hung}`, { timeoutMs: 100 }))
    expect(refused).toBeInstanceOf(Problem.GatewayTimeout)
    expect(refused.detail).toBe("flaky did not answer within 100 ms")
    yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
    expect(yield* calls(hung)).toEqual({ calls: 1, aborted: true })

    const late = key()
    const started = Date.now()
    const past = yield* Effect.flip(
      call(`/hang?key=${late}`, { retry: { attempts: 3, deadlineMs: 300 }, timeoutMs: 5_000 }).pipe(Effect.provide(Retries.layer))
    )
    expect(past).toBeInstanceOf(Problem.GatewayTimeout)
    expect(past.detail).toBe("flaky did not answer within the deadline")
    expect(Date.now() - started).toBeLessThan(3_000)
    yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
    // On real time a retry may still start in the last milliseconds before the deadline, and is aborted at it.
    expect(yield* calls(late)).toMatchObject({ aborted: true })

    // An answer in time is the answer, and an unreachable upstream is still 502, not a timeout.
    expect((yield* call(`/status/200?key=${key()}`, { timeoutMs: 1_000 })).status).toBe(200)
    const gone = yield* Effect.flip(Proxy.forward(
      { service: "gone", fetcher: { fetch: () => Promise.reject(new Error("connection refused")) } as never, timeoutMs: 1_000 },
      new Request("http://gone/x")
    ))
    expect(gone).toBeInstanceOf(Problem.BadGateway)

    // A fetcher of the user's own that ignores its signal still times out on time.
    const deaf = yield* Effect.flip(Proxy.forward(
      { service: "deaf", fetcher: { fetch: () => new Promise<Response>(() => undefined) } as never, timeoutMs: 100 },
      new Request("http://deaf/x")
    ))
    expect(deaf).toBeInstanceOf(Problem.GatewayTimeout)
    expect(deaf.detail).toBe("deaf did not answer within 100 ms")
  }))

it.effect("under a 100%-failing upstream the budget caps retries at 20% of requests (at least 10/s)", () =>
  Effect.gen(function*() {
    const k = key()
    const requests = 600
    yield* drive(
      Effect.forEach(
        Array.from({ length: requests }),
        () => call(`/status/503?key=${k}`, { service: "budgeted", retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 1 } }),
        { concurrency: 20, discard: true }
      ),
      1
    )
    // Without a budget: 1,200 retries. With it, never more than 20% of the 600
    // requests (120, more than 10/s over the 10 s window); fewer while the
    // requests are still arriving.
    const retries = (yield* calls(k)).calls - requests
    expect(retries).toBeGreaterThan(0)
    expect(retries).toBeLessThanOrEqual(120)
  }).pipe(Effect.provide(Retries.layer)))

it.effect("hedges a slow GET: a second attempt after hedgeAfterMs, the first answer wins, the slow one is aborted", () =>
  Effect.gen(function*() {
    const k = key()
    const answer = yield* drive(call(`/hang-first?key=${k}`, { retry: { hedgeAfterMs: 100 }, timeoutMs: 5_000 }))
    expect(answer).toEqual({ status: 200, body: "GET 200" })
    expect(yield* calls(k)).toEqual({ calls: 2, aborted: true })
  }).pipe(Effect.provide(Retries.layer)))

it.live("on the live clock, a hedge's slow first attempt is aborted by its fetch's own signal when the second answers", () =>
  Effect.gen(function*() {
    const k = key()
    const answer = yield* call(`/hang-first?key=${k}`, { retry: { hedgeAfterMs: 100 }, timeoutMs: 5_000 }).pipe(Effect.provide(Retries.layer))
    expect(answer).toEqual({ status: 200, body: "GET 200" })
    yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
    expect(yield* calls(k)).toEqual({ calls: 2, aborted: true })
  }))

it.effect("never hedges a write, nor beyond the retry budget", () =>
  Effect.gen(function*() {
    // A PUT may be retried, but never sent twice at once: it waits out its timeout.
    const put = key()
    const timedOut = yield* Effect.flip(drive(call(`/hang-first?key=${put}`, { method: "PUT", retry: { hedgeAfterMs: 100, attempts: 1 }, timeoutMs: 1_000 })))
    expect(timedOut).toBeInstanceOf(Problem.GatewayTimeout)
    expect((yield* calls(put)).calls).toBe(1)
    // With no retry left in the budget, no hedge either.
    const spent = key()
    const broke = yield* Effect.flip(drive(call(`/hang-first?key=${spent}`, { retry: { hedgeAfterMs: 100 }, timeoutMs: 1_000 }))).pipe(
      Effect.provideService(Retries, Retries.of({ budget: () => new RetryBudget(0, 0) }))
    )
    expect(broke).toBeInstanceOf(Problem.GatewayTimeout)
    expect((yield* calls(spent)).calls).toBe(1)
  }).pipe(Effect.provide(Retries.layer)))

it.effect("without Retries in the layer, a 503 is answered as is", () =>
  Effect.gen(function*() {
    const k = key()
    expect((yield* drive(call(`/status/503?key=${k}`, { retry: { attempts: 3 } }))).status).toBe(503)
    expect((yield* calls(k)).calls).toBe(1)
  }))

it.effect("typed clients retry with the same policy (503, then the final answer)", () =>
  Effect.gen(function*() {
    const k = key()
    const client = yield* ServiceClient.httpClient("FLAKY", { policy: Retries.policy("flaky", { attempts: 3 }) })
    const response = yield* drive(client.get(`http://flaky/status/503?key=${k}`))
    expect(response.status).toBe(503)
    expect((yield* calls(k)).calls).toBe(3)
    const post = key()
    yield* drive(client.post(`http://flaky/status/503?key=${post}`))
    expect((yield* calls(post)).calls).toBe(1)
  }).pipe(Effect.provide(Retries.layer), Effect.provide(envLayer(env))))

it("counts the budget exactly: 20% of requests, at least 10 per second, over a sliding 10 s", () => {
  const budget = new RetryBudget()
  for (let i = 0; i < 600; i++) budget.request(1_000)
  let granted = 0
  for (let i = 0; i < 500; i++) if (budget.tryRetry(1_000)) granted++
  expect(granted).toBe(120)

  const quiet = new RetryBudget()
  for (let i = 0; i < 10; i++) quiet.request(1_000)
  let floor = 0
  for (let i = 0; i < 500; i++) if (quiet.tryRetry(1_000)) floor++
  expect(floor).toBe(100)
  // Ten seconds on, the window has moved past all of it.
  let later = 0
  for (let i = 0; i < 500; i++) if (quiet.tryRetry(11_500)) later++
  expect(later).toBe(100)
})
