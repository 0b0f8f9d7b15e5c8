/**
 * The benchmark harness: `npm run bench`.
 *
 * Bundles each variant (minified, as deployed), serves them all in one
 * workerd through Miniflare's direct sockets (no `wrangler dev` proxy, no
 * Miniflare entry Worker in the path), drives load from 127.0.0.1 with wrk,
 * bounded in time and connections, and interleaves the variants round by
 * round so that machine noise hits them alike. It prints req/s, p50 and p99
 * per variant and the median of the per-round ratios, and writes everything
 * to bench/results/<timestamp>.json with a description of the machine.
 *
 *   npm run bench -- --rounds 5 --duration 3 --connections 16 --only one-hop
 *   npm run bench -- --profile chain-mesh     # CPU profile of one variant under load
 *
 * Compare ratios, never absolute numbers: machines here are shared and noisy.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import os from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { convertV4MiniflareOptions, Miniflare } from "miniflare"
import { unstable_splitSqlQuery } from "wrangler"
import { importJWK, SignJWT } from "jose"
import { generateIdentitySecret, generateKey } from "../scripts/keys.ts"
import { buildMesh, bundle, root } from "../scripts/mesh.ts"

const { values: flags } = parseArgs({
  options: {
    rounds: { type: "string", default: "5" },
    duration: { type: "string", default: "3" },
    connections: { type: "string", default: "16" },
    only: { type: "string" },
    profile: { type: "string" }
  }
})
const rounds = Number(flags.rounds)
const duration = Number(flags.duration)
const connections = Number(flags.connections)

const compatibilityDate = "2026-11-01"
const outdir = join(root, ".build/bench")

interface Target {
  readonly id: string
  readonly group: "one-hop" | "chain" | "hops" | "cache" | "fan-out" | "tracing"
  /** The Worker the load enters. */
  readonly worker: string
  path: string
  /** For fan-out variants: the counting proxy between the Worker and products. */
  readonly counter?: string
  /** Connections for this variant, when not `--connections` (a fan-out request is 10 to 100 subrequests). */
  readonly connections?: number
  /**
   * Headers for one load run, made just before it: a Bearer token at the
   * gateway, the mesh's identity assertion (valid one minute) at internal Workers.
   */
  readonly credentials?: "bearer" | "identity"
  port: number
}

/** A seeded user, the same row in the mesh's and the hand-written chain's databases. */
const seeded = {
  id: "0195f3a0-0000-7000-8000-000000000042",
  email: "bench@example.com",
  name: "Bench User",
  role: "user",
  active: 1,
  created_at: "2026-01-01T00:00:00.000Z",
  updated_at: "2026-01-01T00:00:00.000Z"
}

const targets: Array<Target> = [
  { id: "bare", group: "one-hop", worker: "bare", path: "/hello", port: 0 },
  { id: "hono", group: "one-hop", worker: "hono", path: "/hello", port: 0 },
  { id: "meshwork", group: "one-hop", worker: "meshwork", path: "/hello", port: 0 },
  { id: "effect-stock", group: "one-hop", worker: "effect-stock", path: "/hello", port: 0 },
  { id: "chain-bare", group: "chain", worker: "bare-gateway", path: `/api/users/${seeded.id}`, port: 0 },
  {
    id: "chain-mesh",
    group: "chain",
    worker: "meshwork-gateway",
    path: `/api/users/${seeded.id}`,
    credentials: "bearer",
    port: 0
  },
  {
    id: "chain-no-policies",
    group: "chain",
    worker: "no-policies-gateway",
    path: `/api/users/${seeded.id}`,
    credentials: "bearer",
    port: 0
  },
  // The chain with tracing on (every span exported as OTLP to a local receiver) and off.
  { id: "chain-traced", group: "tracing", worker: "traced-gateway", path: `/api/users/${seeded.id}`, credentials: "bearer", port: 0 },
  { id: "chain-untraced", group: "tracing", worker: "meshwork-gateway", path: `/api/users/${seeded.id}`, credentials: "bearer", port: 0 },
  { id: "users-bare", group: "hops", worker: "bare-users", path: `/api/users/${seeded.id}`, port: 0 },
  {
    id: "users-mesh",
    group: "hops",
    worker: "meshwork-users",
    path: `/api/users/${seeded.id}`,
    credentials: "identity",
    port: 0
  },
  { id: "router-bare", group: "hops", worker: "bare-router", path: `/api/users/${seeded.id}`, port: 0 },
  {
    id: "router-mesh",
    group: "hops",
    worker: "meshwork-router",
    path: `/api/users/${seeded.id}`,
    credentials: "identity",
    port: 0
  },
  // A product read through the whole mesh: the gateway's edge cache on (HITs) and off.
  { id: "product-cached", group: "cache", worker: "meshwork-gateway", path: `/api/products/${seededProductId(0)}`, credentials: "bearer", port: 0 },
  { id: "product-uncached", group: "cache", worker: "no-cache-gateway", path: `/api/products/${seededProductId(0)}`, credentials: "bearer", port: 0 },
  // A 100-line cart enriched with its products: looked up 10 per call, and one call per id.
  { id: "cart-batched", group: "fan-out", worker: "meshwork-sessions", path: "", counter: "count-batched", connections: 2, credentials: "identity", port: 0 },
  { id: "cart-per-id", group: "fan-out", worker: "sessions-per-id", path: "", counter: "count-per-id", connections: 2, credentials: "identity", port: 0 }
].filter((target) => flags.only === undefined || flags.only.split(",").includes(target.group)) as Array<Target>

/** The products seeded for the cache and fan-out variants. */
function seededProductId(n: number) {
  return `0195f3a0-0000-7000-8000-${String(900_000_000_000 + n).padStart(12, "0")}`
}

/** The ratios the issue tracks: [name, numerator target, denominator target]. */
const ratios: ReadonlyArray<readonly [string, string, string]> = [
  ["meshwork/bare", "meshwork", "bare"],
  ["meshwork/hono", "meshwork", "hono"],
  ["hono/bare", "hono", "bare"],
  ["effect-stock/bare", "effect-stock", "bare"],
  ["chain/bare-chain", "chain-mesh", "chain-bare"],
  ["policies on/off", "chain-mesh", "chain-no-policies"],
  ["users hop/bare", "users-mesh", "users-bare"],
  ["router+users/bare", "router-mesh", "router-bare"],
  ["cached/uncached product", "product-cached", "product-uncached"],
  ["cart batched/per-id", "cart-batched", "cart-per-id"],
  ["tracing on/off", "chain-traced", "chain-untraced"]
]

const freePort = (() => {
  let next = 9300
  return () => next++
})()

/** Minified as deployed; a profile keeps names readable instead. */
const minify = flags.profile === undefined

const variant = async (name: string) => bundle(join(root, "bench/workers", `${name}.ts`), join(outdir, `${name}.js`), { minify })

/** A socket straight into `worker`, shared by every target that loads it. */
const directSocket = (worker: string) => {
  const loading = targets.filter((t) => t.worker === worker)
  if (loading.length === 0) return {}
  const port = freePort()
  for (const target of loading) target.port = port
  return { unsafeDirectSockets: [{ host: "127.0.0.1", port }] }
}

const inspectorPort = 9229

/** This run's secrets: the mesh's identity secret and one signing key. */
const secrets = await (async () => {
  const key = await generateKey()
  return { key, identitySecret: generateIdentitySecret() }
})()

const base64url = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64url")

/** The headers a load run of `target` sends: credentials for the seeded user, fresh. */
const credentialHeaders = async (target: Target): Promise<Record<string, string>> => {
  if (target.credentials === "bearer") {
    const token = await new SignJWT({ roles: [seeded.role] })
      .setProtectedHeader({ alg: "ES256", kid: secrets.key.kid, typ: "at+jwt" })
      .setIssuer("meshwork-auth")
      .setAudience("meshwork-api")
      .setSubject(seeded.id)
      .setIssuedAt()
      .setExpirationTime("10m")
      .setJti(crypto.randomUUID())
      .sign(await importJWK(secrets.key, "ES256"))
    return { authorization: `Bearer ${token}` }
  }
  if (target.credentials === "identity") {
    const payload = { identity: { kind: "user", sub: seeded.id, roles: [seeded.role] }, iat: Date.now(), exp: Date.now() + 60_000 }
    const signed = `v1.${base64url(new TextEncoder().encode(JSON.stringify(payload)))}`
    const key = await crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(secrets.identitySecret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"]
    )
    const signature = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(signed)))
    return { "x-meshwork-identity": `${signed}.${base64url(signature)}` }
  }
  return {}
}

/**
 * The traced chain's OTLP collector, in a process of its own (wrk runs
 * synchronously, so this one's event loop is busy while loading): it answers
 * every export at once and counts them, so the run measures the Workers'
 * cost of tracing, not a collector's.
 */
const collectorScript = `
  import { createServer } from "node:http"
  const received = { count: 0, bytes: 0 }
  const server = createServer((request, response) => {
    if (request.method === "GET") return response.end(JSON.stringify(received))
    request.on("data", (chunk) => (received.bytes += chunk.length))
    request.on("end", () => {
      received.count++
      response.writeHead(200, { "content-type": "application/x-protobuf" }).end()
    })
  })
  server.listen(0, "127.0.0.1", () => console.log(server.address().port))
`
const collector = await new Promise<{ readonly url: string; readonly received: () => Promise<{ count: number; bytes: number }> }>(
  (resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", collectorScript], { stdio: ["ignore", "pipe", "inherit"] })
    process.on("exit", () => child.kill())
    child.once("error", reject)
    child.stdout.once("data", (data: Buffer) => {
      const url = `http://127.0.0.1:${String(data).trim()}`
      resolve({ url, received: async () => await (await fetch(url)).json() as { count: number; bytes: number } })
    })
  }
)

const startWorkerd = async () => {
  const oneHop = await Promise.all(["bare", "hono", "meshwork", "effect-stock"].map(async (name) => ({
    name,
    modules: true,
    scriptPath: await variant(name),
    compatibilityDate,
    ...directSocket(name)
  })))
  const bareChain = [
    { name: "bare-gateway", serviceBindings: { ROUTER: "bare-router" } },
    { name: "bare-router", serviceBindings: { USERS: "bare-users" } },
    { name: "bare-users", d1Databases: { USERS_DB: "bench-bare-users" } }
  ]
  const chain = await Promise.all(bareChain.map(async (worker) => ({
    ...worker,
    modules: true,
    scriptPath: await variant(worker.name),
    compatibilityDate,
    ...directSocket(worker.name)
  })))
  const built = (await buildMesh(join(outdir, "mesh"), {
    minify,
    secrets: (name) => ({
      MESH_IDENTITY_SECRET: secrets.identitySecret,
      ...(name === "auth" ? { AUTH_SIGNING_KEYS: JSON.stringify({ active: secrets.key.kid, keys: [secrets.key] }) } : {}),
      // Every request is counted, none refused: the benchmark measures the policy's cost, not its 429s.
      ...(name === "gateway" ? { RATE_LIMITS: [{ name: "api", prefix: "/api", limit: 1_000_000, windowSeconds: 60 }] } : {})
    })
  }))
  // The same gateway and router with every resilience policy off by configuration:
  // routes without timeout, retry or breaker settings, and no rate limit policies.
  const gateway = built.find((options) => options.name === "meshwork-gateway")!
  const router = built.find((options) => options.name === "meshwork-router")!
  const routes = (router.bindings as unknown as { ROUTES: ReadonlyArray<Record<string, unknown>> }).ROUTES
  const withoutPolicies = [
    {
      ...gateway,
      name: "no-policies-gateway",
      bindings: { ...gateway.bindings, RATE_LIMITS: [] },
      serviceBindings: { ...gateway.serviceBindings, ROUTER: "no-policies-router" }
    },
    {
      ...router,
      name: "no-policies-router",
      bindings: {
        ...router.bindings,
        ROUTES: routes.map(({ service, prefix, binding }) => ({ service, prefix, binding }))
      }
    }
  ]
  // The same gateway without its edge cache, and a sessions Worker looking products up one per call,
  // each fan-out variant behind its own counting proxy to products.
  const sessions = built.find((options) => options.name === "meshwork-sessions")!
  const withoutCache = { ...gateway, name: "no-cache-gateway", bindings: { ...gateway.bindings, CACHE_ROUTES: [] } }
  const counting = await variant("counting-proxy")
  const fanOut = [
    { ...sessions, serviceBindings: { ...sessions.serviceBindings, PRODUCTS: "count-batched" } },
    {
      ...sessions,
      name: "sessions-per-id",
      bindings: { ...sessions.bindings, CART_LOOKUP_BATCH_SIZE: 1 },
      serviceBindings: { ...sessions.serviceBindings, PRODUCTS: "count-per-id" },
      durableObjects: { SESSIONS: { className: "SessionObject", scriptName: "meshwork-sessions", useSQLite: true } }
    },
    ...["count-batched", "count-per-id"].map((name) => ({
      name,
      modules: true,
      scriptPath: counting,
      compatibilityDate,
      serviceBindings: { UPSTREAM: "meshwork-products" }
    }))
  ]
  // The chain gateway -> router -> users again, exporting every span to the collector below.
  const users = built.find((options) => options.name === "meshwork-users")!
  const traced = (options: typeof gateway, name: string, serviceBindings: Record<string, string>) => ({
    ...options,
    name,
    bindings: { ...options.bindings, OTLP_ENDPOINT: collector.url },
    serviceBindings: { ...options.serviceBindings, ...serviceBindings }
  })
  const tracedChain = [
    traced(gateway, "traced-gateway", { ROUTER: "traced-router" }),
    traced(router, "traced-router", { USERS: "traced-users" }),
    { ...traced(users, "traced-users", {}), d1Databases: users.d1Databases }
  ]
  const fanOutNames = new Set(fanOut.map((options) => String(options.name)))
  const mesh = [...built.filter((options) => !fanOutNames.has(String(options.name))), ...withoutPolicies, withoutCache, ...fanOut, ...tracedChain].map((options) => ({
    ...options,
    ...directSocket(String(options.name))
  }))
  const mf = new Miniflare(convertV4MiniflareOptions({
    workers: [...oneHop, ...chain, ...mesh] as never,
    ...(flags.profile === undefined ? {} : { inspectorPort })
  }))
  await mf.ready
  const migration = readFileSync(join(root, "src/services/users/migrations/0001_create_users.sql"), "utf8")
  for (const db of [await mf.getD1Database("USERS_DB", "meshwork-users"), await mf.getD1Database("USERS_DB", "bare-users")]) {
    for (const statement of unstable_splitSqlQuery(migration)) await db.prepare(statement).run()
    await db.prepare(
      "INSERT INTO users (id, email, name, role, active, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ).bind(...Object.values(seeded)).run()
  }
  const products = await mf.getD1Database("PRODUCTS_DB", "meshwork-products")
  for (const file of ["0001_create_products.sql", "0002_fence_product_writes.sql", "0003_product_imports.sql"]) {
    const sql = readFileSync(join(root, "src/services/products/migrations", file), "utf8")
    for (const statement of unstable_splitSqlQuery(sql)) await products.prepare(statement).run()
  }
  await products.batch(Array.from({ length: 100 }, (_, n) =>
    products.prepare(
      `INSERT INTO products (id, sku, name, description, price_cents, currency, stock, seller_id, created_at, updated_at)
       VALUES (?, ?, ?, '', ?, 'USD', 1, ?, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')`
    ).bind(seededProductId(n), `BENCH-${n}`, `Bench ${n}`, 100 + n, seeded.id)))
  // A session of the seeded user whose cart holds the 100 products, for the fan-out variants.
  const sessionsTarget = targets.find((target) => target.worker === "meshwork-sessions")
  if (sessionsTarget !== undefined) {
    const created = await fetch(`http://127.0.0.1:${sessionsTarget.port}/api/sessions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...await credentialHeaders(sessionsTarget) },
      body: JSON.stringify({ cart: Object.fromEntries(Array.from({ length: 100 }, (_, n) => [seededProductId(n), 1])) })
    })
    if (created.status !== 201) throw new Error(`creating the bench session: ${created.status} ${await created.text()}`)
    const { id } = await created.json() as { id: string }
    for (const target of targets) if (target.group === "fan-out") target.path = `/api/sessions/${id}/cart`
  }
  return mf
}

/** CPU time (µs) used so far by the workerd processes Miniflare started. */
const workerdCpuMicros = (): number => {
  const pids = execFileSync("pgrep", ["-P", String(process.pid), "workerd"], { encoding: "utf8" }).trim().split("\n")
  const ticks = pids.filter(Boolean).reduce((sum, pid) => {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return sum + Number(fields[11]) + Number(fields[12])
  }, 0)
  return (ticks * 1e6) / 100 // CLK_TCK is 100 on Linux
}

const toMillis = (value: string): number => {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value)
  if (match === null) throw new Error(`unparsable wrk latency ${value}`)
  const scale = { us: 0.001, ms: 1, s: 1000 }[match[2] as "us" | "ms" | "s"]
  return Number(match[1]) * scale
}

interface Sample {
  readonly rps: number
  readonly p50: number
  readonly p99: number
  readonly requests: number
  readonly errors: number
  readonly cpuMicrosPerRequest: number
}

const load = async (target: Target, seconds: number): Promise<Sample> => {
  const headers = Object.entries(await credentialHeaders(target)).flatMap(([name, value]) => ["-H", `${name}: ${value}`])
  const cpuBefore = workerdCpuMicros()
  const out = execFileSync("wrk", [
    "-t1",
    `-c${target.connections ?? connections}`,
    `-d${seconds}s`,
    "--timeout",
    "10s",
    "--latency",
    ...headers,
    `http://127.0.0.1:${target.port}${target.path}`
  ], { encoding: "utf8" })
  const cpu = workerdCpuMicros() - cpuBefore
  const number = (re: RegExp) => {
    const match = re.exec(out)
    if (match === null) throw new Error(`unexpected wrk output:\n${out}`)
    return match[1]!
  }
  const requests = Number(number(/(\d+) requests in/))
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out)
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  return {
    rps: Number(number(/Requests\/sec:\s+([\d.]+)/)),
    p50: toMillis(number(/^\s+50%\s+(\S+)\s*$/m)),
    p99: toMillis(number(/^\s+99%\s+(\S+)\s*$/m)),
    requests,
    errors: Number(non2xx?.[1] ?? 0) + (socketErrors === null ? 0 : socketErrors.slice(1).reduce((a, b) => a + Number(b), 0)),
    cpuMicrosPerRequest: cpu / requests
  }
}

const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const machine = () => ({
  cpus: os.cpus().length,
  cpuModel: os.cpus()[0]?.model ?? "unknown",
  memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  os: `${os.type()} ${os.release()}`,
  node: process.version,
  workerd: JSON.parse(readFileSync(join(root, "node_modules/workerd/package.json"), "utf8")).version as string,
  wrk: spawnSync("wrk", ["-v"], { encoding: "utf8" }).stdout.split("\n")[0]?.trim() ?? "unknown",
  loadAverage: os.loadavg().map((load) => Number(load.toFixed(2)))
})

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
}

/**
 * Profiles every Worker of `target` through workerd's inspector while wrk
 * loads it, and prints the functions with the most self time.
 */
const profile = async (target: Target) => {
  const listed = (await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json() as Array<{
    readonly id: string
    readonly webSocketDebuggerUrl: string
  }>).filter((entry) => entry.id.startsWith("core:user:"))
  const sessions = await Promise.all(listed.map((entry) =>
    new Promise<{ title: string; send: (method: string, params?: object) => Promise<any> }>((resolve, reject) => {
      const socket = new WebSocket(entry.webSocketDebuggerUrl)
      let id = 0
      const pending = new Map<number, (result: unknown) => void>()
      socket.onmessage = (event) => {
        const message = JSON.parse(String(event.data)) as { id?: number; result?: unknown }
        if (message.id !== undefined && message.result !== undefined) pending.get(message.id)?.(message.result)
      }
      socket.onerror = reject
      socket.onopen = () =>
        resolve({
          title: entry.id.slice("core:user:".length),
          send: (method, params = {}) =>
            new Promise((done) => {
              pending.set(++id, done)
              socket.send(JSON.stringify({ id, method, params }))
            })
        })
    })
  ))
  for (const session of sessions) {
    // workerd echoes these commands without a separate answer, so only Profiler.stop is awaited.
    void session.send("Profiler.enable")
    void session.send("Profiler.setSamplingInterval", { interval: 100 })
    void session.send("Profiler.start")
  }
  const sample = await load(target, duration * 2)
  mkdirSync(join(root, "bench/results"), { recursive: true })
  for (const session of sessions) {
    const { profile } = await session.send("Profiler.stop") as {
      profile: { nodes: Array<ProfileNode>; samples: Array<number>; timeDeltas: Array<number> }
    }
    const self = new Map<string, number>()
    let total = 0
    profile.samples.forEach((nodeId, i) => {
      const node = profile.nodes.find((n) => n.id === nodeId)!
      const frame = node.callFrame
      const key = `${frame.functionName || "(anonymous)"} ${frame.url.split("/").at(-1)}:${frame.lineNumber + 1}`
      const delta = profile.timeDeltas[i] ?? 0
      self.set(key, (self.get(key) ?? 0) + delta)
      total += delta
    })
    const busy = total - (self.get("(idle) :0") ?? 0)
    if (busy < total * 0.05) continue
    const file = join(root, "bench/results", `${target.id}-${session.title.replace(/\W+/g, "_")}.cpuprofile`)
    writeFileSync(file, JSON.stringify(profile))
    console.log(`\n${session.title}: ${(total / 1000).toFixed(0)} ms sampled, ${file}`)
    for (const [key, micros] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
      console.log(`  ${((100 * micros) / total).toFixed(1).padStart(5)}%  ${key}`)
    }
  }
  console.log(`\n${target.id}: ${Math.round(sample.rps)} req/s under the profiler`)
}

const main = async () => {
  if (spawnSync("wrk", ["-v"]).error !== undefined) throw new Error("wrk is not installed: apt-get install -y wrk")
  console.log(`Building and starting ${targets.length} variants in workerd...`)
  const mf = await startWorkerd()
  try {
    for (const target of targets) {
      const check = await fetch(`http://127.0.0.1:${target.port}${target.path}`, { headers: await credentialHeaders(target) })
      if (!check.ok) throw new Error(`${target.id} answered ${check.status}: ${await check.text()}`)
      await load(target, 1) // warm-up: JIT, layer build, D1 connection
    }
    // The cached variant answers from the cache; the uncached one never does.
    for (const target of targets.filter((t) => t.group === "cache")) {
      const answer = await fetch(`http://127.0.0.1:${target.port}${target.path}`, { headers: await credentialHeaders(target) })
      await answer.body?.cancel()
      const cache = answer.headers.get("x-cache")
      if ((target.id === "product-cached") !== (cache === "HIT")) throw new Error(`${target.id}: X-Cache ${cache}`)
    }
    // Upstream calls one fan-out request makes, as its counting proxy saw them.
    const upstreamCalls: Record<string, number> = {}
    for (const target of targets.filter((t) => t.counter !== undefined)) {
      const proxy = await mf.getWorker(target.counter!)
      const count = async () => ((await (await proxy.fetch("http://count/__count")).json()) as { count: number }).count
      const before = await count()
      const answer = await fetch(`http://127.0.0.1:${target.port}${target.path}`, { headers: await credentialHeaders(target) })
      const cart = await answer.json() as { lines: ReadonlyArray<{ product: unknown }> }
      if (cart.lines.length !== 100 || cart.lines.some((line) => line.product === null)) throw new Error(`${target.id}: the cart is not complete`)
      upstreamCalls[target.id] = (await count()) - before
      console.log(`${target.id}: ${upstreamCalls[target.id]} upstream calls for a 100-line cart`)
    }
    if (flags.profile !== undefined) {
      const target = targets.find((t) => t.id === flags.profile)
      if (target === undefined) throw new Error(`no variant ${flags.profile}: ${targets.map((t) => t.id).join(", ")}`)
      return await profile(target)
    }
    const samples = new Map<string, Array<Sample>>(targets.map((target) => [target.id, []]))
    for (let round = 1; round <= rounds; round++) {
      // Rotate the order each round so no variant always runs first or last.
      const order = targets.map((_, i) => targets[(i + round) % targets.length]!)
      for (const target of order) samples.get(target.id)!.push(await load(target, duration))
      console.log(`round ${round}/${rounds}: ${order.map((t) => `${t.id} ${Math.round(samples.get(t.id)!.at(-1)!.rps)}`).join(", ")}`)
    }

    const summary = targets.map((target) => {
      const runs = samples.get(target.id)!
      return {
        id: target.id,
        group: target.group,
        rps: Math.round(median(runs.map((s) => s.rps))),
        p50Ms: Number(median(runs.map((s) => s.p50)).toFixed(3)),
        p99Ms: Number(median(runs.map((s) => s.p99)).toFixed(3)),
        cpuMicrosPerRequest: Number(median(runs.map((s) => s.cpuMicrosPerRequest)).toFixed(1)),
        errors: runs.reduce((sum, s) => sum + s.errors, 0)
      }
    })
    const ratioRows = ratios
      .filter(([, a, b]) => samples.has(a) && samples.has(b))
      .map(([name, a, b]) => {
        const perRound = samples.get(a)!.map((sample, i) => sample.rps / samples.get(b)![i]!.rps)
        const cpu = samples.get(b)!.map((sample, i) => sample.cpuMicrosPerRequest / samples.get(a)![i]!.cpuMicrosPerRequest)
        return {
          name,
          throughput: Number(median(perRound).toFixed(3)),
          perRound: perRound.map((r) => Number(r.toFixed(3))),
          cpuEfficiency: Number(median(cpu).toFixed(3))
        }
      })

    console.log("\nvariant            req/s     p50 ms   p99 ms   workerd CPU µs/req   errors")
    for (const row of summary) {
      console.log(
        `${row.id.padEnd(16)} ${String(row.rps).padStart(7)}   ${row.p50Ms.toFixed(2).padStart(6)}   ${
          row.p99Ms.toFixed(2).padStart(6)
        }   ${row.cpuMicrosPerRequest.toFixed(1).padStart(18)}   ${row.errors}`
      )
    }
    console.log("\nratio (median of per-round ratios)   req/s    CPU (inverse µs/req)   rounds")
    for (const row of ratioRows) {
      console.log(
        `${row.name.padEnd(36)} ${row.throughput.toFixed(3).padStart(6)}   ${row.cpuEfficiency.toFixed(3).padStart(20)}   ${
          row.perRound.join(" ")
        }`
      )
    }

    const otlpExports = samples.has("chain-traced") ? await collector.received() : undefined
    if (otlpExports !== undefined) {
      console.log(`\ntraced chain: ${otlpExports.count} OTLP exports received, ${(otlpExports.bytes / 1024).toFixed(0)} KiB`)
    }

    const stamp = new Date().toISOString().replaceAll(":", "-").replace(/\..*/, "")
    const file = join(root, "bench/results", `${stamp}.json`)
    mkdirSync(join(root, "bench/results"), { recursive: true })
    const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).trim()
    writeFileSync(
      file,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          commit,
          machine: machine(),
          settings: { rounds, durationSeconds: duration, connections, threads: 1 },
          summary,
          ratios: ratioRows,
          upstreamCalls,
          otlpExports,
          samples: Object.fromEntries(samples)
        },
        null,
        2
      ) + "\n"
    )
    console.log(`\nwrote ${file}`)
    if (summary.some((row) => row.errors > 0)) throw new Error("some requests failed: the numbers above are not comparable")
  } finally {
    await mf.dispose()
  }
}

await main()
