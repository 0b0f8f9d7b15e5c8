/**
 * Observability, against a real OTLP/HTTP receiver (scripts/otlp.ts) that
 * every Worker of the test mesh exports to: the gateway in OTLP/JSON, the
 * others in protobuf, both decoded by the receiver per the OTLP spec.
 */
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Clock, Effect, Layer, Logger } from "effect"
import { afterEach, describe, expect, it as vitestIt, vi } from "vitest"
import type * as MeshStats from "../../src/layers/observability/MeshStats.ts"
import { CircuitBreakers } from "../../src/layers/resilience/CircuitBreakers.ts"
import { IdentityKey } from "../../src/layers/security/Identity.ts"
import { Retries } from "../../src/layers/resilience/Retries.ts"
import { RoutingTable } from "../../src/layers/routing/RoutingTable.ts"
import { proxy } from "../../src/layers/routing/Proxy.ts"
import * as Telemetry from "../../src/runtime/Telemetry.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { eventually, gateway, meshEnv, send, signedIn, unique } from "../helpers.ts"

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

interface MetricPoint {
  readonly attributes: Record<string, unknown>
  readonly value?: number
  readonly count?: number
  readonly sum?: number
  readonly bucketCounts?: ReadonlyArray<number>
}

const ERROR = 2

const receiver = (path: string, init?: RequestInit) => fetch(`${env.OTLP_RECEIVER}${path}`, init)
const spansOf = async (query: Record<string, string>) =>
  await (await receiver(`/api/spans?${new URLSearchParams(query)}`)).json() as Array<Span>
const metricPoints = async (name: string, service: string) => {
  const metrics = await (await receiver(`/api/metrics?${new URLSearchParams({ name })}`)).json() as Array<
    { readonly resource: Record<string, unknown>; readonly dataPoints: ReadonlyArray<MetricPoint> }
  >
  return metrics.filter((metric) => metric.resource["service.name"] === service).flatMap((metric) => metric.dataPoints)
}
const setMode = (mode: "up" | "fail" | "hang") =>
  receiver("/api/mode", { method: "POST", body: JSON.stringify({ mode }) })

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

describe("span content", () => {
  it("names the typed error of a failed request in error.type; 4xx is not an error status on a server span", async () => {
    const admin = await signedIn("admin")
    const client = clientContext()
    const missing = "01890000-0000-7000-8000-000000000000"
    const response = await gateway(`/api/users/${missing}`, {
      headers: { authorization: `Bearer ${admin.token}`, traceparent: client.traceparent }
    })
    expect(response.status).toBe(404)
    const spans = await traceOf(client, ["gateway", "router", "users"])
    const users = spans.find((span) => service(span) === "users" && span.attributes["url.path"] === `/api/users/${missing}`)!
    expect(users.attributes).toMatchObject({ "error.type": "UserNotFound", "http.response.status_code": 404 })
    expect(users.status.code).not.toBe(ERROR)
  })

  it("marks a 5xx server span as an error, with the typed error's tag", async () => {
    const name = `failing-${unique()}`
    const worker = Worker.make({
      name,
      layer: Layer.empty,
      fetch: () => Effect.fail(new Problem.ServiceUnavailable({ detail: "down for the test" }))
    })
    const ctx = createExecutionContext()
    const response = await worker.fetch!(new Request("http://probe.test/x"), env, ctx)
    await waitOnExecutionContext(ctx)
    expect(response.status).toBe(503)
    let span: Span | undefined
    await eventually(async () => (span = (await spansOf({ service: name }))[0]) !== undefined, 10)
    expect(span!.status).toEqual({ code: ERROR, message: "ServiceUnavailable" })
    expect(span!.attributes).toMatchObject({ "error.type": "ServiceUnavailable", "http.response.status_code": 503 })
  })

  it("records policy decisions: the cache result and the rate limit on the gateway's span, batch sizes as spans", async () => {
    const admin = await signedIn("admin")
    const created = await send("POST", "/api/products", { sku: `OBS-${unique().toUpperCase()}`, name: "Observed", priceCents: 5, sellerId: admin.id }, admin.token)
    expect(created.status).toBe(201)
    const product = await created.json() as { readonly id: string }

    const cached = clientContext()
    const read = await gateway(`/api/products/${product.id}`, { headers: { traceparent: cached.traceparent, authorization: `Bearer ${admin.token}` } })
    expect(read.status).toBe(200)
    await read.text()
    const cacheSpans = await traceOf(cached, ["gateway"])
    const lookup = cacheSpans.flatMap((span) => span.events).find((event) => event.name === "cache.lookup")
    expect(lookup?.attributes["meshwork.cache.result"]).toMatch(/^(MISS|HIT|BYPASS|STALE|REVALIDATED)$/)
    expect(cacheSpans.flatMap((span) => span.events).some((event) => event.name === "ratelimit.allowed")).toBe(true)

    // A cart of two lines is enriched with one batched lookup of two products.
    const session = await send("POST", "/api/sessions", {}, admin.token)
    expect(session.status).toBe(201)
    const { id } = await session.json() as { readonly id: string }
    const changes = [product.id, crypto.randomUUID()].map((productId) => ({ _tag: "SetCartItem", productId, quantity: 1 }))
    expect((await send("PATCH", `/api/sessions/${id}`, { changes }, admin.token)).status).toBe(200)
    const batched = clientContext()
    const cart = await gateway(`/api/sessions/${id}/cart`, { headers: { traceparent: batched.traceparent, authorization: `Bearer ${admin.token}` } })
    expect(cart.status).toBe(200)
    await cart.text()
    const batchSpans = await traceOf(batched, ["gateway", "sessions", "products"])
    const batch = batchSpans.find((span) => span.name === "batch.lookup")
    expect(service(batch!)).toBe("sessions")
    expect(batch?.attributes["meshwork.batch.size"]).toBe(2)

    // The "tight" test limit allows 3 HEAD requests per hour per client.
    const limited = await signedIn("admin")
    let refused: ReturnType<typeof clientContext> | undefined
    for (let i = 0; i < 5 && refused === undefined; i++) {
      const context = clientContext()
      const response = await gateway("/api/products", { method: "HEAD", headers: { traceparent: context.traceparent, authorization: `Bearer ${limited.token}` } })
      if (response.status === 429) refused = context
    }
    expect(refused).toBeDefined()
    const refusedSpans = await traceOf(refused!, ["gateway"])
    const rejected = refusedSpans.flatMap((span) => span.events).find((event) => event.name === "ratelimit.rejected")
    expect(rejected?.attributes["meshwork.ratelimit"]).toBe("tight")
    expect(refusedSpans.find((span) => service(span) === "gateway" && span.parentSpanId === undefined)?.attributes["error.type"]).toBe("TooManyRequests")

    await eventually(async () => (await metricPoints("meshwork.ratelimit.rejections", "gateway")).some((p) => p.attributes["limit"] === "tight" && (p.value ?? 0) >= 1), 10)
    await eventually(async () => (await metricPoints("meshwork.cache.requests", "gateway")).length > 0, 10)
  })

  it("records each retry and each breaker decision as an event on the proxy's span", async () => {
    const name = `retrying-${unique()}`
    const worker = Worker.make({
      name,
      layer: Layer.mergeAll(RoutingTable.layer, IdentityKey.layer, Retries.layer, CircuitBreakers.layer),
      fetch: proxy(name)
    })
    const vars = {
      ...env,
      ...meshEnv("gateway"),
      ROUTES: [{
        service: "flaky",
        prefix: "/status",
        binding: "FLAKY",
        retry: { attempts: 2, baseDelayMs: 1 },
        breaker: { consecutiveFailures: 2, openMs: 30_000 }
      }]
    }
    const key = unique()
    for (let i = 0; i < 3; i++) {
      const ctx = createExecutionContext()
      const response = await worker.fetch!(
        new Request(`http://edge/status/503?key=${key}`),
        vars,
        ctx
      )
      expect(response.status).toBe(503)
      await response.text()
      await waitOnExecutionContext(ctx)
    }
    let events: Array<Span["events"][number]> = []
    await eventually(async () => {
      events = (await spansOf({ service: name })).flatMap((span) => span.events)
      return events.some((event) => event.name === "breaker.refused")
    }, 10)
    expect(events.filter((event) => event.name === "retry").map((event) => event.attributes)).toContainEqual(
      expect.objectContaining({ "meshwork.retry.upstream": "flaky", "meshwork.retry.attempt": 2, "meshwork.retry.reason": "503" })
    )
    expect(events.find((event) => event.name === "breaker.transition")?.attributes).toMatchObject({
      "meshwork.breaker": "flaky",
      "meshwork.breaker.from": "Closed",
      "meshwork.breaker.state": "Open"
    })
    expect(events.find((event) => event.name === "breaker.refused")?.attributes).toMatchObject({ "meshwork.breaker.state": "Open" })
    await eventually(async () => (await metricPoints("meshwork.breaker.state", name)).some((p) => p.value === 2), 10)
  })

  it("exports request counts and a latency histogram per Worker", async () => {
    const admin = await signedIn("admin")
    for (let i = 0; i < 3; i++) expect((await gateway(`/api/users/${admin.id}`, { headers: { authorization: `Bearer ${admin.token}` } })).status).toBe(200)
    await eventually(async () => {
      const counts = await metricPoints("meshwork.http.server.requests", "users")
      const latency = await metricPoints("http.server.request.duration", "users")
      return counts.some((p) => p.attributes["http.route"] === "/api/users/:id" && (p.value ?? 0) >= 3) &&
        latency.some((p) => p.attributes["http.route"] === "/api/users/:id" && (p.count ?? 0) >= 3)
    }, 10)
  })

  it("counts each request in its latency bucket, by method, route and status", async () => {
    const name = `latency-${unique()}`
    const route = `/probe-${unique()}`
    const worker = Worker.make({
      name,
      layer: Layer.empty,
      fetch: (request) =>
        Effect.andThen(
          Telemetry.annotateServerSpan("http.route", route),
          // The clock moves only across I/O in workerd: a 30 ms timer makes a 30 ms request.
          new URL(request.url).pathname === "/slow" ? Effect.as(Effect.sleep(30), new Response("slow")) : Effect.succeed(new Response("fast", { status: 201 }))
        )
    })
    for (const path of ["/fast", "/fast", "/slow"]) {
      const ctx = createExecutionContext()
      await worker.fetch!(new Request(`http://probe.test${path}`), env, ctx)
      await waitOnExecutionContext(ctx)
    }
    const points = await metricPoints("http.server.request.duration", name)
    const latest = (status: string) =>
      points.filter((p) => p.attributes["http.route"] === route && p.attributes["http.response.status_code"] === status)
        .sort((a, b) => (b.count ?? 0) - (a.count ?? 0))[0]
    // The fast ones did no I/O (the clock moves little without it, a millisecond seen at most): the first
    // bucket, up to 0.005 s.
    expect(latest("201")).toMatchObject({ count: 2, bucketCounts: [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] })
    // The slow one took at least 30 ms (more on a busy machine): the bucket of the first bound at or above it.
    const slow = latest("200")!
    const bounds = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
    expect(slow.count).toBe(1)
    expect(slow.sum).toBeGreaterThanOrEqual(0.03)
    const bucket = bounds.findIndex((bound) => slow.sum! <= bound)
    expect(slow.bucketCounts).toEqual(Array.from({ length: 15 }, (_, i) => (i === (bucket === -1 ? 14 : bucket) ? 1 : 0)))
    expect(slow.attributes["http.request.method"]).toBe("GET")
    const counts = await metricPoints("meshwork.http.server.requests", name)
    expect(Math.max(...counts.filter((p) => p.attributes["http.route"] === route && p.attributes["http.response.status_code"] === "201").map((p) => p.value ?? 0))).toBe(2)
  })
})

describe("sampling", () => {
  const probe = (vars: Record<string, string>) => {
    const name = `sampled-${unique()}`
    const worker = Worker.make({ name, layer: Layer.empty, fetch: () => Effect.succeed(new Response("ok")) })
    // Sampling is under test, not batching: each call waits for its export, without the 50 ms delay.
    const settings = { ...env, OTLP_EXPORT_DELAY_MS: "0", ...vars }
    const call = async (headers: Record<string, string> = {}) => {
      const ctx = createExecutionContext()
      const response = await worker.fetch!(new Request("http://probe.test/", { headers }), settings, ctx)
      await waitOnExecutionContext(ctx)
      expect(response.status).toBe(200)
    }
    return { name, call }
  }

  it("samples new traces at the configured ratio and follows the caller's decision", async () => {
    const none = probe({ TRACE_SAMPLE_RATIO: "0" })
    for (let i = 0; i < 20; i++) await none.call()
    const sampledParent = `00-${hex(16)}-${hex(8)}-01`
    await none.call({ traceparent: sampledParent })
    await eventually(async () => (await spansOf({ service: none.name })).length > 0, 10)
    const kept = await spansOf({ service: none.name })
    expect(kept.map((span) => span.traceId)).toEqual([sampledParent.slice(3, 35)])

    const all = probe({ TRACE_SAMPLE_RATIO: "1" })
    await all.call({ traceparent: `00-${hex(16)}-${hex(8)}-00` }) // the caller decided not to sample
    await all.call()
    await eventually(async () => (await spansOf({ service: all.name })).length > 0, 10)
    expect(await spansOf({ service: all.name })).toHaveLength(1)

    const half = probe({ TRACE_SAMPLE_RATIO: "0.5" })
    for (let i = 0; i < 200; i++) await half.call()
    const count = (await spansOf({ service: half.name })).length
    expect(count).toBeGreaterThan(60)
    expect(count).toBeLessThan(140)
  })
})

describe("batching", () => {
  it("sends at most one POST per OTLP_EXPORT_DELAY_MS while requests keep ending", async () => {
    const worker = Worker.make({
      name: `batched-${unique()}`,
      layer: Layer.empty,
      fetch: (request) =>
        new URL(request.url).pathname === "/stats"
          ? Telemetry.Telemetry.useSync((telemetry) => Response.json(telemetry.stats))
          : Effect.succeed(new Response("ok"))
    })
    const settings = { ...env, OTLP_EXPORT_DELAY_MS: "100" }
    const exporting: Array<Promise<void>> = []
    const started = Date.now()
    // Requests one after another for half a second: before, every round after the first left at
    // once with the few requests that ended during the last POST, one POST every few ms.
    let requests = 0
    while (Date.now() - started < 500) {
      const ctx = createExecutionContext()
      expect((await worker.fetch!(new Request("http://probe.test/ok"), settings, ctx)).status).toBe(200)
      exporting.push(waitOnExecutionContext(ctx))
      requests++
      await new Promise((resolve) => setTimeout(resolve, 0))
    }
    await Promise.all(exporting)
    const elapsed = Date.now() - started
    const ctx = createExecutionContext()
    const counted = await (await worker.fetch!(new Request("http://probe.test/stats"), settings, ctx)).json() as Telemetry.Stats
    expect(counted.exported).toBe(requests)
    expect(counted.exports).toBeLessThanOrEqual(Math.ceil(elapsed / 100) + 1)
  })
})

describe("trace context", () => {
  it("times server spans on the clock their children are timed on: the Effect clock of the Worker's services", async () => {
    // Not Date.now(): Effect's default clock anchors its monotonic reading to the wall clock once, and
    // in workerd the two were seen a millisecond apart then, so a child could start before its server span.
    let tick = 1_700_000_000_000_000_000n
    const clock = { ...Clock.Clock.defaultValue(), currentTimeNanosUnsafe: () => (tick += 1_000_000n) }
    const name = `clocked-${unique()}`
    const worker = Worker.make({
      name,
      layer: Layer.succeed(Clock.Clock, clock),
      fetch: () => Effect.withSpan(Effect.succeed(new Response("ok")), "child", { captureStackTrace: false })
    })
    const ctx = createExecutionContext()
    expect((await worker.fetch!(new Request("http://probe.test/"), env, ctx)).status).toBe(200)
    await waitOnExecutionContext(ctx)
    let spans: Array<Span & { readonly startTimeUnixNano: string; readonly endTimeUnixNano: string }> = []
    await eventually(async () => (spans = await spansOf({ service: name }) as typeof spans).length === 2, 10)
    const server = spans.find((span) => span.parentSpanId === undefined)!
    const child = spans.find((span) => span.name === "child")!
    expect(child.parentSpanId).toBe(server.spanId)
    // Four readings of one clock, in order: the server span's start, the child's start and end, the server span's end.
    expect([server.startTimeUnixNano, child.startTimeUnixNano, child.endTimeUnixNano, server.endTimeUnixNano]).toEqual(
      [1n, 2n, 3n, 4n].map((n) => String(1_700_000_000_000_000_000n + n * 1_000_000n))
    )
  })

  it("reads traceparent as W3C Trace Context has it", () => {
    const id = "4bf92f3577b34da6a3ce929d0e0e4736"
    expect(Telemetry.parseTraceparent(`00-${id}-00f067aa0ba902b7-01`)).toMatchObject({ traceId: id, spanId: "00f067aa0ba902b7", sampled: true })
    expect(Telemetry.parseTraceparent(`00-${id}-00f067aa0ba902b7-00`)?.sampled).toBe(false)
    // A later version may add fields; version 00 may not.
    expect(Telemetry.parseTraceparent(`01-${id}-00f067aa0ba902b7-03-extra`)?.sampled).toBe(true)
    for (const invalid of [
      `00-${id}-00f067aa0ba902b7-01-extra`,
      `ff-${id}-00f067aa0ba902b7-01`,
      `00-${"0".repeat(32)}-00f067aa0ba902b7-01`,
      `00-${id}-${"0".repeat(16)}-01`,
      `00-${id.toUpperCase()}-00f067aa0ba902b7-01`,
      `00-${id}-00f067aa0ba902b7`,
      "",
      undefined
    ]) {
      expect(Telemetry.parseTraceparent(invalid)).toBeUndefined()
    }
    expect(Telemetry.formatTraceparent(Telemetry.parseTraceparent(`00-${id}-00f067aa0ba902b7-01`)!)).toBe(`00-${id}-00f067aa0ba902b7-01`)
  })
})

describe("logs", () => {
  afterEach(() => vi.restoreAllMocks())

  it("writes JSON lines that carry the trace and span ids", async () => {
    const lines: Array<string> = []
    vi.spyOn(console, "log").mockImplementation((line: string) => void lines.push(line))
    const span = await Effect.runPromise(
      Effect.gen(function*() {
        yield* Effect.logInfo("hello").pipe(Effect.annotateLogs({ order: "42" }))
        return yield* Effect.currentSpan
      }).pipe(Effect.withSpan("logged"), Effect.provide(Logger.layer([Telemetry.jsonLogger("logs-test")])))
    )
    const entry = JSON.parse(lines.find((line) => line.includes("hello"))!)
    expect(entry).toMatchObject({
      level: "INFO",
      message: "hello",
      service: "logs-test",
      order: "42",
      trace_id: span.traceId,
      span_id: span.spanId
    })
  })
})

describe("a collector that is down or slow", () => {
  const stats = (name: string, vars: Record<string, string>) => {
    const worker = Worker.make({
      name,
      layer: Layer.empty,
      fetch: (request) =>
        new URL(request.url).pathname === "/stats"
          ? Telemetry.Telemetry.useSync((telemetry) => Response.json(telemetry.stats))
          : Effect.succeed(new Response("ok"))
    })
    return async (path: string, options: { readonly waitForExports?: boolean } = {}) => {
      const ctx = createExecutionContext()
      const response = await worker.fetch!(new Request(`http://probe.test${path}`), { ...env, ...vars }, ctx)
      if (options.waitForExports !== false) await waitOnExecutionContext(ctx)
      return response
    }
  }

  it("answers anyway, counts the spans it could not export, and backs off rather than trying per request", async () => {
    // Nothing listens on port 9: every export is refused.
    const refused = stats(`refused-${unique()}`, { OTLP_ENDPOINT: "http://127.0.0.1:9", OTLP_TIMEOUT_MS: "500" })
    expect(await (await refused("/ok")).text()).toBe("ok")
    // Within the first backoff (1 s) nine more requests end: none of them makes an export of its own.
    for (let i = 0; i < 9; i++) expect(await (await refused("/ok", { waitForExports: false })).text()).toBe("ok")
    const counted = await (await refused("/stats", { waitForExports: false })).json() as Telemetry.Stats
    expect(counted).toMatchObject({ exported: 0, dropped: 1, exports: 1, failedExports: 1 })
    // The one retry at the backoff's end takes the spans that waited, and fails too: counted, not lost silently.
    const read = async () => await (await refused("/stats", { waitForExports: false })).json() as Telemetry.Stats
    await eventually(async () => (await read()).failedExports === 2, 5)
    const later = await read()
    expect(later.exported).toBe(0)
    expect(later.dropped).toBeGreaterThanOrEqual(11)

    // A collector that never answers: the export is cut at OTLP_TIMEOUT_MS, its spans counted as dropped.
    await setMode("hang")
    try {
      const slow = stats(`slow-${unique()}`, { OTLP_TIMEOUT_MS: "300" })
      expect(await (await slow("/ok")).text()).toBe("ok")
      expect(await (await slow("/stats")).json()).toMatchObject({ exported: 0, dropped: 1 })
    } finally {
      await setMode("up")
    }
  })

  it("exports the spans that ended during a failed export at the backoff's end, with no request to bring them", async () => {
    const name = `stranded-${unique()}`
    const slow = stats(name, { OTLP_TIMEOUT_MS: "500" })
    await setMode("hang")
    try {
      // The first request's export hangs; the second ends meanwhile (past the export's delay) and leaves its spans to that export.
      expect(await (await slow("/first", { waitForExports: false })).text()).toBe("ok")
      await new Promise((resolve) => setTimeout(resolve, 200))
      expect(await (await slow("/second", { waitForExports: false })).text()).toBe("ok")
    } finally {
      await setMode("up")
    }
    // The export fails at its timeout; the retry at the backoff's end (1 s) takes the second request's spans.
    await eventually(async () => (await spansOf({ service: name })).some((span) => span.attributes["url.path"] === "/second"), 10)
  })

  it("keeps a copy of the spans in the mesh at once while the collector is backed off", async () => {
    const name = `console-${unique()}`
    // Nothing listens on port 9; the mesh's trace store is the runner's MESH_STATS binding. Metrics
    // (whose export to port 9 takes its whole timeout) go with the first request only.
    const refused = stats(name, {
      OTLP_ENDPOINT: "http://127.0.0.1:9",
      OTLP_EXPORT_DELAY_MS: "0",
      KEEP_TRACES: "true",
      METRICS_INTERVAL_SECONDS: "3600"
    })
    const store = env.MESH_STATS.get(env.MESH_STATS.idFromName(Telemetry.traceStoreName)) as unknown as Pick<MeshStats.MeshStatsObject, "traces">
    const kept = async () => (await store.traces({ limit: 100 })).filter((trace) => trace.services.includes(name)).length
    // Two refused exports, the second after the first backoff: the isolate backs off for 2 s.
    await refused("/first")
    await new Promise((resolve) => setTimeout(resolve, 1_100))
    await refused("/second")
    expect(await kept()).toBe(2)
    // A request within the backoff: its spans reach the mesh now, before the collector is tried again.
    await refused("/third", { waitForExports: false })
    await eventually(async () => (await kept()) === 3, 5)
    expect(await (await refused("/stats", { waitForExports: false })).json()).toMatchObject({ exports: 2, failedExports: 2, exported: 0 })
  })

  it("serves the mesh's requests while the receiver fails or hangs", async () => {
    const admin = await signedIn("admin")
    try {
      for (const mode of ["fail", "hang"] as const) {
        await setMode(mode)
        const response = await gateway(`/api/users/${admin.id}`, { headers: { authorization: `Bearer ${admin.token}` } })
        expect(response.status).toBe(200)
        expect(((await response.json()) as { readonly id: string }).id).toBe(admin.id)
      }
    } finally {
      await setMode("up")
    }
  })
})
