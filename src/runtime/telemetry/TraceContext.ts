/**
 * W3C Trace Context (level 1) across hops, and what code on the request path
 * records on spans: the carrier to send with a call, the served request's
 * span and `tracestate`, policy events, typed error tags.
 */
import type { Fiber } from "effect"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as References from "effect/References"
import * as Tracer from "effect/Tracer"

export interface Carrier {
  readonly traceparent: string
  readonly tracestate?: string
}

const traceparentPattern = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/

/**
 * The span a `traceparent` names, or undefined when it is missing or invalid
 * (version ff, all-zero ids, or a version-00 header with extra fields).
 */
export const parseTraceparent = (header: string | null | undefined): Tracer.ExternalSpan | undefined => {
  const match = header == null ? null : traceparentPattern.exec(header.trim())
  if (match === null) return undefined
  const [, version, traceId, spanId, flags, rest] = match
  if (version === "ff" || (version === "00" && rest !== undefined)) return undefined
  if (/^0+$/.test(traceId!) || /^0+$/.test(spanId!)) return undefined
  return Tracer.externalSpan({ traceId: traceId!, spanId: spanId!, sampled: (parseInt(flags!, 16) & 1) === 1 })
}

/** The `traceparent` naming `span`. */
export const formatTraceparent = (span: Tracer.AnySpan): string =>
  `00-${span.traceId.padStart(32, "0")}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** The `tracestate` received with the current request, handed on unchanged to every hop. */
export const TraceState = Context.Reference<string | undefined>("meshwork/runtime/telemetry/TraceContext/TraceState", {
  defaultValue: () => undefined
})

/** The span of the request (or Durable Object call) being served: its `error.type` is set from typed failures. */
export const ServerSpan = Context.Reference<Tracer.Span | undefined>("meshwork/runtime/telemetry/TraceContext/ServerSpan", {
  defaultValue: () => undefined
})

/** The trace context to send with a call made now, if there is a current span. */
export const carrier: Effect.Effect<Carrier | undefined> = Effect.withFiber((fiber) => {
  const span = Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
  if (span === undefined) return Effect.succeed(undefined)
  const tracestate = fiber.getRef(TraceState)
  return Effect.succeed(tracestate === undefined ? { traceparent: formatTraceparent(span) } : { traceparent: formatTraceparent(span), tracestate })
})

/** Whether the fiber's spans go anywhere: tracing is on and a tracer other than Effect's native one is installed. */
export const isTracing = (fiber: Fiber.Fiber<unknown, unknown>): boolean =>
  fiber.getRef(References.TracerEnabled) && fiber.getRef(Tracer.Tracer) !== Tracer.nativeTracer

/** `carrier` when tracing is on, else undefined. */
export const activeCarrier: Effect.Effect<Carrier | undefined> = Effect.withFiber((fiber) =>
  isTracing(fiber) ? carrier : Effect.succeed(undefined)
)

/** The current `traceparent`, if there is a current span. */
export const traceparent: Effect.Effect<string | undefined> = Effect.map(carrier, (c) => c?.traceparent)

/** `headers` (copied) carrying `carrier` in place of any trace context they had. */
export const withCarrier = (headers: Headers, carrier: Carrier): Headers => setCarrier(new Headers(headers), carrier)

/** Sets `carrier` on `headers` in place (headers the caller made, not a request it was given), replacing any trace context. */
export const setCarrier = (headers: Headers, carrier: Carrier): Headers => {
  headers.delete("tracestate")
  for (const [name, value] of Object.entries(carrier)) headers.set(name, value)
  return headers
}

/**
 * Sets an attribute of the request being served: its `http.route` (a proxy's
 * routing prefix), or its `error.type` when the handler turns a typed error
 * into a response itself.
 */
export const annotateServerSpan = (key: "http.route" | "error.type", value: string): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    fiber.getRef(ServerSpan)?.attribute(key, value)
    return Effect.void
  })

/** A policy's decision, recorded as an event on the current span. */
export const event = (name: string, attributes: Record<string, unknown>): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    const span = Context.getOrUndefined(fiber.context, Tracer.ParentSpan)
    if (span !== undefined && span._tag === "Span") {
      span.event(name, Context.get(fiber.context, Clock.Clock).currentTimeNanosUnsafe(), attributes)
    }
    return Effect.void
  })

/** The `_tag` of a typed error, if it has one. */
export const errorTag = (error: unknown): string | undefined => {
  if (typeof error !== "object" || error === null) return undefined
  const tag = (error as { readonly _tag?: unknown })._tag
  return typeof tag === "string" ? tag : undefined
}

const traceContextHeaders = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"]

/** `request` without W3C or B3 trace headers (the same request when it has none). */
export const withoutTraceContext = (request: Request): Request => {
  if (!traceContextHeaders.some((name) => request.headers.has(name))) return request
  const headers = new Headers(request.headers)
  for (const name of traceContextHeaders) headers.delete(name)
  return new Request(request, { headers })
}

