/**
 * npm run soak -- --minutes N: the whole mesh under steady, bounded load for
 * N minutes, with faults injected, then checks that nothing was lost and
 * every policy did what it is configured to do.
 *
 * The mesh runs in one workerd (Miniflare), bundled from source and
 * configured from its wrangler files as the tests and the benchmark run it,
 * with fresh keys and databases. Three things differ, all on purpose:
 *
 * - the products route injects faults: 5% of attempts answered 503 without
 *   being sent, 5% delayed by 300 ms (`FAULT_INJECTION`);
 * - users' green version is a bad release: a Worker in front of the real
 *   green that answers 500 to 40% of reads (its health check still passes);
 * - the rate limits are raised past what one client sends here.
 *
 * Traffic (only to 127.0.0.1, `--concurrency` requests at a time): product
 * listings, a user's profile, counter increments on one session, new users
 * created by the admin, and /health. A fifth of the way in, 50% of users are
 * sent to green with automatic rollback; at three fifths, green gets reads
 * mirrored instead. At the end it checks:
 *
 * - every acknowledged write is there (each created user reads back);
 * - the session counter is exact: at least every acknowledged increment,
 *   at most every one sent (a failed answer may hide an applied write);
 * - the bad canary was rolled back, and the mirror counted its mismatches;
 * - the products breaker stayed closed (5% failures are far below its
 *   threshold) and retries absorbed the faults: under 1% of reads failed;
 * - p99 of successful product reads stayed under 1.5 s;
 * - workerd's memory stayed flat: the last samples within 30% of the first
 *   after warm-up.
 *
 * It prints a report, writes it to bench/results/soak-<time>.json, and exits
 * non-zero when an invariant does not hold.
 */
import { convertV4MiniflareOptions, Miniflare } from "miniflare"
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { integer, main, usage } from "./cli.ts"
import { generateKey, generateMeshKeys, meshNameOf } from "./keys.ts"
import { applyMigrations, buildMesh, localDatabases, root, scriptName, workers } from "./mesh.ts"

const help = `
npm run soak: the mesh under bounded load for a while, with faults injected, then invariants checked.

  npm run soak                          2 minutes
  npm run soak -- --minutes 10          ten
  npm run soak -- --concurrency 4       requests in flight at once (default 6)

Traffic goes only to 127.0.0.1. The report is printed and written to bench/results/soak-<time>.json;
the exit code is 1 when an invariant does not hold.
`

/** A bad release: green answers 500 to 40% of reads, while its health check passes. */
const badGreen = `export default {
  async fetch(request, env) {
    if (request.method === "GET" && new URL(request.url).pathname !== "/health" && Math.random() < 0.4) {
      return Response.json({ title: "Internal Server Error", status: 500 }, { status: 500, headers: { "content-type": "application/problem+json" } })
    }
    return env.GREEN.fetch(request)
  }
}`

type Options = Record<string, unknown> & { readonly name: string; bindings?: Record<string, unknown>; serviceBindings?: Record<string, unknown> }

/** Resident memory of every workerd this process started, in KiB. */
const workerdMemory = (): number => {
  let total = 0
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const status = readFileSync(`/proc/${entry}/status`, "utf8")
      const parent = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1])
      if (parent !== process.pid || !/^Name:\s+workerd/m.test(status)) continue
      total += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0)
    } catch {
      // It ended meanwhile.
    }
  }
  return total
}

const percentile = (values: ReadonlyArray<number>, p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
}

const soak = async (minutes: number, concurrency: number) => {
  const signing = await generateKey()
  const meshKeys = await generateMeshKeys([...new Set(workers.map((worker) => meshNameOf(worker.name)))])
  const mesh = (await buildMesh(join(root, ".build/soak"), {
    secrets: (name) => ({
      MESH_SIGNING_KEY: JSON.stringify(meshKeys.signing[meshNameOf(name)]),
      MESH_PUBLIC_KEYS: JSON.stringify(meshKeys.published),
      ...(name === "auth" ? { AUTH_SIGNING_KEYS: JSON.stringify({ active: signing.kid, keys: [signing] }) } : {})
    })
  })) as unknown as Array<Options>
  const byName = (name: string) => mesh.find((options) => options.name === name)!
  const router = byName("meshwork-router")
  const routes = router.bindings!["ROUTES"] as Array<Record<string, unknown>>
  router.bindings = {
    ...router.bindings,
    FAULT_INJECTION: "true",
    TRAFFIC_CACHE_SECONDS: "1",
    ROUTES: routes.map((route) =>
      route["service"] === "products" ? { ...route, faults: { abortPercent: 5, abortStatus: 503, delayPercent: 5, delayMs: 300 } } : route
    )
  }
  router.serviceBindings = { ...router.serviceBindings, USERS_GREEN: "soak-bad-green" }
  const gateway = byName("meshwork-gateway")
  const limits = gateway.bindings!["RATE_LIMITS"] as Array<Record<string, unknown>>
  gateway.bindings = {
    ...gateway.bindings,
    RATE_LIMITS: limits.map((limit) => ({ ...limit, limit: 1_000_000 }))
  }
  const ordered = [gateway, ...mesh.filter((options) => options !== gateway)]
  const mf = new Miniflare(convertV4MiniflareOptions({
    workers: [
      ...ordered,
      { name: "soak-bad-green", modules: true, script: badGreen, compatibilityDate: "2026-11-01", serviceBindings: { GREEN: "meshwork-users-green" } }
    ] as never
  }))
  try {
    const base = String(await mf.ready).replace(/\/$/, "")
    for (const database of localDatabases()) {
      const worker = workers.find((candidate) => candidate.config === database.config)!
      await applyMigrations(await mf.getD1Database(database.binding, scriptName(worker)), database)
    }
    console.log(`soak: the mesh is up at ${base}; ${minutes} min, ${concurrency} requests at a time`)

    const login = async (email: string, password: string) => {
      const response = await fetch(`${base}/api/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email, password })
      })
      if (!response.ok) throw new Error(`login as ${email}: ${response.status} ${await response.text()}`)
      return (await response.json() as { access_token: string }).access_token
    }
    const tokens = { admin: await login("ada@meshwork.dev", "ada-local-password"), user: await login("uma@meshwork.dev", "uma-local-password") }
    const request = (method: string, path: string, token: string | undefined, body?: unknown) =>
      fetch(`${base}${path}`, {
        method,
        headers: {
          ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
          ...(body === undefined ? {} : { "content-type": "application/json" })
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) })
      })
    const admin = async (method: string, path: string, body?: unknown) => {
      const response = await request(method, `/api/admin${path}`, tokens.admin, body)
      const text = await response.text()
      if (!response.ok) throw new Error(`${method} /api/admin${path}: ${response.status} ${text}`)
      return JSON.parse(text) as Record<string, unknown>
    }

    // Members, each in their own traffic bucket: a canary at 50% gets about half of them.
    const password = "soak-local-password"
    const members: Array<{ readonly id: string; readonly email: string; token: string }> = []
    for (let n = 0; n < 8; n++) {
      const email = `soak-member-${n}-${crypto.randomUUID().slice(0, 8)}@meshwork.dev`
      const createdMember = await request("POST", "/api/users", tokens.admin, { email, name: `Member ${n}` })
      if (createdMember.status !== 201) throw new Error(`creating ${email}: ${createdMember.status} ${await createdMember.text()}`)
      const { id } = await createdMember.json() as { id: string }
      const set = await request("PUT", `/api/auth/users/${id}/password`, tokens.admin, { password })
      if (set.status !== 204) throw new Error(`setting ${email}'s password: ${set.status} ${await set.text()}`)
      members.push({ id, email, token: await login(email, password) })
    }
    // Tokens live 5 minutes: new ones every 4.
    const relogin = setInterval(async () => {
      tokens.admin = await login("ada@meshwork.dev", "ada-local-password").catch(() => tokens.admin)
      tokens.user = await login("uma@meshwork.dev", "uma-local-password").catch(() => tokens.user)
      for (const member of members) member.token = await login(member.email, password).catch(() => member.token)
    }, 240_000)
    const session = (await (await request("POST", "/api/sessions", tokens.user, { attributes: {} })).json() as { id: string }).id
    const statuses: Record<string, Record<string, number>> = {}
    const productLatencies: Array<number> = []
    const versions: Record<string, number> = {}
    const created: Array<string> = []
    const increments = { sent: 0, acknowledged: 0 }
    const count = (kind: string, status: number | string) => {
      const byStatus = statuses[kind] ??= {}
      byStatus[status] = (byStatus[status] ?? 0) + 1
    }
    const operations: Array<readonly [number, () => Promise<void>]> = [
      [60, async () => {
        const started = performance.now()
        const response = await request("GET", "/api/products?limit=5", tokens.user)
        await response.arrayBuffer()
        count("GET /api/products", response.status)
        if (response.ok) productLatencies.push(performance.now() - started)
      }],
      [20, async () => {
        const member = members[Math.floor(Math.random() * members.length)]!
        const response = await request("GET", `/api/users/${member.id}`, member.token)
        await response.arrayBuffer()
        count("GET /api/users/{id}", response.status)
        const version = response.headers.get("x-meshwork-version") ?? "none"
        versions[version] = (versions[version] ?? 0) + 1
      }],
      [12, async () => {
        increments.sent++
        const response = await request("PATCH", `/api/sessions/${session}`, tokens.user, { changes: [{ _tag: "Increment", counter: "n" }] })
        await response.arrayBuffer()
        count("PATCH /api/sessions/{id}", response.status)
        if (response.ok) increments.acknowledged++
      }],
      [3, async () => {
        const id = crypto.randomUUID()
        const response = await request("POST", "/api/users", tokens.admin, { email: `soak-${id}@meshwork.dev`, name: `Soak ${id.slice(0, 8)}` })
        const body = await response.text()
        count("POST /api/users", response.status)
        if (response.status === 201) created.push((JSON.parse(body) as { id: string }).id)
      }],
      [5, async () => {
        const response = await fetch(`${base}/health`)
        await response.arrayBuffer()
        count("GET /health", response.status)
      }]
    ]
    const total = operations.reduce((sum, [weight]) => sum + weight, 0)
    const pick = () => {
      let roll = Math.random() * total
      for (const [weight, operation] of operations) if ((roll -= weight) < 0) return operation
      return operations[0]![1]
    }

    const started = Date.now()
    const runMillis = minutes * 60_000
    const deadline = started + runMillis
    const memory: Array<{ readonly at: number; readonly kib: number }> = []
    const sampler = setInterval(() => memory.push({ at: Math.round((Date.now() - started) / 1000), kib: workerdMemory() }), 15_000)
    const events: Array<string> = []
    const note = (event: string) => {
      const line = `${Math.round((Date.now() - started) / 1000)} s: ${event}`
      events.push(line)
      console.log(`soak: ${line}`)
    }

    // The release script: a bad canary, then mirroring to it.
    const releases = (async () => {
      await new Promise((resolve) => setTimeout(resolve, runMillis * 0.2))
      await admin("PUT", "/traffic/users", { stable: "blue", canary: "green", weight: 50, autoRollback: { errorRate: 0.2, minRequests: 20, windowSeconds: 60 } })
      note("50% of users sent to green (a bad release), with automatic rollback")
      let rolledBack: Record<string, unknown> | undefined
      while (Date.now() < started + runMillis * 0.6) {
        const split = await admin("GET", "/traffic/users")
        if (split["weight"] === 0 && split["rolledBack"] !== undefined) {
          rolledBack = split["rolledBack"] as Record<string, unknown>
          note(`green rolled back: ${String(rolledBack["reason"])}`)
          break
        }
        await new Promise((resolve) => setTimeout(resolve, 2_000))
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + runMillis * 0.6 - Date.now())))
      await admin("PUT", "/traffic/users", { stable: "blue", canary: "green", weight: 0, mirror: { percentage: 50 } })
      note("half of blue's reads mirrored to green")
      return rolledBack
    })()

    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (Date.now() < deadline) {
        try {
          await pick()()
        } catch (error) {
          count("transport", String((error as Error).message).slice(0, 60))
        }
      }
    }))
    clearInterval(sampler)
    clearInterval(relogin)
    const rolledBack = await releases
    note("load stopped; checking")

    // Every acknowledged write reads back.
    let lost = 0
    for (let i = 0; i < created.length; i += 20) {
      const answers = await Promise.all(created.slice(i, i + 20).map(async (id) => {
        const response = await request("GET", `/api/users/${id}`, tokens.admin)
        await response.arrayBuffer()
        return response.status
      }))
      lost += answers.filter((status) => status !== 200).length
    }
    const counter = ((await (await request("GET", `/api/sessions/${session}`, tokens.user)).json()) as { counters: Record<string, number> }).counters["n"] ?? 0
    const mirror = await admin("GET", "/traffic/users/mirror").catch(() => undefined)
    const health = await admin("GET", "/health")
    const upstreams = health["upstreams"] as Record<string, { breaker?: string }>
    const products = statuses["GET /api/products"] ?? {}
    const productReads = Object.values(products).reduce((a, b) => a + b, 0)
    const productFailures = Object.entries(products).filter(([status]) => !status.startsWith("2")).reduce((a, [, n]) => a + n, 0)
    const p99 = percentile(productLatencies, 0.99)
    const warm = memory.filter((sample) => sample.at >= Math.min(60, minutes * 15))
    const first = warm.slice(0, 3).map((sample) => sample.kib)
    const last = warm.slice(-3).map((sample) => sample.kib)
    const growth = first.length === 0 ? 0 : percentile(last, 0.5) / percentile(first, 0.5) - 1

    const invariants = [
      { name: "every acknowledged write reads back", holds: lost === 0, detail: `${created.length} users created, ${lost} missing` },
      {
        name: "the session counter is exact",
        holds: counter >= increments.acknowledged && counter <= increments.sent,
        detail: `${counter}: acknowledged ${increments.acknowledged}, sent ${increments.sent}`
      },
      { name: "the bad canary was rolled back", holds: rolledBack !== undefined, detail: String(rolledBack?.["reason"] ?? "not rolled back") },
      {
        name: "mirrored reads found green's mismatches",
        holds: mirror !== undefined && Number(mirror["mismatched"]) > 0,
        detail: mirror === undefined ? "no mirror report" : `${String(mirror["matched"])} matched, ${String(mirror["mismatched"])} mismatched`
      },
      {
        name: "the products breaker stayed closed under 5% faults",
        holds: upstreams["products"]?.breaker === "Closed",
        detail: `breaker ${upstreams["products"]?.breaker ?? "unknown"}`
      },
      {
        name: "retries absorbed the faults: under 1% of product reads failed",
        holds: productReads > 0 && productFailures / productReads < 0.01,
        detail: `${productFailures} of ${productReads} failed`
      },
      { name: "p99 of product reads under 1.5 s", holds: p99 < 1500, detail: `p50 ${percentile(productLatencies, 0.5).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms` },
      {
        name: "workerd memory flat (within 30%)",
        holds: growth < 0.3,
        detail: `${first.length === 0 ? "?" : Math.round(percentile(first, 0.5) / 1024)} MiB after warm-up, ${last.length === 0 ? "?" : Math.round(percentile(last, 0.5) / 1024)} MiB at the end`
      }
    ]
    const report = {
      at: new Date(started).toISOString(),
      minutes,
      concurrency,
      requests: Object.values(statuses).reduce((sum, byStatus) => sum + Object.values(byStatus).reduce((a, b) => a + b, 0), 0),
      statuses,
      versions,
      events,
      memory,
      invariants
    }
    console.log(`\nsoak: ${report.requests} requests in ${minutes} min`)
    for (const [kind, byStatus] of Object.entries(statuses)) console.log(`  ${kind}: ${JSON.stringify(byStatus)}`)
    console.log(`  users served by: ${JSON.stringify(versions)}`)
    for (const invariant of invariants) console.log(`${invariant.holds ? "ok  " : "FAIL"} ${invariant.name}: ${invariant.detail}`)
    mkdirSync(join(root, "bench/results"), { recursive: true })
    const file = join(root, "bench/results", `soak-${report.at.replace(/[:.]/g, "-").slice(0, 19)}.json`)
    writeFileSync(file, JSON.stringify(report, null, 2) + "\n")
    console.log(`wrote ${file.slice(root.length + 1)}`)
    if (invariants.some((invariant) => !invariant.holds)) process.exitCode = 1
  } finally {
    await mf.dispose()
  }
}

await main({
  name: "npm run soak",
  help,
  options: { minutes: { type: "string" }, concurrency: { type: "string" } },
  run: ({ values, positionals }) => {
    if (positionals.length > 0) usage(`unexpected argument "${positionals[0]}"`)
    return soak(
      values.minutes === undefined ? 2 : integer(values.minutes, "--minutes", { min: 1, max: 120 }),
      values.concurrency === undefined ? 6 : integer(values.concurrency, "--concurrency", { min: 1, max: 64 })
    )
  }
})
