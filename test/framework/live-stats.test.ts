/**
 * Live figures (src/layers/observability/LiveStats.ts): what an isolate
 * counts, how it reports without losing a count, the bounds on what it and
 * the object keep, and the real MeshStatsObject adding reports that arrive
 * at once; and the mesh's sample of recent traces (TraceSample.ts).
 */
import { expect, it } from "@effect/vitest"
import { evictDurableObject, runInDurableObject } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Effect } from "effect"
import { describe } from "vitest"
import * as LiveStats from "../../src/layers/observability/LiveStats.ts"
import * as MeshStats from "../../src/layers/observability/MeshStats.ts"
import { maxSpansPerTrace, maxTraces, newestKept, summarize, type TraceDetail, TraceSample, traceRetentionMillis } from "../../src/layers/observability/TraceSample.ts"
import type { KeptSpan } from "../../src/runtime/Telemetry.ts"
import { unique } from "../helpers.ts"

const totalCalls = (figures: LiveStats.Figures) =>
  Object.values(figures.calls).reduce((sum, calls) => sum + calls.n, 0)

describe("an isolate's recorder", () => {
  it("counts calls, failures and latency buckets, counters and transitions", () => {
    const recorder = new LiveStats.Recorder(10_000, 0)
    recorder.call("users@blue", 200, 0.4)
    recorder.call("users@blue", 404, 12)
    recorder.call("users@blue", 503, 12_000)
    recorder.count("retries", "users@blue")
    recorder.count("retries", "users@blue", 2)
    recorder.transition({ upstream: "users@blue", from: "Closed", to: "Open", at: 5 })
    const figures = recorder.pending()
    expect(figures.calls["users@blue"]).toMatchObject({ n: 3, errors: 1 })
    const latency = figures.calls["users@blue"]!.latency
    expect(latency[0]).toBe(1) // up to 1 ms
    expect(latency[LiveStats.latencyBounds.indexOf(15)]).toBe(1) // 10-15 ms
    expect(latency[LiveStats.latencyBounds.length]).toBe(1) // slower than 10 s
    expect(figures.counters).toEqual({ "retries|users@blue": 3 })
    expect(figures.transitions).toEqual([{ upstream: "users@blue", from: "Closed", to: "Open", at: 5 }])
  })

  it("reports when the interval has passed and there is something to say, one report at a time", async () => {
    const recorder = new LiveStats.Recorder(10_000, 0)
    expect(recorder.due(20_000)).toBe(false) // nothing counted
    recorder.call("products", 200, 3)
    expect(recorder.due(9_999)).toBe(false)
    expect(recorder.due(10_000)).toBe(true)
    const sent: Array<LiveStats.Figures> = []
    let arrive: () => void = () => {}
    const report = recorder.report(10_000, (figures) => {
      sent.push(figures)
      return new Promise<void>((resolve) => (arrive = resolve))
    })
    recorder.call("products", 200, 3)
    expect(recorder.due(30_000)).toBe(false) // one on its way
    arrive()
    await report
    expect(recorder.due(30_000)).toBe(true)
    expect(totalCalls(sent[0]!)).toBe(1)
    expect(totalCalls(recorder.pending())).toBe(1)
  })

  it("stops waiting for a report that never settles after 30 s, so the next one still goes", async () => {
    const recorder = new LiveStats.Recorder(10_000, 0)
    recorder.call("products", 200, 3)
    void recorder.report(10_000, () => new Promise<never>(() => {}))
    recorder.call("products", 200, 3)
    expect(recorder.due(30_000)).toBe(false)
    expect(recorder.due(40_001)).toBe(true)
    const sent: Array<LiveStats.Figures> = []
    await recorder.report(40_001, (figures) => Promise.resolve(sent.push(figures)))
    expect(totalCalls(sent[0]!)).toBe(1)
    expect(recorder.due(60_000)).toBe(false) // nothing new to say
  })

  it("loses no count when a report fails: it leaves with the next one, with what came meanwhile", async () => {
    const recorder = new LiveStats.Recorder(0, 0)
    for (let i = 0; i < 10; i++) recorder.call("users@green", i % 2 === 0 ? 500 : 200, 5)
    recorder.count("ratelimit.rejected", "api", 4)
    const failing = recorder.report(1, () => {
      // Counted while the report is on its way.
      recorder.call("users@green", 200, 5)
      recorder.count("ratelimit.rejected", "api")
      return Promise.reject(new Error("the object did not answer"))
    })
    await failing
    const kept = recorder.pending()
    expect(kept.calls["users@green"]).toMatchObject({ n: 11, errors: 5 })
    expect(kept.counters["ratelimit.rejected|api"]).toBe(5)
    const sent: Array<LiveStats.Figures> = []
    await recorder.report(2, (figures) => Promise.resolve(sent.push(figures)))
    expect(sent[0]!.calls["users@green"]!.n).toBe(11)
    expect(totalCalls(recorder.pending())).toBe(0)
  })

  it("keeps at most maxSeries series and maxCounters counters, adding the rest up under (other)", () => {
    const recorder = new LiveStats.Recorder(0, 0)
    for (let i = 0; i < 1000; i++) {
      recorder.call(`service-${i}`, 200, 1)
      recorder.count("cache", `status-${i}`)
    }
    recorder.transition({ upstream: "x", from: "Closed", to: "Open", at: 0 })
    for (let i = 1; i <= 100; i++) recorder.transition({ upstream: "x", from: "Closed", to: "Open", at: i })
    const figures = recorder.pending()
    expect(Object.keys(figures.calls).length).toBe(LiveStats.maxSeries + 1)
    expect(totalCalls(figures)).toBe(1000)
    expect(figures.calls[LiveStats.other]!.n).toBe(1000 - LiveStats.maxSeries)
    expect(Object.keys(figures.counters).length).toBe(LiveStats.maxCounters + 1)
    expect(Object.values(figures.counters).reduce((a, b) => a + b, 0)).toBe(1000)
    expect(figures.counters[`cache|${LiveStats.other}`]).toBe(1000 - LiveStats.maxCounters)
    // The newest transitions are kept.
    expect(figures.transitions.length).toBe(LiveStats.maxTransitions)
    expect(figures.transitions[0]!.at).toBe(100)
  })
})

describe("the object's windows", () => {
  const report = (series: string, n: number): LiveStats.Figures => {
    const recorder = new LiveStats.Recorder(0, 0)
    for (let i = 0; i < n; i++) recorder.call(series, 200, 2)
    return recorder.pending()
  }

  it("adds reports into 10 s windows and keeps 15 minutes of them, whatever arrives", () => {
    const windows = new MeshStats.Windows()
    const start = 1_700_000_000_000
    const dropped: Array<number> = []
    // Two hours of reports, one every 2 s, each from a different series.
    for (let t = 0; t < 2 * 3600_000; t += 2_000) {
      dropped.push(...windows.add(report(`s-${t % 7}`, 3), start + t).dropped)
      expect(windows.windows.size).toBeLessThanOrEqual(MeshStats.retentionMillis / MeshStats.windowMillis + 1)
    }
    expect(dropped.length).toBeGreaterThan(600)
    const now = start + 2 * 3600_000
    const recent = windows.since(now - 60_000)
    expect(recent.length).toBe(6)
    // Five reports of 3 calls per window.
    for (const { figures } of recent.slice(0, 5)) expect(totalCalls(figures)).toBe(15)
  })

  it("caps the series of a window as a report's", () => {
    const windows = new MeshStats.Windows()
    for (let i = 0; i < 500; i++) windows.add(report(`service-${i}`, 1), 1_000)
    const [only] = windows.since(0)
    expect(Object.keys(only!.figures.calls).length).toBe(LiveStats.maxSeries + 1)
    expect(totalCalls(only!.figures)).toBe(500)
  })

  it("reads percentiles from the buckets, linear within one", () => {
    const calls: LiveStats.Calls = { n: 0, errors: 0, latency: new Array(LiveStats.latencyBounds.length + 1).fill(0) }
    expect(MeshStats.percentile(calls, 0.5)).toBeNull()
    // 98 calls within 5-7 ms, 2 within 750-1000 ms.
    calls.n = 100
    calls.latency[LiveStats.latencyBounds.indexOf(7)] = 98
    calls.latency[LiveStats.latencyBounds.indexOf(1000)] = 2
    expect(MeshStats.percentile(calls, 0.5)).toBeGreaterThan(5)
    expect(MeshStats.percentile(calls, 0.5)).toBeLessThanOrEqual(7)
    expect(MeshStats.percentile(calls, 0.99)).toBeGreaterThan(750)
    expect(MeshStats.percentile(calls, 0.99)).toBeLessThanOrEqual(1000)
  })
})

describe("MeshStatsObject", () => {
  const stub = (name: string) =>
    env.MESH_STATS.get(env.MESH_STATS.idFromName(name)) as unknown as Pick<MeshStats.MeshStatsObject, "add" | "read">

  it.effect("adds 50 isolates' reports sent at once exactly, and keeps them through an eviction", () =>
    Effect.gen(function*() {
      const name = `test-${unique()}`
      const reports = Array.from({ length: 50 }, (_, i) => {
        const recorder = new LiveStats.Recorder(0, 0)
        for (let n = 0; n <= i; n++) recorder.call("users@green", n % 3 === 0 ? 502 : 200, n)
        recorder.count("ratelimit.rejected", "api", i)
        if (i % 10 === 0) recorder.transition({ upstream: "users@green", from: "Closed", to: "Open", at: Date.now() - i })
        return recorder.pending()
      })
      yield* Effect.promise(() => Promise.all(reports.map((figures) => stub(name).add(figures))))
      const expected = {
        calls: (50 * 51) / 2,
        errors: reports.reduce((sum, figures) => sum + figures.calls["users@green"]!.errors, 0),
        rejected: (49 * 50) / 2
      }
      const check = (read: Awaited<ReturnType<ReturnType<typeof stub>["read"]>>) => {
        const total = LiveStats.emptyFigures()
        for (const { figures } of read.windows) LiveStats.merge(total, figures)
        expect(total.calls["users@green"]).toMatchObject({ n: expected.calls, errors: expected.errors })
        expect(total.calls["users@green"]!.latency.reduce((a, b) => a + b, 0)).toBe(expected.calls)
        expect(total.counters["ratelimit.rejected|api"]).toBe(expected.rejected)
        expect(read.transitions.length).toBe(5)
      }
      check(yield* Effect.promise(() => stub(name).read(0)))
      yield* Effect.promise(() => evictDurableObject(env.MESH_STATS.get(env.MESH_STATS.idFromName(name))))
      check(yield* Effect.promise(() => stub(name).read(0)))
    }))

  it.effect("answers a report of both Workers' objects: rates, error rates, percentiles, counters, transitions", () =>
    Effect.gen(function*() {
      const [gateway, router] = [`gw-${unique()}`, `rt-${unique()}`]
      const recorder = new LiveStats.Recorder(0, 0)
      for (let n = 0; n < 40; n++) recorder.call("users@green", n < 10 ? 503 : 200, 4)
      recorder.transition({ upstream: "users@green", from: "Closed", to: "Open", at: Date.now() })
      yield* Effect.promise(() => stub(router).add(recorder.pending()))
      const edge = new LiveStats.Recorder(0, 0)
      edge.call("router", 200, 6)
      edge.count("cache", "HIT", 3)
      yield* Effect.promise(() => stub(gateway).add(edge.pending()))
      const report = yield* MeshStats.readReport(env.MESH_STATS, [gateway, router], 5, Date.now())
      expect(report.windowStarts.length).toBe(30)
      const green = report.series.find((series) => series.series === "users@green")!
      expect(green).toMatchObject({ from: router, requests: 40, errors: 10, errorRate: 0.25 })
      expect(green.p50Ms).toBeGreaterThan(3)
      expect(green.p50Ms).toBeLessThanOrEqual(5)
      expect(green.timeline.reduce((sum, window) => sum + window.requests, 0)).toBe(40)
      expect(report.series.find((series) => series.series === "router")).toMatchObject({ from: gateway, requests: 1 })
      expect(report.counters).toContainEqual({ name: "cache", label: "HIT", from: gateway, count: 3 })
      expect(report.transitions).toEqual([expect.objectContaining({ upstream: "users@green", from: "Closed", to: "Open", worker: router })])
      expect(report.unavailable).toEqual([])
    }))
})

describe("the mesh's trace sample", () => {
  const span = (traceId: string, n: number, options: { error?: string; address?: string; startMs?: number } = {}): KeptSpan => ({
    traceId,
    spanId: `${traceId.slice(0, 12)}${String(n).padStart(4, "0")}`,
    parentSpanId: n === 0 ? undefined : `${traceId.slice(0, 12)}0000`,
    name: n === 0 ? "GET /api/*" : `span ${n}`,
    service: n === 0 ? "gateway" : "router",
    kind: options.address === undefined ? "server" : "client",
    startMs: options.startMs ?? 1_000 + n,
    durationMs: 2,
    error: options.error,
    attributes: options.address === undefined ? {} : { "server.address": options.address },
    events: []
  })
  const traceId = (n: number) => n.toString(16).padStart(32, "0")

  it("keeps the newest traces, failed ones longest, each with at most maxSpansPerTrace spans", () => {
    const sample = new TraceSample()
    // Ten failed traces first, then 300 that did not fail.
    for (let n = 0; n < 310; n++) sample.keep([span(traceId(n), 0, n < 10 ? { error: "503" } : {}), span(traceId(n), 1)], n)
    expect(sample.traces.size).toBe(maxTraces)
    for (let n = 0; n < 10; n++) expect(sample.traces.has(traceId(n))).toBe(true)
    expect(sample.traces.has(traceId(309))).toBe(true)
    expect(sample.traces.has(traceId(10))).toBe(false)

    const big = traceId(999)
    sample.keep(Array.from({ length: 250 }, (_, n) => span(big, n)), 400)
    expect(sample.traces.get(big)!.spans.length).toBe(maxSpansPerTrace)
    expect(summarize(big, sample.traces.get(big)!).spans).toBe(250)

    // Fifteen minutes later, nothing old is kept.
    sample.keep([span(traceId(5000), 0)], 400 + traceRetentionMillis)
    expect([...sample.traces.keys()]).toEqual([traceId(5000)])
  })

  it("keeps the newest newestKept traces whatever failed, so a trace's first spans are not dropped for older failures", () => {
    const sample = new TraceSample()
    for (let n = 0; n < 150; n++) sample.keep([span(traceId(n), 0, { error: "404" })], n)
    expect(sample.traces.size).toBe(maxTraces)
    // A new trace's innermost spans arrive first, without the failure its callers' client spans will carry.
    const fresh = traceId(5000)
    sample.keep([span(fresh, 2)], 200)
    expect(sample.traces.has(fresh)).toBe(true)
    sample.keep([span(fresh, 0, { error: "404" })], 201)
    expect(sample.traces.get(fresh)!.spans.length).toBe(2)
    // Sixty traces that did not fail: the newest newestKept of them stay, and the newest failed ones beside them.
    for (let n = 0; n < 60; n++) sample.keep([span(traceId(1000 + n), 0)], 300 + n)
    expect(sample.traces.size).toBe(maxTraces)
    expect(sample.traces.has(fresh)).toBe(true)
    expect(sample.traces.has(traceId(1059))).toBe(true)
    expect(sample.traces.has(traceId(1010))).toBe(true)
    expect(sample.traces.has(traceId(1009))).toBe(false)
    expect(sample.list({ limit: maxTraces, errors: true }).length).toBe(maxTraces - newestKept)
  })

  it("lists traces newest first, by the upstreams they called and whether they failed", () => {
    const sample = new TraceSample()
    sample.keep([span(traceId(1), 0, { startMs: 1_000 }), span(traceId(1), 1, { address: "users@green", error: "503", startMs: 1_001 })], 0)
    sample.keep([span(traceId(2), 0, { startMs: 2_000 }), span(traceId(2), 1, { address: "users@blue", startMs: 2_001 })], 0)
    expect(sample.list({ limit: 10 }).map((trace) => trace.traceId)).toEqual([traceId(2), traceId(1)])
    const failed = sample.list({ limit: 10, series: "users@green", errors: true })
    expect(failed).toEqual([expect.objectContaining({ traceId: traceId(1), name: "GET /api/*", services: ["gateway", "router"], calls: ["users@green"], spans: 2 })])
    expect(failed[0]!.error).toContain("503")
    expect(sample.list({ limit: 10, series: "users@blue", errors: true })).toEqual([])
  })

  it.effect("the object keeps the spans isolates send at once, whole, through an eviction", () =>
    Effect.gen(function*() {
      const name = `traces-${unique()}`
      const stub = () => env.MESH_STATS.get(env.MESH_STATS.idFromName(name)) as unknown as Pick<MeshStats.MeshStatsObject, "keepSpans" | "trace" | "traces">
      const id = crypto.randomUUID().replaceAll("-", "")
      // Twenty isolates, each with five spans of the same trace.
      yield* Effect.promise(() => Promise.all(Array.from({ length: 20 }, (_, isolate) =>
        stub().keepSpans(Array.from({ length: 5 }, (_, n) => span(id, 1 + isolate * 5 + n))).then(() => undefined)
      )))
      const check = (detail: TraceDetail | undefined) => {
        expect(detail?.items.length).toBe(100)
        expect(new Set(detail!.items.map((item) => item.spanId)).size).toBe(100)
      }
      check(yield* Effect.promise(() => stub().trace(id)))
      yield* Effect.promise(() => evictDurableObject(env.MESH_STATS.get(env.MESH_STATS.idFromName(name))))
      check(yield* Effect.promise(() => stub().trace(id)))
      expect((yield* Effect.promise(() => stub().traces({ limit: 5 }))).map((trace) => trace.traceId)).toEqual([id])
    }))
})

describe("MeshStatsObject's storage", () => {
  it.effect("holds one key per kept trace and per window, never more than the sample and the retention allow", () =>
    Effect.gen(function*() {
      const stub = env.LOCAL_MESH_STATS.get(env.LOCAL_MESH_STATS.idFromName(`storage-${unique()}`))
      const store = stub as unknown as Pick<MeshStats.MeshStatsObject, "keepSpans" | "add">
      // 500 traces of 2 spans, sent by 50 "isolates" at once.
      yield* Effect.promise(() => Promise.all(Array.from({ length: 50 }, (_, isolate) =>
        store.keepSpans(Array.from({ length: 10 }, (_, n) => {
          const traceId = (isolate * 10 + n + 1).toString(16).padStart(32, "0")
          return [0, 1].map((span): KeptSpan => ({
            traceId,
            spanId: `${traceId.slice(-12)}000${span}`,
            ...(span === 0 ? {} : { parentSpanId: `${traceId.slice(-12)}0000` }),
            name: "GET /api/*",
            service: "gateway",
            kind: "server",
            startMs: Date.now(),
            durationMs: 1,
            attributes: {},
            events: []
          }))
        }).flat()).then(() => undefined)
      )))
      // And 200 reports of 150 series each: one window (or two, at a boundary), capped at maxSeries + 1 series.
      yield* Effect.promise(() => Promise.all(Array.from({ length: 200 }, (_, report) => {
        const recorder = new LiveStats.Recorder(0, 0)
        for (let n = 0; n < 150; n++) recorder.call(`service-${report}-${n}`, 200, 1)
        return store.add(recorder.pending())
      })))
      const stored = yield* Effect.promise(() => runInDurableObject(stub, (_instance, state) => ({
        traces: [...state.storage.kv.list({ prefix: "t:" })].length,
        windows: [...state.storage.kv.list<LiveStats.Figures>({ prefix: "w:" })].map(([, figures]) => figures)
      })))
      expect(stored.traces).toBe(maxTraces)
      expect(stored.windows.length).toBeGreaterThanOrEqual(1)
      expect(stored.windows.length).toBeLessThanOrEqual(2)
      for (const window of stored.windows) expect(Object.keys(window.calls).length).toBeLessThanOrEqual(LiveStats.maxSeries + 1)
      expect(stored.windows.reduce((sum, window) => sum + totalCalls(window), 0)).toBe(200 * 150)
    }))
})
