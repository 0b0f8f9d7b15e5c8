/**
 * Forwarding a request to an upstream Worker over its service binding, the
 * way an HTTP proxy must (RFC 9110 section 7.6.1): hop-by-hop headers, and every
 * header the `Connection` header names, are dropped in both directions; the
 * path and query reach the upstream exactly as they were routed. Each
 * attempt is a client span whose W3C trace context the upstream continues.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { readBody, readLimited } from "../../runtime/Http.ts"
import * as Problem from "../../runtime/Problem.ts"
import { type BreakerSettings, CircuitBreakers } from "../resilience/CircuitBreakers.ts"
import { type BulkheadSettings, Bulkheads } from "../resilience/Bulkheads.ts"
import * as Faults from "../resilience/FaultInjection.ts"
import type { FaultSettings } from "../resilience/FaultInjection.ts"
import * as Retry from "../resilience/Retries.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as Bindings from "../../runtime/Bindings.ts"
import * as Editable from "../../runtime/Editable.ts"
import { pathOf } from "../../runtime/Url.ts"
import { LiveStats } from "../observability/LiveStats.ts"
import * as Traffic from "../release/TrafficManager.ts"
import * as Identity from "../security/Identity.ts"
import * as Health from "./HealthReport.ts"
import { RoutingTable, type Upstream } from "./RoutingTable.ts"

const hopByHop = [
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
]

/**
 * Header names to drop: the fixed hop-by-hop set plus those the `Connection`
 * header lists. One `has` per fixed name: iterating a `Headers` in workerd
 * builds the sorted list of every header with its value first, which cost
 * three times the nine lookups for a request with seven headers (measured in
 * workerd, 20,000 calls each).
 */
export const hopByHopHeaders = (headers: Headers): ReadonlyArray<string> => {
  const dropped: Array<string> = []
  for (const name of hopByHop) {
    if (!headers.has(name)) continue
    dropped.push(name)
    if (name !== "connection") continue
    for (const token of headers.get("connection")!.split(",")) {
      const listed = token.trim().toLowerCase()
      if (listed !== "") dropped.push(listed)
    }
  }
  return dropped
}

/** `headers` without hop-by-hop headers; the same object when there is nothing to drop. */
export const stripHopByHop = (headers: Headers): Headers => {
  const dropped = hopByHopHeaders(headers)
  if (dropped.length === 0) return headers
  const copy = new Headers(headers)
  for (const name of dropped) copy.delete(name)
  return copy
}

/**
 * A path that could be read two ways: empty segments (`//`), dot segments
 * (`.`/`..`, also percent-encoded), encoded separators (`%2F`, `%5C`), a raw
 * backslash or an encoded NUL. Upstream routers may collapse or decode these
 * differently from us, so the mesh refuses them instead of guessing.
 */
const ambiguousPath = /\/\/|%2f|%5c|\\|%00|(?:^|\/)(?:\.|%2e){1,2}(?:\/|$)/i

const ambiguous = () => new Problem.BadRequest({ detail: "The path has empty, dot or encoded-separator segments" })

export const checkPath = (pathname: string): Effect.Effect<void, Problem.BadRequest> =>
  ambiguousPath.test(pathname) ? Effect.fail(ambiguous()) : Effect.void

/** Largest request body a proxy forwards (1 MiB); services set their own, smaller, limits. */
export const defaultMaxBodyBytes = 1024 * 1024

/**
 * The request to send upstream, as a function that makes it (once per
 * attempt, so a retry can send it again): same URL and method, hop-by-hop
 * headers dropped, the trace context of `trace` when given, the body read
 * first (at most `maxBodyBytes`, else 413), and `assertion` (this Worker's
 * mesh identity for the upstream) when given.
 * Buffering matters on Workers: an upstream may answer before reading a
 * streamed body, and a stream still being pumped after our response is sent
 * fails.
 */
export const upstreamRequest = (
  request: Request,
  maxBodyBytes: number = defaultMaxBodyBytes,
  assertion?: string
): Effect.Effect<(trace?: Telemetry.Carrier) => Request, Problem.PayloadTooLarge | Problem.BadRequest> => {
  if (request.body === null && Editable.takeRequest(request)) {
    // A request made for this hop (the gateway's, with the caller's identity): its headers are set in place,
    // each attempt's trace context too (a bodyless request can be sent again).
    const headers = request.headers
    for (const name of hopByHopHeaders(headers)) headers.delete(name)
    if (assertion !== undefined) headers.set(Identity.header, assertion)
    return Effect.succeed((trace) => {
      if (trace !== undefined) Telemetry.setCarrier(headers, trace)
      return request
    })
  }
  let headers = stripHopByHop(request.headers)
  if (assertion !== undefined) {
    if (headers === request.headers) headers = new Headers(headers)
    headers.set(Identity.header, assertion)
  }
  // Headers this hop made (`headers` is not the request's own) take each attempt's trace context in place.
  const carrying = (trace: Telemetry.Carrier | undefined) =>
    trace === undefined ? headers : headers === request.headers ? Telemetry.withCarrier(headers, trace) : Telemetry.setCarrier(headers, trace)
  if (request.body === null) {
    return Effect.succeed((trace) =>
      trace === undefined && headers === request.headers ? request : new Request(request, { headers: carrying(trace) })
    )
  }
  // One read: a declared length within the limit in one call, a streamed body up to the limit.
  return Effect.map(readBody(request, maxBodyBytes), (body) => (trace) => new Request(request, { headers: carrying(trace), body }))
}

/** The response to send downstream, hop-by-hop headers dropped. */
export const downstreamResponse = (response: Response): Response => {
  const dropped = hopByHopHeaders(response.headers)
  if (dropped.length === 0) return response
  const copy = Editable.response(response)
  for (const name of dropped) copy.headers.delete(name)
  return copy
}

/** Where a request is forwarded, and the route's resilience settings. */
export interface Target {
  readonly service: string
  readonly fetcher: Fetcher
  readonly timeoutMs?: number | undefined
  readonly retry?: Retry.RetrySettings | undefined
  readonly breaker?: BreakerSettings | undefined
  readonly faults?: FaultSettings | undefined
  readonly bulkhead?: BulkheadSettings | undefined
}

/**
 * Sends `request` to `target` (a service binding) and returns its response,
 * through the route's circuit breaker, within its timeout and retry policy
 * (each only when its Layer is in the Worker's layer). A thrown fetch (the
 * upstream is missing or crashed) is a 502 naming the service.
 */
export const forward = (
  target: Target,
  request: Request
): Effect.Effect<
  Response,
  | Problem.BadGateway
  | Problem.GatewayTimeout
  | Problem.PayloadTooLarge
  | Problem.BadRequest
  | Problem.ServiceUnavailable
> =>
  Effect.flatMap(assertionFor(target, request), (assertion) => Effect.flatMap(upstreamRequest(request, defaultMaxBodyBytes, assertion), (outgoing) =>
    Effect.withFiber((fiber) => {
      // Every optional policy is read from the context once, here, not per step.
      const context = fiber.context
      const tracing = Telemetry.isTracing(fiber)
      const unreachable = () =>
        new Problem.BadGateway({ service: target.service, detail: `The ${target.service} service could not be reached` })
      const send = (trace: Telemetry.Carrier | undefined) =>
        Effect.map(
          Effect.tryPromise({ try: (signal) => target.fetcher.fetch(outgoing(trace), { signal }), catch: unreachable }),
          downstreamResponse
        )
      // Faults stand in for the call inside its span, so a trace shows the injected answer.
      const faults = Context.getOption(context, Faults.FaultInjection)
      const faulty = faults._tag === "Some" && faults.value.enabled && target.faults !== undefined
      const injected = faulty
        ? (trace: Telemetry.Carrier | undefined) => Faults.inject(target.service, target.faults, send(trace))
        : send
      // With tracing on, each attempt is a client span whose context the upstream continues.
      const traced = <E>(sending: (trace: Telemetry.Carrier | undefined) => Effect.Effect<Response, E>): Effect.Effect<Response, E> =>
        tracing
          ? Effect.flatMap(Telemetry.activeCarrier, sending).pipe(
            Effect.tap((response) => Effect.annotateCurrentSpan("http.response.status_code", response.status)),
            Effect.withSpan(`${request.method} ${target.service}`, {
              kind: "client",
              attributes: { "http.request.method": request.method, "server.address": target.service }
            }, { captureStackTrace: false })
          )
          : sending(undefined)
      const attempt = traced(injected)
      // On the live clock, an attempt's timeout is its fetch's own signal, aborted by a plain timer: no
      // fibers raced per call. On another clock (tests' virtual time) the timeout must follow that clock, and
      // with faults injected a delay must count against it: then the Effect timeout.
      const attemptWithin = faulty || fiber.getRef(Clock.Clock) !== liveClock
        ? undefined
        : (millis: number, timedOut: () => Problem.GatewayTimeout) =>
          traced((trace) => Effect.map(fetchWithin(target.fetcher, () => outgoing(trace), millis, timedOut, unreachable), downstreamResponse))
      const call = Retry.withRetries<Response, Problem.BadGateway, never>({
        upstream: target.service,
        method: request.method,
        hasIdempotencyKey: request.headers.has("idempotency-key"),
        timeoutMs: target.timeoutMs,
        retry: target.retry,
        answer: Retry.webResponse,
        unreachable: (error) => error instanceof Problem.BadGateway,
        attempt,
        attemptWithin,
        retries: Option.getOrNull(Context.getOption(context, Retry.Retries)) ?? undefined
      })
      const breakers = Context.getOption(context, CircuitBreakers)
      const guarded = breakers._tag === "Some" ? breakers.value.guard(target, call) : call
      // Outermost: a call over the upstream's concurrency cap is shed before anything else runs.
      const bulkheads = Context.getOrUndefined(context, Bulkheads)
      return bulkheads === undefined ? guarded : bulkheads.guard(target, guarded)
    })))

/**
 * `fetcher.fetch(request())`, ended after `millis` by a timer that aborts the
 * fetch and fails with `timedOut()` at once, so a fetcher that ignores its
 * signal cannot hold the attempt past it; a fetch that throws or rejects is
 * `unreachable()`. One AbortController serves the timer and the fiber's
 * interruption (a hedge's loser, a client gone), and the timer is cleared as
 * soon as the attempt settles (no timer outlives its call). An answer that
 * comes after the attempt ended has its body let go.
 */
const fetchWithin = <E1, E2>(
  fetcher: Fetcher,
  request: () => Request,
  millis: number,
  timedOut: () => E1,
  unreachable: () => E2
): Effect.Effect<Response, E1 | E2> =>
  Effect.callback<Response, E1 | E2>((resume) => {
    const controller = new AbortController()
    let done = false
    const end = () => {
      done = true
      clearTimeout(timer)
    }
    const timer = setTimeout(() => {
      if (done) return
      end()
      controller.abort()
      resume(Effect.fail(timedOut()))
    }, millis)
    let fetched: Promise<Response>
    try {
      fetched = fetcher.fetch(request(), { signal: controller.signal })
    } catch {
      end()
      return resume(Effect.fail(unreachable()))
    }
    fetched.then(
      (response) => {
        if (done) return void response.body?.cancel().catch(() => undefined)
        end()
        resume(Effect.succeed(response))
      },
      () => {
        if (done) return
        end()
        resume(Effect.fail(unreachable()))
      }
    )
    // Interrupted: the fetch is aborted, and a late answer let go.
    return Effect.sync(() => {
      if (done) return
      end()
      controller.abort()
    })
  })

/** Effect's live clock, the default of `Clock.Clock` (one instance per isolate). */
const liveClock = Context.get(Context.empty(), Clock.Clock)

/**
 * This Worker's assertion for the upstream (audience: the route's service,
 * without its version), when the Worker has mesh keys; none otherwise.
 */
const assertionFor = (target: Target, request: Request): Effect.Effect<string | undefined> =>
  Effect.withFiber((fiber) => {
    const keys = Context.getOrUndefined(fiber.context, Identity.IdentityKey)
    if (keys === undefined) return Effect.succeed(undefined)
    const at = target.service.indexOf("@")
    const audience = at === -1 ? target.service : target.service.slice(0, at)
    const path = pathOf(request.url)
    // Signed for this call within the last 10 s: no effect to run.
    const ready = Identity.reusableFor(keys, audience, request.method, path, fiber.getRef(Clock.Clock).currentTimeMillisUnsafe())
    if (ready !== undefined) return Effect.succeed(ready)
    return Effect.provideService(Identity.signFor(audience, request.method, path), Identity.IdentityKey, keys)
  })

type ProxyError =
  | Problem.BadRequest
  | Problem.NotFound
  | Problem.MethodNotAllowed
  | Problem.BadGateway
  | Problem.GatewayTimeout
  | Problem.ServiceUnavailable
  | Problem.PayloadTooLarge

/** Forwards a request to its upstream; what a proxy's own step wraps. */
export type Forward = (request: Request) => Effect.Effect<Response, ProxyError, Bindings.Invocation>

/**
 * Forwards to the route's upstream, or, for a route with versions and a
 * traffic manager in the layer, to the version it picks: each version has
 * its own breaker and retry budget (`users@green`), its outcome is counted
 * for automatic rollback, and the answer says which version served it.
 */
const forwardTo = (upstream: Upstream, request: Request): Effect.Effect<Response, ProxyError, Bindings.Invocation> =>
  Effect.withFiber((fiber) => {
    const versions = upstream.resolvedVersions
    const traffic = versions === undefined ? undefined : Context.getOrUndefined(fiber.context, Traffic.TrafficManager)
    const stats = Context.getOrUndefined(fiber.context, LiveStats)
    if (versions === undefined || traffic === undefined) return observed(stats, upstream.service, forward(upstream, request))
    const identity = Context.getOrUndefined(fiber.context, Identity.CurrentIdentity)
    return Effect.flatMap(traffic.choose(versions, identity, request), (chosen) => {
      const service = chosen.version === versions.defaultVersion ? upstream.service : `${upstream.service}@${chosen.version}`
      const call = forward({ ...upstream, service, fetcher: chosen.fetcher, faults: chosen.faults ?? upstream.faults }, request)
      return Effect.flatMap(Effect.exit(observed(stats, `${upstream.service}@${chosen.version}`, call)), (exit) => {
        // Only the version's own failures count against it: not a request refused before it was sent.
        const failed = exit._tag === "Success"
          ? exit.value.status >= 500
          : Exit.findErrorOption(exit).pipe(
            Option.exists((error) =>
              error instanceof Problem.BadGateway || error instanceof Problem.GatewayTimeout || error instanceof Problem.ServiceUnavailable
            )
          )
        return Effect.andThen(traffic.record(versions, chosen.version, failed), () => {
          if (exit._tag === "Failure") return exit
          const answer = exit.value
          // A mirrored request: the client gets one branch of the body, the comparison the other.
          const [body, copy] = chosen.mirror === undefined || answer.body === null ? [answer.body, null] : answer.body.tee()
          const response = copy === null ? Editable.response(answer) : new Response(body, answer)
          response.headers.set(Traffic.versionHeader, chosen.version)
          if (chosen.mirror === undefined) return Effect.succeed(response)
          const canary = chosen.mirror
          return Effect.as(
            Bindings.waitUntil(mirror(
              { ...upstream, service: `${upstream.service}@${canary.version}`, fetcher: canary.fetcher },
              request,
              { status: answer.status, headers: answer.headers, body: copy },
              (outcome) => traffic.recordMirrored(versions, canary.version, outcome)
            )),
            response
          )
        })
      })
    })
  })

/**
 * `call`, counted in this Worker's live figures (when it keeps them) under
 * `series`: its status (a failure's own status; an interruption, the client
 * gone, as 499) and latency.
 */
const observed = <E, R>(
  stats: LiveStats["Service"] | undefined,
  series: string,
  call: Effect.Effect<Response, E, R>
): Effect.Effect<Response, E, R> => {
  if (stats === undefined) return call
  const started = Date.now()
  return Effect.onExit(call, (exit) => {
    const status = exit._tag === "Success"
      ? exit.value.status
      : Option.match(Exit.findErrorOption(exit), { onNone: () => (Exit.hasInterrupts(exit) ? 499 : 500), onSome: Problem.statusOf })
    stats.recorder.call(series, status, Date.now() - started)
    return Effect.void
  })
}

/** The most of a body mirroring compares; beyond it, only statuses and content types are. */
const mirrorBodyLimit = 256 * 1024

/** An answer as mirroring compares it; the body is read up to the limit, and left out past it. */
const comparable = (
  status: number,
  headers: Headers,
  body: ReadableStream<Uint8Array> | null
): Effect.Effect<Traffic.ComparedAnswer> => {
  const json = /^application\/([a-z0-9.+-]*\+)?json\b/i.test(headers.get("content-type") ?? "")
  if (body === null) return Effect.succeed({ status, json, body: "" })
  return readLimited(body, mirrorBodyLimit).pipe(
    Effect.map((bytes): Traffic.ComparedAnswer => ({ status, json, body: new TextDecoder().decode(bytes) })),
    // Too large, or unreadable: compared by status and content type only.
    Effect.orElseSucceed((): Traffic.ComparedAnswer => ({ status, json, body: undefined }))
  )
}

/**
 * Sends a copy of `request` to the canary `target` after the stable version
 * answered `stable`, compares the two answers, and hands the outcome to `record`.
 */
const mirror = (
  target: Upstream,
  request: Request,
  stable: { readonly status: number; readonly headers: Headers; readonly body: ReadableStream<Uint8Array> | null },
  record: (outcome: Traffic.MirrorOutcome) => Effect.Effect<void>
): Effect.Effect<void, never, Bindings.Invocation> =>
  Effect.gen(function*() {
    const path = pathOf(request.url)
    const expected = yield* comparable(stable.status, stable.headers, stable.body)
    const exit = yield* Effect.exit(forward(target, request))
    if (exit._tag === "Failure") {
      const problem = Exit.findErrorOption(exit).pipe(Option.map((error) => error._tag), Option.getOrElse(() => "a defect"))
      return yield* record({ path, stable: stable.status, canary: problem, difference: `the canary failed: ${problem}` })
    }
    const answer = yield* comparable(exit.value.status, exit.value.headers, exit.value.body)
    yield* record({ path, stable: stable.status, canary: answer.status, difference: Traffic.compareAnswers(expected, answer) })
  })

/**
 * The fetch handler of a proxy Worker (the gateway, the router): refuse
 * ambiguous paths, answer `GET /health` (the upstreams' detailed health to
 * other Workers of the mesh, `{"status":"ok"}` to anyone else), forward
 * everything else to the upstream whose prefix matches, through `around`, the
 * Worker's own step (the gateway authenticates and rate limits there), 404
 * otherwise.
 */
export const proxy = <E = never, R = never>(
  service: string,
  around: (request: Request, forward: Forward) => Effect.Effect<Response, E | ProxyError, Bindings.Invocation | R> = (request, forward) =>
    forward(request)
) => {
  // One probe of the mesh per 5 s per isolate, however often the report is asked for.
  let cached: { readonly report: Health.HealthReport; readonly at: number } | undefined
  const health = (upstreams: ReadonlyArray<Upstream>) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      cached !== undefined && now - cached.at < Health.cacheMillis
        ? Effect.succeed(cached.report)
        : Effect.tap(Health.report(service, upstreams), (report) => Effect.sync(() => (cached = { report, at: now }))))
  return (request: Request): Effect.Effect<Response, ProxyError | E, RoutingTable | Identity.IdentityKey | Bindings.Invocation | R> =>
  RoutingTable.use((table) => Effect.withFiber((fiber): Effect.Effect<Response, ProxyError | E, Identity.IdentityKey | Bindings.Invocation | R> => {
    // What this isolate counted since its last report leaves with the first request after the interval.
    const stats = Context.getOrUndefined(fiber.context, LiveStats)
    const invocation = stats === undefined ? undefined : Context.getOrUndefined(fiber.context, Bindings.Invocation)
    if (invocation !== undefined) stats!.reportIfDue(Date.now(), invocation)
    const path = pathOf(request.url)
    if (path === "/health") {
      return request.method === "GET" || request.method === "HEAD"
        ? Effect.andThen(
          Telemetry.annotateServerSpan("http.route", "/health"),
          // The detailed report lists internal Workers and breaker states: for the mesh's own Workers only.
          Effect.flatMap(Effect.serviceOption(Identity.CurrentIdentity), (caller) =>
            caller._tag === "Some" && Identity.isService(caller.value)
              ? Effect.map(health(table.upstreams), Health.toResponse)
              : Effect.succeed(Health.liveness()))
        )
        : Effect.fail(new Problem.MethodNotAllowed({ allow: ["GET", "HEAD"], detail: "GET /health" }))
    }
    if (ambiguousPath.test(path)) return Effect.fail(ambiguous())
    const upstream = table.match(path)
    if (upstream === undefined) return Effect.fail(new Problem.NotFound({ detail: `No service serves ${path}` }))
    // Set here, not as an effect step of its own (`annotateServerSpan`): every request pays for a step.
    fiber.getRef(Telemetry.ServerSpan)?.attribute("http.route", `${upstream.prefix}/*`)
    return around(request, (prepared) => forwardTo(upstream, prepared))
  }))
}
