/**
 * Observability, against a real OTLP/HTTP receiver (scripts/otlp.ts) that
 * every Worker of the test mesh exports to: the gateway in OTLP/JSON, the
 * others in protobuf, both decoded by the receiver per the OTLP spec.
 */
import { env } from "cloudflare:workers"
import { Effect, Tracer } from "effect"
import { describe, expect, it as vitestIt } from "vitest"
import * as Proxy from "../../src/layers/routing/Proxy.ts"
import * as Telemetry from "../../src/runtime/Telemetry.ts"
import * as Bindings from "../../src/runtime/Bindings.ts"
import * as ServiceClient from "../../src/runtime/ServiceClient.ts"
import { eventually, gateway, signedIn, unique } from "../helpers.ts"

// Traces arrive after their requests, under waitUntil: each test waits for them up to 20 s.
const it = (name: string, test: () => Promise<void> | void) => vitestIt(name, test, 30_000)

interface Span {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly kind: number
  readonly attributes: Record<string, unknown>
  readonly events: ReadonlyArray<{ readonly name: string; readonly attributes: Record<string, unknown> }>
  readonly links: ReadonlyArray<{ readonly traceId: string; readonly spanId: string }>
  readonly status: { readonly code: number; readonly message?: string }
  readonly resource: Record<string, unknown>
}

const SERVER = 2
const CONSUMER = 5

const receiver = (path: string, init?: RequestInit) => fetch(`${env.OTLP_RECEIVER}${path}`, init)
const spansOf = async (query: Record<string, string>) =>
  await (await receiver(`/api/spans?${new URLSearchParams(query)}`)).json() as Array<Span>

const hex = (bytes: number) => [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("")

/** A client's own trace context, which the gateway links to but does not continue. */
const clientContext = () => {
  const traceId = hex(16)
  return { traceId, traceparent: `00-${traceId}-${hex(8)}-01` }
}

const service = (span: Span) => span.resource["service.name"]

/** The trace the gateway started for a request sent with `client`'s context, once its spans arrived. */
const traceOf = async (client: { readonly traceId: string }, services: ReadonlyArray<string>) => {
  let traceId: string | undefined
  await eventually(async () => {
    const roots = await spansOf({ service: "gateway" })
    traceId = roots.find((span) => span.links.some((link) => link.traceId === client.traceId))?.traceId
    if (traceId === undefined) return false
    const seen = new Set((await spansOf({ traceId })).map(service))
    return services.every((name) => seen.has(name))
  }, 20)
  return await spansOf({ traceId: traceId! })
}

/** Follows parent links from `span` up to the root of its trace. */
const ancestors = (span: Span, all: ReadonlyArray<Span>): Array<Span> => {
  const byId = new Map(all.map((s) => [s.spanId, s]))
  const chain: Array<Span> = []
  let current = span.parentSpanId === undefined ? undefined : byId.get(span.parentSpanId)
  while (current !== undefined) {
    chain.push(current)
    current = current.parentSpanId === undefined ? undefined : byId.get(current.parentSpanId)
  }
  return chain
}

describe("one trace across the mesh", () => {
  it("gives one client request one trace: a server span per Worker, each the child of its caller's span", async () => {
    const admin = await signedIn("admin")
    const client = clientContext()
    const response = await gateway(`/api/users/${admin.id}`, {
      headers: { authorization: `Bearer ${admin.token}`, traceparent: client.traceparent, tracestate: "client=1" }
    })
    expect(response.status).toBe(200)

    const spans = await traceOf(client, ["gateway", "router", "users"])
    // The client's trace was linked to, not continued.
    expect(await spansOf({ traceId: client.traceId })).toEqual([])

    const edge = spans.find((span) => service(span) === "gateway" && span.links.some((link) => link.traceId === client.traceId))!
    expect(edge.parentSpanId).toBeUndefined()
    expect(edge.kind).toBe(SERVER)
    expect(edge.name).toBe("GET /api/*")
    expect(edge.attributes).toMatchObject({
      "http.request.method": "GET",
      "http.route": "/api/*",
      "url.path": `/api/users/${admin.id}`,
      "server.address": "mesh.test",
      "http.response.status_code": 200
    })
    expect(edge.resource).toMatchObject({ "service.name": "gateway", "service.version": "0.1.0", "deployment.environment": "test" })

    // The router's span descends from the gateway's (through its forwarding client span), the users span from the router's.
    const routed = spans.filter((span) => service(span) === "router" && span.kind === SERVER)
    expect(routed.length).toBeGreaterThan(0)
    for (const span of routed) expect(ancestors(span, spans)).toContainEqual(edge)
    const users = spans.filter((span) => service(span) === "users" && span.kind === SERVER)
    const served = users.find((span) => span.attributes["url.path"] === `/api/users/${admin.id}`)!
    expect(served.attributes).toMatchObject({ "http.route": "/api/users/:id", "http.response.status_code": 200 })
    expect(served.name).toBe("GET /api/users/:id")
    const parent = spans.find((span) => span.spanId === served.parentSpanId)!
    expect(service(parent)).toBe("router")
    expect(ancestors(served, spans).at(-1)).toEqual(edge)
    // Every span of the trace is accounted for: each reaches the gateway's root.
    for (const span of spans) if (span !== edge) expect(ancestors(span, spans).at(-1)).toEqual(edge)

    // The gateway exported in OTLP/JSON, the router and users in protobuf.
    const exports = await (await receiver("/api/exports")).json() as Array<{ readonly contentType: string; readonly traceIds: Array<string> }>
    const carrying = exports.filter((e) => e.traceIds.includes(edge.traceId)).map((e) => e.contentType)
    expect(carrying).toContain("application/json")
    expect(carrying).toContain("application/x-protobuf")
  })

  it("continues a trusted caller's trace, and hands its tracestate on through the proxy and typed clients", async () => {
    const tracer = Tracer.make({ span: (options) => new Tracer.NativeSpan(options) })
    const parent = Telemetry.parseTraceparent(`00-${hex(16)}-${hex(8)}-01`)!
    const echoed = (effect: Effect.Effect<Response, unknown>) =>
      Effect.runPromise(effect.pipe(
        Effect.flatMap((response) => Effect.promise(() => response.json() as Promise<{ headers: Array<[string, string]> }>)),
        Effect.map((body) => new Map(body.headers)),
        Effect.withSpan("caller", { parent }),
        Effect.provideService(Telemetry.TraceState, "vendor=abc"),
        Effect.provideService(Tracer.Tracer, tracer)
      ))

    const viaProxy = await echoed(Proxy.forward({ service: "echo", fetcher: env.ECHO }, new Request("http://echo/x")))
    expect(viaProxy.get("traceparent")).toMatch(new RegExp(`^00-${parent.traceId}-[0-9a-f]{16}-01$`))
    expect(viaProxy.get("tracestate")).toBe("vendor=abc")

    const viaClient = await echoed(
      Effect.flatMap(ServiceClient.httpClient("ECHO"), (client) =>
        Effect.flatMap(client.get("http://echo.internal/y"), (response) => Effect.map(response.text, (text) => new Response(text)))).pipe(
          Effect.provide(Bindings.WorkerEnv.layer(env))
        )
    )
    expect(viaClient.get("traceparent")).toMatch(new RegExp(`^00-${parent.traceId}-[0-9a-f]{16}-01$`))
    expect(viaClient.get("tracestate")).toBe("vendor=abc")
  })

  it("joins the spans of a Durable Object call to the request's trace", async () => {
    const user = await signedIn()
    const client = clientContext()
    const response = await gateway("/api/sessions", {
      method: "POST",
      headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json", traceparent: client.traceparent },
      body: "{}"
    })
    expect(response.status).toBe(201)
    const spans = await traceOf(client, ["gateway", "router", "sessions", "session"])
    const call = spans.find((span) => service(span) === "session" && span.name === "session.create")!
    expect(call.kind).toBe(SERVER)
    const callers = ancestors(call, spans).map(service)
    expect(callers[0]).toBe("sessions")
    expect(callers).toContain("router")
    expect(callers.at(-1)).toBe("gateway")
  })

  it("joins a queue consumer's spans to the trace of the request that sent the messages", async () => {
    const admin = await signedIn("admin")
    const client = clientContext()
    const response = await gateway("/api/products/imports", {
      method: "POST",
      headers: { authorization: `Bearer ${admin.token}`, "content-type": "application/json", traceparent: client.traceparent },
      body: JSON.stringify({ products: [{ sku: `TRC-${unique().toUpperCase()}`, name: "Traced", priceCents: 1, sellerId: admin.id }] })
    })
    expect(response.status).toBe(202)
    const spans = await traceOf(client, ["gateway", "router", "products"])
    const traceId = spans[0]!.traceId
    let consumed: Span | undefined
    await eventually(async () => {
      const now = await spansOf({ traceId })
      consumed = now.find((span) => span.kind === CONSUMER && span.name.startsWith("queue.process"))
      if (consumed === undefined) return false
      spans.splice(0, spans.length, ...now)
      return true
    })
    expect(service(consumed!)).toBe("products")
    const chain = ancestors(consumed!, spans)
    expect(chain[0]?.name).toMatch(/^queue\.send/)
    expect(chain.at(-1)?.links.some((link) => link.traceId === client.traceId)).toBe(true)
  })
})
