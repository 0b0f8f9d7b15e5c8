/**
 * The mesh's live figures through the gateway's admin API (GET /api/admin/live):
 * the real gateway and router counting in their isolates and reporting to the
 * router's MeshStatsObject (src/layers/observability/MeshStats.ts).
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { afterEach, describe } from "vitest"
import type { LiveReport } from "../../src/layers/observability/MeshStats.ts"
import { eventually, expectProblem, gateway, send, signedIn } from "../helpers.ts"

const kv = env.MESH_CONFIG

const live = async (token: string): Promise<LiveReport> => {
  const response = await send("GET", "/api/admin/live?minutes=15", undefined, token)
  expect(response.status).toBe(200)
  expect(response.headers.get("cache-control")).toBe("no-store")
  return await response.json() as LiveReport
}

const seriesOf = (report: LiveReport, series: string) =>
  report.series.find((entry) => entry.series === series) ?? { requests: 0, errors: 0 }
const counterOf = (report: LiveReport, name: string, label: string) =>
  report.counters.find((entry) => entry.name === name && entry.label === label)?.count ?? 0

/** A request through the gateway and the router that is counted elsewhere: it makes both report what they counted. */
const nudge = async () => (await gateway("/api/auth/.well-known/jwks.json")).body?.cancel()

describe("live figures", () => {
  afterEach(() => kv.delete("traffic/users"))

  it("counts every call across the mesh exactly, by upstream and version", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    const before = await live(admin.token)
    // Sessions: a service nothing else in the mesh calls (every request's user status check goes to users).
    const reads = await Promise.all(Array.from({ length: 30 }, () =>
      gateway(`/api/sessions/${crypto.randomUUID()}`, { headers: { authorization: `Bearer ${member.token}` } })
    ))
    for (const response of reads) {
      expect(response.status).toBeLessThan(500)
      await response.body?.cancel()
    }
    const added = async () => {
      await nudge()
      return seriesOf(await live(admin.token), "sessions").requests - seriesOf(before, "sessions").requests
    }
    await eventually(async () => (await added()) >= 30)
    expect(await added()).toBe(30)
    const after = await live(admin.token)
    expect(seriesOf(after, "sessions")).toMatchObject({ from: "router" })
    expect(seriesOf(after, "sessions").errors).toBe(seriesOf(before, "sessions").errors)
    // Each version of a route with versions is its own series; the gateway reports its own calls, to the router.
    expect(seriesOf(after, "users@blue").requests).toBeGreaterThan(seriesOf(before, "users@blue").requests)
    expect(seriesOf(after, "router").requests).toBeGreaterThan(seriesOf(before, "router").requests + 30)
    expect(after.unavailable).toEqual([])
  })

  it("shows a breaker opening under faults an admin set on a split, and the retries they cost", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    const before = await live(admin.token)
    const set = await send("PUT", "/api/admin/traffic/users", {
      stable: "blue",
      canary: "green",
      weight: 100,
      // The automatic rollback and outlier detection would move users back to blue before the
      // breaker had seen enough failures (three quarters of its last 50 calls).
      autoRollback: { minRequests: 100_000 },
      outlierDetection: { enabled: false },
      faults: { green: { abortPercent: 100, abortStatus: 503 } }
    }, admin.token)
    expect(set.status).toBe(200)
    const statuses: Array<number> = []
    for (let i = 0; i < 60; i++) {
      const response = await gateway(`/api/users/${member.id}`, { headers: { authorization: `Bearer ${member.token}` } })
      statuses.push(response.status)
      await response.body?.cancel()
    }
    // The gateway's own user status checks go to green too, and fail there (502); then the open breaker refuses.
    expect(statuses.every((status) => status >= 500)).toBe(true)
    let report = before
    await eventually(async () => {
      await nudge()
      report = await live(admin.token)
      return report.transitions.some((transition) =>
        transition.upstream === "users@green" && transition.to === "Open" && transition.at > before.to
      )
    })
    expect(seriesOf(report, "users@green").errors - seriesOf(before, "users@green").errors).toBeGreaterThanOrEqual(20)
    // Each refused-by-fault call was retried while the budget allowed.
    expect(counterOf(report, "retries", "users@green")).toBeGreaterThan(counterOf(before, "retries", "users@green"))

    // The failed calls' traces are kept, found by the series that failed.
    await eventually(async () => {
      const list = await (await send("GET", "/api/admin/traces?series=users%40green&errors=true", undefined, admin.token)).json() as { traces: Array<unknown> }
      return list.traces.length > 0
    })

    // Faults off, the breaker closes again once green answers its probes (openMs = 1 s, then 2 probes):
    // its transition to Closed shows in the live figures, and then the mesh's health report (each
    // router reuses its own for 5 s) is ok again, so the files after this one see a healthy mesh.
    const opened = report.transitions.find((transition) => transition.upstream === "users@green" && transition.to === "Open")!.at
    await kv.delete("traffic/users")
    await eventually(async () => {
      const response = await gateway(`/api/users/${member.id}`, { headers: { authorization: `Bearer ${admin.token}`, "x-use-version": "green" } })
      await response.body?.cancel()
      await nudge()
      return (await live(admin.token)).transitions.some((transition) =>
        transition.upstream === "users@green" && transition.to === "Closed" && transition.at > opened)
    })
    await eventually(async () => (await send("GET", "/api/admin/health", undefined, admin.token)).status === 200)
  })

  it("counts rate-limit rejections by policy and edge-cache lookups", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    const before = await live(admin.token)
    // The tests' gateway allows each client 3 HEAD /api/products an hour (policy "tight").
    for (let i = 0; i < 5; i++) {
      await gateway("/api/products", { method: "HEAD", headers: { authorization: `Bearer ${member.token}` } })
    }
    for (let i = 0; i < 2; i++) {
      const response = await gateway("/api/products?limit=3", { headers: { authorization: `Bearer ${member.token}` } })
      expect(response.status).toBe(200)
      await response.body?.cancel()
    }
    await eventually(async () => {
      await nudge()
      const report = await live(admin.token)
      const lookups = (of: LiveReport) => of.counters.filter((entry) => entry.name === "cache").reduce((sum, entry) => sum + entry.count, 0)
      return counterOf(report, "ratelimit.rejected", "tight") - counterOf(before, "ratelimit.rejected", "tight") === 2 &&
        lookups(report) - lookups(before) >= 2
    })
  })

  it("answers admins only, and refuses a span it does not keep", async () => {
    const member = await signedIn()
    await expectProblem(await send("GET", "/api/admin/live", undefined, member.token), 403)
    const admin = await signedIn("admin")
    const problem = await expectProblem(await send("GET", "/api/admin/live?minutes=60", undefined, admin.token), 400)
    expect(problem["errors"]).toEqual([expect.objectContaining({ path: ["query", "minutes"] })])
    await expectProblem(await send("POST", "/api/admin/live", undefined, admin.token), 405)
  })

  it("refuses faults for a version the service lacks", async () => {
    const admin = await signedIn("admin")
    const problem = await expectProblem(await send("PUT", "/api/admin/traffic/users", {
      stable: "blue",
      weight: 0,
      faults: { purple: { abortPercent: 50 } }
    }, admin.token), 400)
    expect(problem["errors"]).toEqual([expect.objectContaining({ path: ["payload", "faults", "purple"] })])
  })
})

describe("the mesh's trace sample", () => {
  it("keeps a request's trace across the gateway, the router and the service, as a tree", async () => {
    const admin = await signedIn("admin")
    const member = await signedIn()
    const response = await gateway(`/api/sessions/${crypto.randomUUID()}`, { headers: { authorization: `Bearer ${member.token}` } })
    await response.body?.cancel()
    let found: { traceId: string; services: Array<string> } | undefined
    await eventually(async () => {
      const list = await (await send("GET", "/api/admin/traces?series=sessions&limit=100", undefined, admin.token)).json() as { traces: Array<{ traceId: string; services: Array<string>; startedAt: string }> }
      found = list.traces.find((trace) => ["gateway", "router", "sessions"].every((service) => trace.services.includes(service)))
      return found !== undefined
    })
    const detail = await (await send("GET", `/api/admin/traces/${found!.traceId}`, undefined, admin.token)).json() as {
      items: Array<{ spanId: string; parentSpanId?: string; service: string; startMs: number }>
    }
    const ids = new Set(detail.items.map((item) => item.spanId))
    // One root; every other span's parent is in the trace; spans in start order.
    expect(detail.items.filter((item) => item.parentSpanId === undefined || !ids.has(item.parentSpanId)).length).toBe(1)
    expect(detail.items.map((item) => item.startMs)).toEqual(detail.items.map((item) => item.startMs).toSorted((a, b) => a - b))
    await expectProblem(await send("GET", "/api/admin/traces/not-a-trace-id", undefined, admin.token), 400)
    await expectProblem(await send("GET", `/api/admin/traces/${"0".repeat(32)}`, undefined, admin.token), 404)
    await expectProblem(await send("GET", "/api/admin/traces", undefined, member.token), 403)
  })
})
