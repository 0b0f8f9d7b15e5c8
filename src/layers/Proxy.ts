/**
 * Forwarding a request to an upstream Worker over its service binding, the
 * way an HTTP proxy must (RFC 9110 section 7.6.1): hop-by-hop headers, and every
 * header the `Connection` header names, are dropped in both directions; the
 * path and query reach the upstream exactly as they were routed. Each
 * attempt is a client span whose W3C trace context the upstream continues.
 */
import { Effect } from "effect"
import { readLimited } from "../runtime/Http.ts"
import * as Problem from "../runtime/Problem.ts"
import { type BreakerSettings, CircuitBreakers } from "./CircuitBreakers.ts"
import * as Faults from "./Faults.ts"
import type { FaultSettings } from "./Faults.ts"
import * as Retry from "./Retry.ts"
import * as Telemetry from "./Telemetry.ts"

const hopByHop = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])

/**
 * Header names to drop: the fixed hop-by-hop set plus those the `Connection`
 * header lists. One pass over the names present: requests carry few headers,
 * and each `has` is a call into the runtime.
 */
const droppedHeaders = (headers: Headers): ReadonlyArray<string> => {
  const dropped: Array<string> = []
  for (const name of headers.keys()) {
    if (!hopByHop.has(name)) continue
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
  const dropped = droppedHeaders(headers)
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

export const checkPath = (pathname: string): Effect.Effect<void, Problem.BadRequest> =>
  ambiguousPath.test(pathname)
    ? Effect.fail(new Problem.BadRequest({ detail: "The path has empty, dot or encoded-separator segments" }))
    : Effect.void

/** Largest request body a proxy forwards (1 MiB); services set their own, smaller, limits. */
export const defaultMaxBodyBytes = 1024 * 1024

/**
 * The request to send upstream, as a function that makes it (once per
 * attempt, so a retry can send it again): same URL and method, hop-by-hop
 * headers dropped, the trace context of `trace` when given, the body read
 * first (at most `maxBodyBytes`, else 413).
 * Buffering matters on Workers: an upstream may answer before reading a
 * streamed body, and a stream still being pumped after our response is sent
 * fails.
 */
export const upstreamRequest = (
  request: Request,
  maxBodyBytes: number = defaultMaxBodyBytes
): Effect.Effect<(trace?: Telemetry.Carrier) => Request, Problem.PayloadTooLarge | Problem.BadRequest> => {
  const headers = stripHopByHop(request.headers)
  if (request.body === null) {
    const outgoing = headers === request.headers ? request : new Request(request, { headers })
    return Effect.succeed((trace) => trace === undefined ? outgoing : new Request(request, { headers: Telemetry.withCarrier(headers, trace) }))
  }
  const declared = request.headers.get("content-length")
  if (declared !== null && Number(declared) > maxBodyBytes) {
    return Effect.fail(new Problem.PayloadTooLarge({ limit: maxBodyBytes }))
  }
  return Effect.map(
    readLimited(request.body, maxBodyBytes),
    (body) => (trace) => new Request(request, { headers: trace === undefined ? headers : Telemetry.withCarrier(headers, trace), body })
  )
}

/** The response to send downstream, hop-by-hop headers dropped. */
export const downstreamResponse = (response: Response): Response => {
  const headers = stripHopByHop(response.headers)
  return headers === response.headers
    ? response
    : new Response(response.body, { status: response.status, statusText: response.statusText, headers })
}

/** Where a request is forwarded, and the route's resilience settings. */
export interface Target {
  readonly service: string
  readonly fetcher: Fetcher
  readonly timeoutMs?: number | undefined
  readonly retry?: Retry.RetrySettings | undefined
  readonly breaker?: BreakerSettings | undefined
  readonly faults?: FaultSettings | undefined
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
  Effect.flatMap(upstreamRequest(request), (outgoing) => {
    const call = Retry.withRetries<Response, Problem.BadGateway, never>({
      upstream: target.service,
      method: request.method,
      hasIdempotencyKey: request.headers.has("idempotency-key"),
      timeoutMs: target.timeoutMs,
      retry: target.retry,
      answer: Retry.webResponse,
      unreachable: (error) => error instanceof Problem.BadGateway,
      attempt: Faults.inject(
        target.service,
        target.faults,
        Effect.flatMap(Telemetry.activeCarrier, (trace) =>
          Effect.tryPromise({
            try: (signal) => target.fetcher.fetch(outgoing(trace), { signal }),
            catch: () =>
              new Problem.BadGateway({ service: target.service, detail: `The ${target.service} service could not be reached` })
          })).pipe(
            Effect.map(downstreamResponse),
            Effect.tap((response) => Effect.annotateCurrentSpan("http.response.status_code", response.status)),
            Effect.withSpan(`${request.method} ${target.service}`, {
              kind: "client",
              attributes: { "http.request.method": request.method, "server.address": target.service }
            }, { captureStackTrace: false })
          )
      )
    })
    return Effect.flatMap(
      Effect.serviceOption(CircuitBreakers),
      (breakers): Effect.Effect<Response, Problem.BadGateway | Problem.GatewayTimeout | Problem.ServiceUnavailable> =>
        breakers._tag === "Some" ? breakers.value.guard(target, call) : call
    )
  })
