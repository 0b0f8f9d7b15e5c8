/**
 * The benchmark harness: `npm run bench`.
 *
 * Bundles each variant (minified, as deployed), serves them all in one
 * workerd through Miniflare's direct sockets (no `wrangler dev` proxy, no
 * Miniflare entry Worker in the path), drives load from 127.0.0.1 with wrk,
 * bounded in time and connections, and interleaves the variants round by
 * round so that machine noise hits them alike. It prints req/s, p50 and p99
 * per variant and the median of the per-round ratios, and writes everything
 * to bench/results/<timestamp>.json with a description of the machine. The
 * `cold` group then times fresh isolates in a workerd of its own.
 *
 * A variant whose requests fail is reported (status counts, first error
 * body) and marked, and the run goes on; the process exits 0 only when every
 * variant ran clean. A full run (no `--only`) adds its table to
 * bench/RESULTS.md.
 *
 *   npm run bench -- --rounds 7 --duration 2 --connections 16 --only one-hop,api
 *   npm run bench -- --only cold --samples 9
 *   npm run bench -- --variants hop-traced,hop-untraced --rounds 9   # some variants, side by side
 *   npm run bench -- --profile chain-mesh     # CPU profile of each Worker of one variant under load, one at a time
 *   npm run bench -- --profile chain-mesh --isolate chain-router   # of one of its Workers
 *
 * Compare ratios, never absolute numbers: machines here are shared and noisy.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import os from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { convertV4MiniflareOptions, Miniflare } from "miniflare"
import { unstable_splitSqlQuery } from "wrangler"
import { importJWK, SignJWT } from "jose"
import { generateKey, generateMeshKeys, meshNameOf } from "../scripts/keys.ts"
import { importSigningKey, signJws } from "../src/layers/security/Jws.ts"
import { pathOf } from "../src/runtime/Url.ts"
import { buildMesh, bundle, root, workers } from "../scripts/mesh.ts"

const { values: flags } = parseArgs({
  options: {
    rounds: { type: "string", default: "7" },
    duration: { type: "string", default: "2" },
    connections: { type: "string", default: "16" },
    samples: { type: "string", default: "5" },
    only: { type: "string" },
    variants: { type: "string" },
    profile: { type: "string" },
    isolate: { type: "string" }
  }
})
const rounds = Number(flags.rounds)
const duration = Number(flags.duration)
const connections = Number(flags.connections)
const coldSamples = Number(flags.samples)

const groups = ["one-hop", "api", "chain", "hops", "rpc", "cache", "fan-out", "tracing", "cold"] as const
type Group = (typeof groups)[number]
const only = flags.only?.split(",")
for (const group of only ?? []) {
  if (!(groups as ReadonlyArray<string>).includes(group)) throw new Error(`no group ${group}: ${groups.join(", ")}`)
}
const selected = (group: Group) => only === undefined || only.includes(group)
/** Every group, measured: the run RESULTS.md keeps a table of. */
const fullRun = flags.only === undefined && flags.profile === undefined && flags.variants === undefined

const compatibilityDate = "2026-11-01"
const outdir = join(root, ".build/bench")

/** Vars a variant sets on one of its Workers, or a function of that Worker's own. */
type Vars = Readonly<Record<string, unknown>> | ((defaults: Readonly<Record<string, unknown>>) => Record<string, unknown>)

interface Target {
  readonly id: string
  readonly group: Exclude<Group, "cold">
  /** The Worker the load enters. */
  readonly worker: string
  path: string
  /** A request with a body; GET without one otherwise. */
  readonly request?: { readonly method: "POST"; readonly contentType: string; readonly body: string }
  /** For fan-out variants: the counting proxy between the Worker and products. */
  readonly counter?: string
  /** Connections for this variant, when not `--connections` (a fan-out request is 10 to 100 subrequests). */
  readonly connections?: number
  /**
   * Headers for one load run, made just before it: a Bearer token at the
   * gateway, the mesh's identity assertions (valid one minute) at internal Workers.
   */
  readonly credentials?: "bearer" | "identity"
  /**
   * What this variant sets on its Workers (by name) beyond their own
   * configuration. Every Worker runs with its wrangler config and defaults,
   * plus the run's fresh keys, unless a variant says otherwise here.
   */
  readonly config?: Readonly<Record<string, Vars>>
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

/**
 * The gateway's rate limit raised past anything a run sends: every request is
 * counted, none refused, so a variant measures the policy's cost, not its 429s
 * (the default, 600 a minute per client, refuses nearly all of a run).
 */
const countEveryRequest = {
  RATE_LIMITS: [{ name: "api", prefix: "/api", limit: 1_000_000, windowSeconds: 60, store: "durable-object-batched" }]
}

/** The router's routes without their timeout, retry and breaker settings. */
const routesWithoutPolicies = (defaults: Readonly<Record<string, unknown>>) => ({
  ROUTES: (defaults["ROUTES"] as ReadonlyArray<Record<string, unknown>>).map(({ service, prefix, binding }) => ({ service, prefix, binding }))
})

/** The router's routes without their bulkheads: the overload layer off, every other policy on. */
const routesWithoutBulkheads = (defaults: Readonly<Record<string, unknown>>) => ({
  ROUTES: (defaults["ROUTES"] as ReadonlyArray<Record<string, unknown>>).map(({ bulkhead: _, ...route }) => route)
})

/** The routes without their timeouts, every other policy on (the gateway's route to the router, the router's to users). */
const routesWithoutTimeouts = (defaults: Readonly<Record<string, unknown>>) => ({
  ROUTES: (defaults["ROUTES"] as ReadonlyArray<Record<string, unknown>>).map(({ timeoutMs: _, ...route }) => route)
})

/** The body of the `api` group's POST, valid for every variant. */
const newUser = JSON.stringify({ email: "new@example.com", name: "New User", tags: ["bench", "load"] })

/** A read of a user through the whole chain, gateway -> router -> users, entering at `gateway` with a user's token. */
function chain(id: string, gateway: string, config: NonNullable<Target["config"]>, group: "chain" | "tracing" = "chain"): Target {
  return { id, group, worker: gateway, path: `/api/users/${seeded.id}`, credentials: "bearer", config, port: 0 }
}

const targets: Array<Target> = [
  { id: "bare", group: "one-hop", worker: "bare", path: "/hello", port: 0 },
  { id: "hono", group: "one-hop", worker: "hono", path: "/hello", port: 0 },
  { id: "meshwork", group: "one-hop", worker: "meshwork", path: "/hello", port: 0 },
  { id: "effect-stock", group: "one-hop", worker: "effect-stock", path: "/hello", port: 0 },
  // Two validated routes, the same rules and answers on each: a path parameter, and a JSON body.
  { id: "api-get-bare", group: "api", worker: "api-bare", path: `/users/${seeded.id}`, port: 0 },
  { id: "api-get-hono", group: "api", worker: "api-hono", path: `/users/${seeded.id}`, port: 0 },
  { id: "api-get-meshwork", group: "api", worker: "api-meshwork", path: `/users/${seeded.id}`, port: 0 },
  ...(["bare", "hono", "meshwork"] as const).map((name): Target => ({
    id: `api-post-${name}`,
    group: "api",
    worker: `api-${name}`,
    path: "/users",
    request: { method: "POST", contentType: "application/json", body: newUser },
    port: 0
  })),
  { id: "chain-bare", group: "chain", worker: "bare-gateway", path: `/api/users/${seeded.id}`, port: 0 },
  chain("chain-mesh", "chain-gateway", { "chain-gateway": countEveryRequest }),
  // Every resilience policy off: no rate limits, routes without timeout, retry or breaker settings.
  // Only the routes' timeouts off.
  chain("chain-no-timeouts", "no-timeouts-gateway", {
    "no-timeouts-gateway": (defaults: Readonly<Record<string, unknown>>) => ({ ...countEveryRequest, ...routesWithoutTimeouts(defaults) }),
    "no-timeouts-router": routesWithoutTimeouts
  }),
  chain("chain-no-policies", "no-policies-gateway", { "no-policies-gateway": { RATE_LIMITS: [] }, "no-policies-router": routesWithoutPolicies }),
  // Only the overload layer off: the routes' bulkheads (concurrency caps, adaptive limits).
  chain("chain-no-overload", "no-overload-gateway", { "no-overload-gateway": countEveryRequest, "no-overload-router": routesWithoutBulkheads }),
  // The console's live figures (LiveStats) on and off, on two copies that differ only in them.
  chain("chain-live", "live-gateway", { "live-gateway": countEveryRequest }),
  // Nothing counted per call, nothing reported.
  chain("chain-no-live", "no-live-gateway", { "no-live-gateway": { ...countEveryRequest, LIVE_STATS: false }, "no-live-router": { LIVE_STATS: false } }),
  // The general rate limit counted per isolate (the memory store) instead of across isolates.
  chain("chain-local-limit", "local-limit-gateway", {
    "local-limit-gateway": { RATE_LIMITS: [{ name: "api", prefix: "/api", limit: 1_000_000, windowSeconds: 60, store: "memory" }] }
  }),
  // The chain with tracing on (every span exported as OTLP to a local receiver) and off.
  chain("chain-traced", "traced-gateway", {
    "traced-gateway": (): Record<string, unknown> => ({ ...countEveryRequest, ...exporting() }),
    "traced-router": exporting,
    "traced-users": exporting
  }, "tracing"),
  chain("chain-untraced", "untraced-gateway", { "untraced-gateway": countEveryRequest }, "tracing"),
  // One hop (the one-hop route on Meshwork's adapter) with tracing on and exporting, and off, on two copies.
  { id: "hop-traced", group: "tracing", worker: "meshwork-traced", path: "/hello", config: { "meshwork-traced": exporting }, port: 0 },
  { id: "hop-untraced", group: "tracing", worker: "meshwork-untraced", path: "/hello", port: 0 },
  { id: "users-bare", group: "hops", worker: "bare-users", path: `/api/users/${seeded.id}`, port: 0 },
  { id: "users-mesh", group: "hops", worker: "meshwork-users", path: `/api/users/${seeded.id}`, credentials: "identity", port: 0 },
  { id: "router-bare", group: "hops", worker: "bare-router", path: `/api/users/${seeded.id}`, port: 0 },
  { id: "router-mesh", group: "hops", worker: "meshwork-router", path: `/api/users/${seeded.id}`, credentials: "identity", port: 0 },
  // One internal hop over the same service binding, as an HTTP request and as a Workers RPC call.
  { id: "hop-http", group: "rpc", worker: "hop-client", path: "/http/users/u_42", port: 0 },
  { id: "hop-rpc", group: "rpc", worker: "hop-client", path: "/rpc/users/u_42", port: 0 },
  // A product read through the whole mesh: the gateway's edge cache on (HITs) and off.
  {
    id: "product-cached",
    group: "cache",
    worker: "meshwork-gateway",
    path: `/api/products/${seededProductId(0)}`,
    credentials: "bearer",
    config: { "meshwork-gateway": countEveryRequest },
    port: 0
  },
  {
    id: "product-uncached",
    group: "cache",
    worker: "no-cache-gateway",
    path: `/api/products/${seededProductId(0)}`,
    credentials: "bearer",
    config: { "no-cache-gateway": { ...countEveryRequest, CACHE_ROUTES: [] } },
    port: 0
  },
  // A 100-line cart enriched with its products: looked up 10 per call (the default), and one call per id.
  { id: "cart-batched", group: "fan-out", worker: "meshwork-sessions", path: "", counter: "count-batched", connections: 2, credentials: "identity", port: 0 },
  {
    id: "cart-per-id",
    group: "fan-out",
    worker: "sessions-per-id",
    path: "",
    counter: "count-per-id",
    connections: 2,
    credentials: "identity",
    config: { "sessions-per-id": { CART_LOOKUP_BATCH_SIZE: 1 } },
    port: 0
  }
].filter((target) => selected(target.group as Group)) as Array<Target>
const variants = flags.variants?.split(",")
for (const id of variants ?? []) {
  if (!targets.some((target) => target.id === id)) throw new Error(`no variant ${id}: ${targets.map((t) => t.id).join(", ")}`)
}
// Only the variants asked for: the ratios between them, nothing else.
if (variants !== undefined) targets.splice(0, targets.length, ...targets.filter((target) => variants.includes(target.id)))

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
  ["api-get meshwork/hono", "api-get-meshwork", "api-get-hono"],
  ["api-post meshwork/hono", "api-post-meshwork", "api-post-hono"],
  ["api-get hono/bare", "api-get-hono", "api-get-bare"],
  ["api-post hono/bare", "api-post-hono", "api-post-bare"],
  ["chain/bare-chain", "chain-mesh", "chain-bare"],
  ["policies on/off", "chain-mesh", "chain-no-policies"],
  ["timeouts on/off", "chain-mesh", "chain-no-timeouts"],
  ["overload layer on/off", "chain-mesh", "chain-no-overload"],
  ["shared/per-isolate rate limit", "chain-mesh", "chain-local-limit"],
  ["live figures on/off", "chain-live", "chain-no-live"],
  ["users hop/bare", "users-mesh", "users-bare"],
  ["router+users/bare", "router-mesh", "router-bare"],
  ["rpc/http hop", "hop-rpc", "hop-http"],
  ["cached/uncached product", "product-cached", "product-uncached"],
  ["cart batched/per-id", "cart-batched", "cart-per-id"],
  ["tracing on/off", "chain-traced", "chain-untraced"],
  ["tracing on/off, one hop", "hop-traced", "hop-untraced"],
  // Two copies of one variant (the same Workers, configuration and request): 1.0 but for the
  // machine's noise, which this row shows for the run it is in.
  ["identical copies (noise)", "chain-live", "chain-mesh"]
]

/** What went wrong with a variant; any of these marks it, and the run is not clean. */
type Failure =
  | { readonly kind: "check"; readonly status: number; readonly body: string }
  | { readonly kind: "requests"; readonly run: string; readonly statuses: Record<string, number>; readonly socketErrors: number; readonly firstErrorBody?: string }
  | { readonly kind: "answer"; readonly case: string; readonly expected: string; readonly got: string }
  | { readonly kind: "error"; readonly message: string }

const failures = new Map<string, Array<Failure>>()
const fail = (variant: string, failure: Failure) => {
  const list = failures.get(variant) ?? []
  failures.set(variant, list)
  // A variant failing every round says so once per kind of answer, not 50 times.
  if (list.length < 5) list.push(failure)
  console.log(`FAILED ${variant}: ${describeFailure(failure)}`)
}
const describeFailure = (failure: Failure): string => {
  switch (failure.kind) {
    case "check":
      return `answered ${failure.status} before the run: ${failure.body.slice(0, 300)}`
    case "requests":
      return `${failure.run}: statuses ${JSON.stringify(failure.statuses)}, ${failure.socketErrors} socket errors${
        failure.firstErrorBody === undefined ? "" : `, first error body: ${failure.firstErrorBody.slice(0, 300)}`
      }`
    case "answer":
      return `${failure.case}: expected ${failure.expected}, got ${failure.got.slice(0, 300)}`
    case "error":
      return failure.message
  }
}
const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error))

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
/** The profiler's sampling interval, µs. */
const profileInterval = 100

/** This run's secrets: a token signing key, and a mesh identity key per Worker. */
const secrets = {
  key: await generateKey(),
  mesh: await generateMeshKeys([...new Set(workers.map((worker) => meshNameOf(worker.name)))])
}

/** Signs `claims` as the mesh Worker `worker` would. */
const signAs = async (worker: string, claims: object) => {
  const jwk = secrets.mesh.signing[worker]!
  return signJws(await importSigningKey(jwk), jwk.kid, claims)
}

/** The mesh Worker (its short name) behind a Worker of the run. */
const meshWorkerOf = (worker: string) =>
  ["router", "users", "products", "auth", "sessions", "gateway"].find((name) => worker.includes(name)) ?? "sessions"

/** The headers a request sends: credentials for the seeded user, fresh. */
const credentialHeaders = async (
  credentials: Target["credentials"],
  worker: string,
  method: string,
  path: string
): Promise<Record<string, string>> => {
  if (credentials === "bearer") {
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
  if (credentials === "identity") {
    // What the hop in front of this Worker would send: its service assertion for this
    // request, and the gateway's assertion of the user (valid 60 s: made per load run).
    const audience = meshWorkerOf(worker)
    const from = audience === "router" ? "gateway" : "router"
    const iat = Date.now()
    const exp = iat + 60_000
    return {
      "x-meshwork-identity": await signAs(from, { iss: from, aud: audience, htm: method, htp: pathOf(`http://x${path}`), iat, exp }),
      "x-meshwork-principal": await signAs("gateway", { iss: "gateway", principal: { kind: "user", sub: seeded.id, roles: [seeded.role] }, iat, exp })
    }
  }
  return {}
}

/** The method, headers and body of one request of `target`, credentials fresh. */
const requestOf = async (target: Target) => {
  const method = target.request?.method ?? "GET"
  const headers = {
    ...(target.request === undefined ? {} : { "content-type": target.request.contentType }),
    ...await credentialHeaders(target.credentials, target.worker, method, target.path)
  }
  return { method, headers, body: target.request?.body }
}

/** One request of `target` as `fetch` sends it. */
const send = async (target: Target) => {
  const { method, headers, body } = await requestOf(target)
  return fetch(`http://127.0.0.1:${target.port}${target.path}`, { method, headers, ...(body === undefined ? {} : { body }) })
}

/**
 * The traced chain's OTLP collector, in a process of its own (wrk runs
 * synchronously, so this one's event loop is busy while loading): it answers
 * every export at once and counts them, so the run measures the Workers'
 * cost of tracing, not a collector's. Started only when the tracing group runs.
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
const children: Array<{ kill: () => void }> = []
const collector = !selected("tracing") ? undefined : await new Promise<{
  readonly url: string
  readonly received: () => Promise<{ count: number; bytes: number }>
}>((resolve, reject) => {
  const child = spawn(process.execPath, ["--input-type=module", "-e", collectorScript], { stdio: ["ignore", "pipe", "inherit"] })
  children.push({ kill: () => child.kill() })
  child.once("error", reject)
  child.stdout.once("data", (data: Buffer) => {
    const url = `http://127.0.0.1:${String(data).trim()}`
    resolve({ url, received: async () => await (await fetch(url)).json() as { count: number; bytes: number } })
  })
})
const collectorUrl = () => collector!.url

/**
 * A traced variant's settings: every span exported to the run's collector,
 * within 10 s rather than the default 2 s. The collector shares the 2 cores
 * with wrk and workerd, and under that load an export now and then took
 * longer than 2 s (two full runs warned of one); a failed export drops its
 * spans and backs the isolate off, so the traced variant would then do less
 * of the work it is there to measure.
 */
function exporting(): Record<string, unknown> {
  return { OTLP_ENDPOINT: collectorUrl(), OTLP_TIMEOUT_MS: 10_000 }
}

type WorkerOptions = Record<string, unknown> & { readonly name: string }

/** The names of the Workers `options` calls: its service bindings and other Workers' Durable Objects. */
const dependenciesOf = (options: WorkerOptions): Array<string> => {
  const named = (value: unknown) => (typeof value === "string" ? value : (value as { name?: string; scriptName?: string }).name ?? (value as { scriptName?: string }).scriptName)
  return [
    ...Object.values((options["serviceBindings"] ?? {}) as Record<string, unknown>).map(named),
    ...Object.values((options["durableObjects"] ?? {}) as Record<string, unknown>).map((value) =>
      typeof value === "object" && value !== null ? (value as { scriptName?: string }).scriptName : undefined
    )
  ].filter((name): name is string => name !== undefined && name !== options.name)
}

/** The mesh's Workers, bundled from source and configured from their wrangler files, with this run's keys. */
const meshWorkers = async (directory: string) =>
  (await buildMesh(join(outdir, directory), {
    minify,
    secrets: (name) => ({
      MESH_SIGNING_KEY: JSON.stringify(secrets.mesh.signing[meshNameOf(name)]),
      MESH_PUBLIC_KEYS: JSON.stringify(secrets.mesh.published),
      ...(name === "auth" ? { AUTH_SIGNING_KEYS: JSON.stringify({ active: secrets.key.kid, keys: [secrets.key] }) } : {})
    })
  })) as unknown as Array<WorkerOptions>

/** The bench's own Workers (bench/workers/<file>.ts), by name. */
const benchWorkers: Record<string, { readonly file?: string } & Record<string, unknown>> = {
  bare: {},
  hono: {},
  meshwork: {},
  "effect-stock": {},
  "api-bare": {},
  "api-hono": {},
  "api-meshwork": {},
  "bare-gateway": { serviceBindings: { ROUTER: "bare-router" } },
  "bare-router": { serviceBindings: { USERS: "bare-users" } },
  "bare-users": { d1Databases: { USERS_DB: "bench-bare-users" } },
  "meshwork-traced": { file: "meshwork" },
  "meshwork-untraced": { file: "meshwork" },
  "hop-client": { serviceBindings: { SERVER: "hop-server" } },
  "hop-server": {},
  "count-batched": { file: "counting-proxy", serviceBindings: { UPSTREAM: "meshwork-products" } },
  "count-per-id": { file: "counting-proxy", serviceBindings: { UPSTREAM: "meshwork-products" } }
}

/**
 * Mesh Workers again under another name, or wired to other Workers: their
 * settings are their own until a variant says otherwise (Target.config).
 */
const rewired: ReadonlyArray<{ readonly name: string; readonly from: string } & Record<string, unknown>> = [
  // Every chain variant runs on a gateway and a router of its own, which serve nothing else, as the
  // hand-written chain's do (the mesh's own Workers also serve the hops and cache groups): each
  // ratio then compares two Workers that differ only in what the variant says.
  { name: "chain-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "chain-router" } },
  { name: "chain-router", from: "meshwork-router" },
  { name: "no-timeouts-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "no-timeouts-router" } },
  { name: "no-timeouts-router", from: "meshwork-router" },
  { name: "no-policies-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "no-policies-router" } },
  { name: "no-policies-router", from: "meshwork-router" },
  { name: "no-cache-gateway", from: "meshwork-gateway" },
  { name: "no-overload-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "no-overload-router" } },
  { name: "no-overload-router", from: "meshwork-router" },
  { name: "live-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "live-router" } },
  { name: "live-router", from: "meshwork-router" },
  { name: "no-live-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "no-live-router" } },
  { name: "no-live-router", from: "meshwork-router" },
  { name: "local-limit-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "local-limit-router" } },
  { name: "local-limit-router", from: "meshwork-router" },
  // Each fan-out variant reaches products through its own counting proxy.
  { name: "meshwork-sessions", from: "meshwork-sessions", serviceBindings: { PRODUCTS: "count-batched" } },
  {
    name: "sessions-per-id",
    from: "meshwork-sessions",
    serviceBindings: { PRODUCTS: "count-per-id" },
    durableObjects: { SESSIONS: { className: "SessionObject", scriptName: "meshwork-sessions", useSQLite: true } }
  },
  // The chain gateway -> router -> users again, twice, for the tracing group: traced and not.
  { name: "traced-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "traced-router" } },
  { name: "traced-router", from: "meshwork-router", serviceBindings: { USERS: "traced-users" } },
  { name: "traced-users", from: "meshwork-users" },
  { name: "untraced-gateway", from: "meshwork-gateway", serviceBindings: { ROUTER: "untraced-router" } },
  { name: "untraced-router", from: "meshwork-router", serviceBindings: { USERS: "untraced-users" } },
  { name: "untraced-users", from: "meshwork-users" }
]

/** Every Worker's options, the mesh's if it was built; bench Workers not bundled yet (`bundle`). */
const catalogue = (mesh: ReadonlyArray<WorkerOptions> | undefined) => {
  const byName = new Map<string, WorkerOptions>()
  for (const [name, { file, ...options }] of Object.entries(benchWorkers)) {
    byName.set(name, { name, modules: true, bundle: file ?? name, compatibilityDate, ...options })
  }
  for (const options of mesh ?? []) byName.set(options.name, options)
  for (const { name, from, serviceBindings, ...options } of rewired) {
    const base = mesh?.find((worker) => worker.name === from)
    if (base === undefined) continue
    byName.set(name, {
      ...base,
      ...options,
      name,
      serviceBindings: { ...(base["serviceBindings"] as object | undefined), ...(serviceBindings as object | undefined) }
    })
  }
  return byName
}

/** The names of `roots` and every Worker they call, transitively. */
const closure = (byName: ReadonlyMap<string, WorkerOptions>, roots: Iterable<string>) => {
  const needed = new Set<string>()
  const visit = (name: string) => {
    if (needed.has(name)) return
    needed.add(name)
    const options = byName.get(name)
    if (options !== undefined) for (const dependency of dependenciesOf(options)) visit(dependency)
  }
  for (const name of roots) visit(name)
  return needed
}

/** The settings each variant gives its Workers (Target.config), resolved; two variants that disagree are an error. */
const variantSettings = (byName: ReadonlyMap<string, WorkerOptions>) => {
  const settings = new Map<string, { readonly by: string; readonly vars: Record<string, unknown> }>()
  for (const target of targets) {
    const resolved: Record<string, Record<string, unknown>> = {}
    for (const [worker, vars] of Object.entries(target.config ?? {})) {
      const defaults = (byName.get(worker)?.["bindings"] ?? {}) as Record<string, unknown>
      resolved[worker] = typeof vars === "function" ? vars(defaults) : { ...vars }
      const other = settings.get(worker)
      if (other !== undefined && JSON.stringify(other.vars) !== JSON.stringify(resolved[worker])) {
        throw new Error(`${target.id} and ${other.by} set ${worker} differently: give one of them a Worker of its own`)
      }
      settings.set(worker, { by: target.id, vars: resolved[worker] })
    }
    if (target.config !== undefined) configOf.set(target.id, resolved)
  }
  return settings
}
/** What each variant set on its Workers, as the results record it. */
const configOf = new Map<string, Record<string, Record<string, unknown>>>()

const isMeshWorker = (name: string) => !(name in benchWorkers)

/** Runs every SQL statement of `files` (under src/services/<service>/migrations) on `db`. */
const migrate = async (db: Awaited<ReturnType<Miniflare["getD1Database"]>>, service: string, files: ReadonlyArray<string>) => {
  for (const file of files) {
    const sql = readFileSync(join(root, "src/services", service, "migrations", file), "utf8")
    for (const statement of unstable_splitSqlQuery(sql)) await db.prepare(statement).run()
  }
}

/** The Workers a target's requests go through (its Worker and those it binds), once workerd is up. */
let workersOf: (target: Target) => ReadonlySet<string> = () => new Set()

const startWorkerd = async () => {
  const roots = targets.flatMap((target) => [target.worker, ...(target.counter === undefined ? [] : [target.counter])])
  // The mesh is built only when a target reaches one of its Workers.
  const meshNeeded = [...closure(catalogue(undefined), roots)].some(isMeshWorker)
  const byName = catalogue(meshNeeded ? await meshWorkers("mesh") : undefined)
  workersOf = (target) => closure(byName, [target.worker])
  const settings = variantSettings(byName)
  const workers = await Promise.all([...closure(byName, roots)].map(async (name) => {
    const options = byName.get(name)
    if (options === undefined) throw new Error(`no Worker ${name}`)
    const { bundle: file, ...rest } = options
    const vars = settings.get(name)?.vars
    return {
      ...rest,
      ...(file === undefined ? {} : { scriptPath: await variant(String(file)) }),
      ...(vars === undefined ? {} : { bindings: { ...(rest["bindings"] as object | undefined), ...vars } }),
      ...directSocket(name)
    }
  }))
  const mf = new Miniflare(convertV4MiniflareOptions({
    workers: workers as never,
    ...(flags.profile === undefined ? {} : { inspectorPort })
  }))
  await mf.ready
  const present = new Set(workers.map((worker) => worker.name))
  // The mesh's users (and its traced copy's: the same database) and the hand-written chain's.
  const usersDatabases = [["meshwork-users", "traced-users"].find((name) => present.has(name)), present.has("bare-users") ? "bare-users" : undefined]
  for (const worker of usersDatabases) {
    if (worker === undefined) continue
    const db = await mf.getD1Database("USERS_DB", worker)
    await migrate(db, "users", ["0001_create_users.sql"])
    await db.prepare(
      "INSERT INTO users (id, email, name, role, active, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ).bind(...Object.values(seeded)).run()
  }
  if (present.has("meshwork-products")) {
    const products = await mf.getD1Database("PRODUCTS_DB", "meshwork-products")
    await migrate(products, "products", ["0001_create_products.sql", "0002_fence_product_writes.sql", "0003_product_imports.sql"])
    await products.batch(Array.from({ length: 100 }, (_, n) =>
      products.prepare(
        `INSERT INTO products (id, sku, name, description, price_cents, currency, stock, seller_id, created_at, updated_at)
         VALUES (?, ?, ?, '', ?, 'USD', 1, ?, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')`
      ).bind(seededProductId(n), `BENCH-${n}`, `Bench ${n}`, 100 + n, seeded.id)))
  }
  // A session of the seeded user whose cart holds the 100 products, for the fan-out variants.
  const sessionsTarget = targets.find((target) => target.worker === "meshwork-sessions")
  if (sessionsTarget !== undefined) {
    const created = await fetch(`http://127.0.0.1:${sessionsTarget.port}/api/sessions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...await credentialHeaders("identity", "meshwork-sessions", "POST", "/api/sessions") },
      body: JSON.stringify({ cart: Object.fromEntries(Array.from({ length: 100 }, (_, n) => [seededProductId(n), 1])) })
    })
    const answer = await created.text()
    for (const target of targets.filter((t) => t.group === "fan-out")) {
      if (created.status === 201) target.path = `/api/sessions/${(JSON.parse(answer) as { id: string }).id}/cart`
      else fail(target.id, { kind: "error", message: `creating the bench session: ${created.status} ${answer}` })
    }
  }
  return mf
}

const workerdPids = () => execFileSync("pgrep", ["-P", String(process.pid), "workerd"], { encoding: "utf8" }).trim().split("\n").filter(Boolean)

/** CPU time (µs) used so far by the workerd processes Miniflare started, in 10 ms steps. */
const workerdCpuMicros = (): number => {
  const ticks = workerdPids().reduce((sum, pid) => {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return sum + Number(fields[11]) + Number(fields[12])
  }, 0)
  return (ticks * 1e6) / 100 // CLK_TCK is 100 on Linux
}

/**
 * The same to the microsecond, for one cold start (a few ms): the scheduler's
 * run time of each live workerd thread (/proc/<pid>/task/<tid>/sched), where
 * the kernel has it; otherwise workerdCpuMicros.
 */
const workerdCpuMicrosPrecise = (): number => {
  try {
    return workerdPids().reduce((sum, pid) =>
      sum + readdirSync(`/proc/${pid}/task`).reduce((threads, tid) => {
        const match = /se\.sum_exec_runtime\s*:\s*([\d.]+)/.exec(readFileSync(`/proc/${pid}/task/${tid}/sched`, "utf8"))
        if (match === null) throw new Error("no sum_exec_runtime")
        return threads + Number(match[1]) * 1000
      }, 0), 0)
  } catch {
    return workerdCpuMicros()
  }
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
  /** Answers other than 2xx and 3xx, and socket errors. */
  readonly errors: number
  readonly statuses: Record<string, number>
  readonly socketErrors: number
  readonly firstErrorBody?: string
  readonly cpuMicrosPerRequest: number
}

/** A Lua string literal of `text`, as a long bracket that `text` does not close. */
const luaString = (text: string) => {
  let level = ""
  while (text.includes(`]${level}]`)) level += "="
  return `[${level}[\n${text}]${level}]`
}

/**
 * wrk's script for one load run: the request (method, headers, body), and a
 * count of the answers by status with the first error's body, printed at the end.
 */
const wrkScript = (request: { method: string; headers: Record<string, string>; body: string | undefined }) =>
  [
    `wrk.method = "${request.method}"`,
    ...(request.body === undefined ? [] : [`wrk.body = ${luaString(request.body)}`]),
    ...Object.entries(request.headers).map(([name, value]) => `wrk.headers[ ${luaString(name)} ] = ${luaString(value)}`),
    `local threads = {}`,
    `function setup(thread) table.insert(threads, thread) end`,
    `function init(args) statuses = {}; first_error = nil end`,
    `function response(status, headers, body)`,
    `  statuses[status] = (statuses[status] or 0) + 1`,
    `  if first_error == nil and (status < 200 or status > 399) then first_error = string.sub(body or "", 1, 2000) end`,
    `end`,
    `function done(summary, latency, requests)`,
    `  for _, thread in ipairs(threads) do`,
    `    for status, count in pairs(thread:get("statuses")) do io.write(string.format("status %d %d\\n", status, count)) end`,
    `    local body = thread:get("first_error")`,
    `    if body ~= nil then io.write("first error body: ", (string.gsub(body, "\\n", " ")), "\\n") end`,
    `  end`,
    `end`
  ].join("\n")

const load = async (target: Target, seconds: number): Promise<Sample> => {
  const script = join(outdir, `wrk-${target.id}.lua`)
  mkdirSync(outdir, { recursive: true })
  writeFileSync(script, wrkScript(await requestOf(target)))
  const cpuBefore = workerdCpuMicros()
  const wrk = spawnSync("wrk", [
    "-t1",
    `-c${target.connections ?? connections}`,
    `-d${seconds}s`,
    "--timeout",
    "10s",
    "--latency",
    "-s",
    script,
    `http://127.0.0.1:${target.port}${target.path}`
  ], { encoding: "utf8" })
  const cpu = workerdCpuMicros() - cpuBefore
  const out = wrk.stdout
  // wrk goes on without a script it cannot run (its errors go to stderr): that run measured something else.
  if (wrk.status !== 0 || wrk.stderr.trim() !== "") throw new Error(`wrk failed (${wrk.status}): ${wrk.stderr}${out}`)
  const number = (re: RegExp) => {
    const match = re.exec(out)
    if (match === null) throw new Error(`unexpected wrk output:\n${out}`)
    return match[1]!
  }
  const requests = Number(number(/(\d+) requests in/))
  const statuses = Object.fromEntries([...out.matchAll(/^status (\d+) (\d+)$/gm)].map((match) => [match[1]!, Number(match[2])]))
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const socketErrorCount = socketErrors === null ? 0 : socketErrors.slice(1).reduce((a, b) => a + Number(b), 0)
  const failedAnswers = Math.max(
    Object.entries(statuses).reduce((sum, [status, count]) => (Number(status) >= 200 && Number(status) < 400 ? sum : sum + count), 0),
    Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0)
  )
  const firstErrorBody = /^first error body: (.*)$/m.exec(out)?.[1]
  return {
    rps: Number(number(/Requests\/sec:\s+([\d.]+)/)),
    p50: toMillis(number(/^\s+50%\s+(\S+)\s*$/m)),
    p99: toMillis(number(/^\s+99%\s+(\S+)\s*$/m)),
    requests,
    errors: failedAnswers + socketErrorCount,
    statuses,
    socketErrors: socketErrorCount,
    ...(firstErrorBody === undefined ? {} : { firstErrorBody }),
    cpuMicrosPerRequest: cpu / requests
  }
}

/** A load run that marks its variant when any request failed. */
const measure = async (target: Target, seconds: number, run: string): Promise<Sample | undefined> => {
  try {
    const sample = await load(target, seconds)
    if (sample.requests === 0) {
      fail(target.id, { kind: "error", message: `${run}: no request completed in ${seconds} s` })
      return undefined
    }
    if (sample.errors > 0) {
      fail(target.id, {
        kind: "requests",
        run,
        statuses: sample.statuses,
        socketErrors: sample.socketErrors,
        ...(sample.firstErrorBody === undefined ? {} : { firstErrorBody: sample.firstErrorBody })
      })
    }
    return sample
  } catch (error) {
    fail(target.id, { kind: "error", message: `${run}: ${messageOf(error)}` })
    return undefined
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

/**
 * The `api` group's contract: every variant gives each of these requests the
 * same status, and the same body where it succeeds (the new user's id aside).
 */
const apiCases: ReadonlyArray<{
  readonly name: string
  readonly method: "GET" | "POST"
  readonly path: string
  readonly contentType?: string
  readonly body?: string
  readonly status: number
  readonly answer?: unknown
}> = [
  {
    name: "a user",
    method: "GET",
    path: "/users/u_42",
    status: 200,
    answer: { id: "u_42", email: "bench@example.com", name: "Bench User", tags: ["bench"] }
  },
  { name: "an over-long id", method: "GET", path: `/users/${"x".repeat(65)}`, status: 400 },
  { name: "an id with a dot", method: "GET", path: "/users/a.b", status: 400 },
  { name: "an id with a space", method: "GET", path: "/users/a%20b", status: 400 },
  {
    name: "a new user",
    method: "POST",
    path: "/users",
    contentType: "application/json",
    body: newUser,
    status: 201,
    answer: { id: "<new>", ...JSON.parse(newUser) as object }
  },
  ...([
    ["not JSON", "{not json"],
    ["an empty body", ""],
    ["an array", "[]"],
    ["null", "null"],
    ["no tags", JSON.stringify({ email: "a@example.com", name: "A" })],
    ["a bad email", JSON.stringify({ email: "nope", name: "A", tags: [] })],
    ["an untrimmed name", JSON.stringify({ email: "a@example.com", name: " A", tags: [] })],
    ["a blank name", JSON.stringify({ email: "a@example.com", name: "", tags: [] })],
    ["tags that are not a list", JSON.stringify({ email: "a@example.com", name: "A", tags: "x" })],
    ["an empty tag", JSON.stringify({ email: "a@example.com", name: "A", tags: [""] })],
    ["eleven tags", JSON.stringify({ email: "a@example.com", name: "A", tags: Array.from({ length: 11 }, (_, i) => `t${i}`) })]
  ] as const).map(([name, body]) => ({ name, method: "POST" as const, path: "/users", contentType: "application/json", body, status: 400 })),
  { name: "a text/plain body", method: "POST", path: "/users", contentType: "text/plain", body: newUser, status: 415 },
  {
    name: "a body over 64 KiB",
    method: "POST",
    path: "/users",
    contentType: "application/json",
    body: JSON.stringify({ email: "a@example.com", name: "A", tags: ["x".repeat(70_000)] }),
    status: 413
  }
]

/** Checks every `api` Worker against apiCases; the variants of one that differs are marked. */
const checkApiAnswers = async () => {
  const apiTargets = targets.filter((t) => t.group === "api")
  for (const target of apiTargets.filter((t, i) => apiTargets.findIndex((other) => other.worker === t.worker) === i)) {
    for (const apiCase of apiCases) {
      const response = await fetch(`http://127.0.0.1:${target.port}${apiCase.path}`, {
        method: apiCase.method,
        ...(apiCase.contentType === undefined ? {} : { headers: { "content-type": apiCase.contentType } }),
        ...(apiCase.body === undefined ? {} : { body: new TextEncoder().encode(apiCase.body) })
      })
      const text = await response.text()
      const answer = (() => {
        if (apiCase.answer === undefined) return undefined
        try {
          const json = JSON.parse(text) as Record<string, unknown>
          return JSON.stringify(apiCase.method === "POST" && /^[0-9a-f-]{36}$/.test(String(json["id"])) ? { ...json, id: "<new>" } : json)
        } catch {
          return text
        }
      })()
      if (response.status !== apiCase.status || (answer !== undefined && answer !== JSON.stringify(apiCase.answer))) {
        for (const variant of apiTargets.filter((t) => t.worker === target.worker)) fail(variant.id, {
          kind: "answer",
          case: `${apiCase.method} ${apiCase.path.slice(0, 40)} with ${apiCase.name}`,
          expected: `${apiCase.status}${apiCase.answer === undefined ? "" : ` ${JSON.stringify(apiCase.answer)}`}`,
          got: `${response.status} ${text}`
        })
      }
    }
  }
}

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
}

/**
 * Profiles each Worker of `target` (or `--isolate`'s) through workerd's
 * inspector, one at a time while wrk loads the target, and prints the
 * functions with the most self time.
 */
const profile = async (target: Target) => {
  const listed = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json() as Array<{
    readonly id: string
    readonly webSocketDebuggerUrl: string
  }>
  // One isolate at a time, each under a load of its own: profiling several at once at this interval
  // stalled them all (no request answered in 6 s, whole seconds sampled in one frame).
  const names = flags.isolate !== undefined ? [flags.isolate] : [...workersOf(target)]
  mkdirSync(join(root, "bench/results"), { recursive: true })
  for (const name of names) {
    const entry = listed.find((candidate) => candidate.id === `core:user:${name}`)
    if (entry === undefined) throw new Error(`no isolate ${name}: ${listed.map((candidate) => candidate.id.replace("core:user:", "")).join(", ")}`)
    const session = await new Promise<{ send: (method: string, params?: object) => Promise<any>; close: () => void }>((resolve, reject) => {
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
          send: (method, params = {}) =>
            new Promise((done) => {
              pending.set(++id, done)
              socket.send(JSON.stringify({ id, method, params }))
            }),
          close: () => socket.close()
        })
    })
    // workerd echoes these commands without a separate answer, so only Profiler.stop is awaited; wrk runs
    // synchronously, so they are given time to leave first.
    void session.send("Profiler.enable")
    void session.send("Profiler.setSamplingInterval", { interval: profileInterval })
    void session.send("Profiler.start")
    await new Promise((resolve) => setTimeout(resolve, 200))
    const sample = await load(target, duration * 2)
    const { profile } = await session.send("Profiler.stop") as {
      profile: { nodes: Array<ProfileNode>; samples: Array<number>; timeDeltas: Array<number> }
    }
    session.close()
    const file = join(root, "bench/results", `${target.id}-${name.replace(/\W+/g, "_")}.cpuprofile`)
    const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
    const self = new Map<string, number>()
    let total = 0
    let notRunning = 0
    profile.samples.forEach((nodeId, i) => {
      const delta = profile.timeDeltas[i] ?? 0
      // A sample long after the one before is time the isolate was not running (workerd ran another),
      // not time in its frame.
      if (delta > 10 * profileInterval) return void (notRunning += delta)
      const frame = nodes.get(nodeId)!.callFrame
      const key = `${frame.functionName || "(anonymous)"} ${frame.url.split("/").at(-1)}:${frame.lineNumber + 1}`
      self.set(key, (self.get(key) ?? 0) + delta)
      total += delta
    })
    // An isolate that runs no JavaScript shows as "(program)" (workerd outside the isolate), like "(idle)".
    const busy = total - (self.get("(idle) :0") ?? 0) - (self.get("(program) :0") ?? 0)
    if (total === 0 || busy < total * 0.05) {
      console.log(`\n${name}: idle under this load`)
      continue
    }
    writeFileSync(file, JSON.stringify(profile))
    // Where this hop's busy time goes: JavaScript (the bundle's, and workerd's own modules such as
    // D1's), workerd's native calls (frames with no script: Request, Response, fetch, streams), GC.
    const share = (match: (key: string) => boolean) =>
      [...self].filter(([key]) => match(key)).reduce((sum, [, micros]) => sum + micros, 0) / busy
    const gc = share((key) => key.startsWith("(garbage collector)"))
    const native = share((key) => key.endsWith(" :0") && !key.startsWith("("))
    console.log(`\n${name}: ${(total / 1000).toFixed(0)} ms sampled${notRunning > 0 ? ` (${(notRunning / 1000).toFixed(0)} ms not running left out)` : ""}, ${file}`)
    console.log(`  ${Math.round(sample.rps)} req/s under the profiler, statuses ${JSON.stringify(sample.statuses)}`)
    console.log(`  busy ${(busy / 1000).toFixed(0)} ms, ${(busy / Math.max(1, sample.requests)).toFixed(0)} µs per request: ` +
      `JavaScript ${(100 * (1 - gc - native)).toFixed(0)}%, native ${(100 * native).toFixed(0)}%, GC ${(100 * gc).toFixed(0)}%`)
    for (const [key, micros] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
      console.log(`  ${((100 * micros) / total).toFixed(1).padStart(5)}%  ${key}`)
    }
  }
}

/** `items` in an order drawn from `seed` (Fisher-Yates over a small xorshift generator). */
const shuffled = <T>(items: ReadonlyArray<T>, seed: number): Array<T> => {
  const out = [...items]
  let state = (seed * 2654435761) >>> 0 || 1
  const next = () => {
    state ^= state << 13
    state >>>= 0
    state ^= state >>> 17
    state ^= state << 5
    state >>>= 0
    return state / 2 ** 32
  }
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

/** The load groups: checks, warm-up, interleaved rounds. */
const runLoad = async (mf: Miniflare) => {
  console.log(`workerd is up (${elapsed()}); checking and warming up every variant...`)
  /** Each variant's samples by round; a round it failed is a hole. */
  const samples = new Map<string, Array<Sample | undefined>>(targets.map((target) => [target.id, Array.from({ length: rounds })]))
  const broken = (target: Target) => failures.get(target.id)?.some((f) => f.kind === "check" || f.kind === "error") === true
  for (const target of targets) {
    if (broken(target)) continue
    try {
      const check = await send(target)
      const body = await check.text()
      if (!check.ok) {
        fail(target.id, { kind: "check", status: check.status, body })
        continue
      }
    } catch (error) {
      fail(target.id, { kind: "error", message: `check: ${messageOf(error)}` })
      continue
    }
    await measure(target, 1, "warm-up") // JIT, layer build, D1 connection
  }
  if (targets.some((t) => t.group === "api")) await checkApiAnswers()
  // The cached variant answers from the cache; the uncached one never does.
  for (const target of targets.filter((t) => t.group === "cache" && !broken(t))) {
    const answer = await send(target)
    await answer.body?.cancel()
    const cache = answer.headers.get("x-cache")
    if ((target.id === "product-cached") !== (cache === "HIT")) {
      fail(target.id, { kind: "answer", case: "X-Cache", expected: target.id === "product-cached" ? "HIT" : "not HIT", got: String(cache) })
    }
  }
  // Upstream calls one fan-out request makes, as its counting proxy saw them.
  const upstreamCalls: Record<string, number> = {}
  for (const target of targets.filter((t) => t.counter !== undefined && !broken(t))) {
    try {
      const proxy = await mf.getWorker(target.counter!)
      const count = async () => ((await (await proxy.fetch("http://count/__count")).json()) as { count: number }).count
      const before = await count()
      const answer = await send(target)
      const cart = await answer.json() as { lines: ReadonlyArray<{ product: unknown }> }
      if (cart.lines.length !== 100 || cart.lines.some((line) => line.product === null)) throw new Error("the cart is not complete")
      upstreamCalls[target.id] = (await count()) - before
      console.log(`${target.id}: ${upstreamCalls[target.id]} upstream calls for a 100-line cart`)
    } catch (error) {
      fail(target.id, { kind: "error", message: `cart check: ${messageOf(error)}` })
    }
  }
  if (flags.profile !== undefined) {
    const target = targets.find((t) => t.id === flags.profile)
    if (target === undefined) throw new Error(`no variant ${flags.profile}: ${targets.map((t) => t.id).join(", ")}`)
    await profile(target)
    return undefined
  }
  const measured = targets.filter((target) => !broken(target))
  for (let round = 1; round <= rounds; round++) {
    // A new order each round (seeded by the round, so runs are alike): no variant always runs first
    // or last, nor always right after the same neighbour, whose leftovers (a D1 file's checkpoint, a
    // collector's backlog, garbage) would otherwise always fall on it. A rotation kept neighbours.
    const order = shuffled(measured, round).filter((target) => !broken(target))
    for (const target of order) {
      const sample = await measure(target, duration, `round ${round}`)
      samples.get(target.id)![round - 1] = sample
    }
    console.log(`round ${round}/${rounds} (${elapsed()}): ${order.map((t) => `${t.id} ${Math.round(samples.get(t.id)![round - 1]?.rps ?? 0)}`).join(", ")}`)
  }

  const summary = targets.map((target) => {
    const runs = samples.get(target.id)!.filter((sample) => sample !== undefined)
    const statuses: Record<string, number> = {}
    for (const run of runs) for (const [status, count] of Object.entries(run.statuses)) statuses[status] = (statuses[status] ?? 0) + count
    const of = (f: (s: Sample) => number, digits: number) => (runs.length === 0 ? null : Number(median(runs.map(f)).toFixed(digits)))
    return {
      id: target.id,
      group: target.group,
      rps: of((s) => s.rps, 0),
      p50Ms: of((s) => s.p50, 3),
      p99Ms: of((s) => s.p99, 3),
      cpuMicrosPerRequest: of((s) => s.cpuMicrosPerRequest, 1),
      errors: runs.reduce((sum, s) => sum + s.errors, 0),
      statuses,
      failed: failures.has(target.id),
      ...(configOf.has(target.id) ? { config: configOf.get(target.id) } : {})
    }
  })
  const ratioRows = ratios
    .filter(([, a, b]) => samples.has(a) && samples.has(b))
    .flatMap(([name, a, b]) => {
      // Only the rounds both variants ran.
      const pairs = samples.get(a)!.flatMap((sample, i) => {
        const other = samples.get(b)![i]
        return sample === undefined || other === undefined ? [] : [[sample, other] as const]
      })
      if (pairs.length === 0) return []
      const perRound = pairs.map(([x, y]) => x.rps / y.rps)
      const cpu = pairs.map(([x, y]) => y.cpuMicrosPerRequest / x.cpuMicrosPerRequest)
      return [{
        name,
        throughput: Number(median(perRound).toFixed(3)),
        perRound: perRound.map((r) => Number(r.toFixed(3))),
        cpuEfficiency: Number(median(cpu).toFixed(3)),
        failed: failures.has(a) || failures.has(b)
      }]
    })

  console.log("\nvariant               req/s     p50 ms   p99 ms   workerd CPU µs/req   errors")
  for (const row of summary) {
    const fixed = (value: number | null, digits: number, width: number) => (value === null ? "-" : value.toFixed(digits)).padStart(width)
    console.log(
      `${row.id.padEnd(19)} ${fixed(row.rps, 0, 7)}   ${fixed(row.p50Ms, 2, 6)}   ${fixed(row.p99Ms, 2, 6)}   ${
        fixed(row.cpuMicrosPerRequest, 1, 18)
      }   ${row.errors}${row.failed ? "  FAILED" : ""}`
    )
  }
  console.log("\nratio (median of per-round ratios)   req/s    CPU (inverse µs/req)   rounds")
  for (const row of ratioRows) {
    console.log(
      `${row.name.padEnd(36)} ${row.throughput.toFixed(3).padStart(6)}   ${row.cpuEfficiency.toFixed(3).padStart(20)}   ${
        row.perRound.join(" ")
      }${row.failed ? "  FAILED" : ""}`
    )
  }

  const otlpExports = samples.has("chain-traced") && collector !== undefined ? await collector.received() : undefined
  if (otlpExports !== undefined) {
    console.log(`\ntraced chain: ${otlpExports.count} OTLP exports received, ${(otlpExports.bytes / 1024).toFixed(0)} KiB`)
  }
  return { summary, ratios: ratioRows, upstreamCalls, otlpExports, samples: Object.fromEntries(samples) }
}

/** The `cold` group: the one-hop variants, and each Worker of the mesh, by the request that first reaches it. */
const coldVariants: ReadonlyArray<{ readonly id: string; readonly worker: string; readonly path: string; readonly credentials?: "identity" }> = [
  { id: "bare", worker: "bare", path: "/hello" },
  { id: "hono", worker: "hono", path: "/hello" },
  { id: "meshwork", worker: "meshwork", path: "/hello" },
  // Effect's own HTTP stack: the floor under any Worker built on Effect.
  { id: "effect-stock", worker: "effect-stock", path: "/hello" },
  // The gateway's and the router's health probe the (warm) Workers behind them.
  { id: "gateway", worker: "meshwork-gateway", path: "/health" },
  { id: "router", worker: "meshwork-router", path: "/health", credentials: "identity" },
  { id: "auth", worker: "meshwork-auth", path: "/health", credentials: "identity" },
  { id: "users", worker: "meshwork-users", path: "/health", credentials: "identity" },
  { id: "products", worker: "meshwork-products", path: "/health", credentials: "identity" },
  { id: "sessions", worker: "meshwork-sessions", path: "/health", credentials: "identity" }
]

/** How a fresh isolate gets `options`' bindings through the cold host (bench/workers/cold-host.ts). */
const coldSpec = (
  variantId: string,
  options: WorkerOptions,
  path: string,
  hostBindings: { services: Map<string, string>; d1: Map<string, string>; durableObjects: Map<string, unknown> }
) => {
  const passed: Record<string, string> = {}
  for (const [name, service] of Object.entries((options["serviceBindings"] ?? {}) as Record<string, unknown>)) {
    const target = typeof service === "string" ? service : (service as { name: string }).name
    const hostName = `SERVICE_${target.replace(/\W/g, "_")}`
    hostBindings.services.set(hostName, target)
    passed[name] = hostName
  }
  for (const [name, database] of Object.entries((options["d1Databases"] ?? {}) as Record<string, unknown>)) {
    const id = typeof database === "string" ? database : (database as { id: string }).id
    const hostName = `D1_${id.replace(/\W/g, "_")}`
    hostBindings.d1.set(hostName, id)
    passed[name] = hostName
  }
  const durableObjects: Record<string, string> = {}
  for (const [name, object] of Object.entries((options["durableObjects"] ?? {}) as Record<string, { className: string; scriptName?: string; useSQLite?: boolean }>)) {
    const hostName = `DO_${variantId}_${name}`.replace(/\W/g, "_")
    hostBindings.durableObjects.set(hostName, { className: object.className, scriptName: object.scriptName ?? options.name, useSQLite: object.useSQLite ?? false })
    durableObjects[name] = hostName
  }
  const names = (key: string) => Object.keys((options[key] ?? {}) as object)
  return {
    compatibilityDate: String(options["compatibilityDate"] ?? compatibilityDate),
    path,
    vars: (options["bindings"] ?? {}) as Record<string, unknown>,
    passed,
    kv: names("kvNamespaces"),
    durableObjects,
    unavailable: [...names("queueProducers"), ...names("ratelimits")]
  }
}

/**
 * Times fresh isolates: per sample, each variant's bundle is loaded into a new
 * isolate that answers one request; wall time (from here) and workerd CPU
 * (from /proc) to the first response, and to the answer of another fresh
 * isolate that only evaluates the module. A workerd of its own, with the
 * whole mesh warm behind the isolates.
 */
const runCold = async () => {
  const mesh = await meshWorkers("cold-mesh")
  const hostBindings = { services: new Map<string, string>(), d1: new Map<string, string>(), durableObjects: new Map<string, unknown>() }
  const code: Record<string, string> = {}
  const specs: Record<string, string> = {}
  for (const cold of coldVariants) {
    const options: WorkerOptions = mesh.find((worker) => worker.name === cold.worker)
      ?? { name: cold.worker, scriptPath: await variant(cold.worker), compatibilityDate }
    code[`CODE_${cold.id}`] = readFileSync(String(options["scriptPath"]), "utf8").replace(/\n\/\/# sourceMappingURL=.*\s*$/, "\n")
    specs[`SPEC_${cold.id}`] = JSON.stringify(coldSpec(cold.id, options, cold.path, hostBindings))
  }
  const hostPort = freePort()
  const host = {
    name: "cold-host",
    modules: true,
    scriptPath: await variant("cold-host"),
    compatibilityDate,
    workerLoaders: { LOADER: {} },
    bindings: { ...code, ...specs },
    serviceBindings: {
      ...Object.fromEntries(hostBindings.services),
      KV_STAND_IN: { name: "cold-host", entrypoint: "KvStandIn" },
      DURABLE_OBJECTS_STAND_IN: { name: "cold-host", entrypoint: "DurableObjectsStandIn" },
      UNAVAILABLE: { name: "cold-host", entrypoint: "Unavailable" }
    },
    d1Databases: Object.fromEntries(hostBindings.d1),
    durableObjects: Object.fromEntries(hostBindings.durableObjects),
    kvNamespaces: { MESH_CONFIG: "00000000000040008000000000000c0f" },
    unsafeDirectSockets: [{ host: "127.0.0.1", port: hostPort }]
  }
  const mf = new Miniflare(convertV4MiniflareOptions({ workers: [host, ...mesh] as never }))
  try {
    await mf.ready
    // The mesh behind the fresh isolates is warm: each Worker has answered its health probe.
    for (const cold of coldVariants.filter((c) => c.worker.startsWith("meshwork-"))) {
      const worker = await mf.getWorker(cold.worker)
      const headers = cold.credentials === undefined ? {} : await credentialHeaders(cold.credentials, cold.worker, "GET", cold.path)
      await (await worker.fetch(`http://${cold.id}.internal${cold.path}`, { headers })).text()
    }
    interface ColdSample {
      readonly ms: number
      readonly cpuMs: number
      /** The same for a fresh isolate that answers once the variant's module is evaluated. */
      readonly evaluatedMs: number
      readonly evaluatedCpuMs: number
    }
    /** One fresh isolate of `cold`: wall and workerd CPU ms to its answer, or undefined if it failed. */
    const coldStart = async (cold: (typeof coldVariants)[number], evaluateOnly: boolean) => {
      const headers = cold.credentials === undefined ? {} : await credentialHeaders(cold.credentials, cold.worker, "GET", cold.path)
      const cpuBefore = workerdCpuMicrosPrecise()
      const start = performance.now()
      try {
        const response = await fetch(`http://127.0.0.1:${hostPort}/cold/${cold.id}${evaluateOnly ? "?evaluate-only" : ""}`, { headers })
        const body = await response.text()
        const ms = performance.now() - start
        const cpuMs = Math.max(0, workerdCpuMicrosPrecise() - cpuBefore) / 1000
        if (response.ok) return { ms, cpuMs }
        fail(`cold-${cold.id}`, { kind: "check", status: response.status, body })
      } catch (error) {
        fail(`cold-${cold.id}`, { kind: "error", message: messageOf(error) })
      }
      return undefined
    }
    const samples = new Map<string, Array<ColdSample>>(coldVariants.map((c) => [c.id, []]))
    // One round to warm the host and the loader, then the samples, in a new order each round (as the load rounds).
    for (let round = 0; round <= coldSamples; round++) {
      const order = shuffled(coldVariants, round + 1)
      for (const cold of order) {
        if (failures.has(`cold-${cold.id}`)) continue
        const evaluated = await coldStart(cold, true)
        const first = await coldStart(cold, false)
        if (round > 0 && evaluated !== undefined && first !== undefined) {
          samples.get(cold.id)!.push({ ...first, evaluatedMs: evaluated.ms, evaluatedCpuMs: evaluated.cpuMs })
        }
      }
      if (round > 0) console.log(`cold sample ${round}/${coldSamples}: ${order.map((c) => `${c.id} ${samples.get(c.id)!.at(-1)?.ms.toFixed(0) ?? "-"} ms`).join(", ")}`)
    }
    const hono = samples.get("hono")!
    const summary = coldVariants.map((cold) => {
      const runs = samples.get(cold.id)!
      const perSample = (f: (s: ColdSample) => number) =>
        runs.length === hono.length && runs.length > 0 ? Number(median(runs.map((s, i) => f(s) / f(hono[i]!))).toFixed(3)) : null
      const of = (f: (s: ColdSample) => number) => (runs.length === 0 ? null : Number(median(runs.map(f)).toFixed(1)))
      return {
        id: cold.id,
        worker: cold.worker,
        request: `GET ${cold.path}`,
        ms: of((s) => s.ms),
        cpuMs: of((s) => s.cpuMs),
        evaluatedMs: of((s) => s.evaluatedMs),
        evaluatedCpuMs: of((s) => s.evaluatedCpuMs),
        timeToHono: perSample((s) => s.ms),
        cpuToHono: perSample((s) => s.cpuMs),
        failed: failures.has(`cold-${cold.id}`)
      }
    })
    console.log("\ncold start     first response: ms   CPU ms   module evaluated: ms   CPU ms   time/hono   CPU/hono")
    const fixed = (value: number | null, digits: number, width: number) => (value === null ? "-" : value.toFixed(digits)).padStart(width)
    for (const row of summary) {
      console.log(
        `${row.id.padEnd(14)} ${fixed(row.ms, 1, 18)}   ${fixed(row.cpuMs, 1, 6)}   ${fixed(row.evaluatedMs, 1, 20)}   ${
          fixed(row.evaluatedCpuMs, 1, 6)
        }   ${fixed(row.timeToHono, 3, 9)}   ${fixed(row.cpuToHono, 3, 8)}${row.failed ? "  FAILED" : ""}`
      )
    }
    return { summary, samples: Object.fromEntries(samples) }
  } finally {
    await mf.dispose()
  }
}

/** The markdown table of a full run, for bench/RESULTS.md. */
/** Minutes and seconds since the run began. */
const benchStarted = Date.now()
const elapsed = () => {
  const seconds = Math.round((Date.now() - benchStarted) / 1000)
  return `${Math.floor(seconds / 60)} min ${String(seconds % 60).padStart(2, "0")} s`
}

const resultsTable = (results: {
  readonly commit: string
  readonly took: string
  readonly machine: ReturnType<typeof machine>
  readonly clean: boolean
  readonly failures: Record<string, unknown>
  readonly load: Awaited<ReturnType<typeof runLoad>> | undefined
  readonly cold: Awaited<ReturnType<typeof runCold>> | undefined
}, file: string) => {
  const two = (value: number | null | undefined) => (value === null || value === undefined ? "-" : value.toFixed(2))
  const hono = results.cold?.summary.find((row) => row.id === "hono")
  return [
    `### ${file.replace(/\.json$/, "")} (\`${results.commit}\`)`,
    "",
    `${rounds} rounds of ${duration} s, ${connections} connections, ${coldSamples} cold samples; took ${results.took}; load average at the start ${
      results.machine.loadAverage.join(", ")
    }; ${results.clean ? "every variant ran clean" : `**not clean**: ${Object.keys(results.failures).join(", ")} failed (the JSON says how)`}.`,
    "Load ratios: higher is better (req/s; CPU is the inverse ratio of µs per request). Cold ratios: higher is slower.",
    "",
    "| ratio | median | CPU | per round, or first responses |",
    "| --- | --- | --- | --- |",
    ...(results.load?.ratios ?? []).map((row) =>
      `| ${row.name}${row.failed ? " (FAILED)" : ""} | ${two(row.throughput)} | ${two(row.cpuEfficiency)} | ${row.perRound.map(two).join(" ")} |`
    ),
    ...(results.cold?.summary ?? []).filter((row) => row.id !== "hono").map((row) =>
      `| cold ${row.id}/hono${row.failed ? " (FAILED)" : ""} | ${two(row.timeToHono)} | ${two(row.cpuToHono)} | ${row.ms ?? "-"} ms vs ${hono?.ms ?? "-"} ms (module evaluated: ${
        row.evaluatedMs ?? "-"
      } ms vs ${hono?.evaluatedMs ?? "-"} ms) |`
    ),
    ""
  ].join("\n")
}

/** Adds a full run's table to bench/RESULTS.md, newest first, under "Full runs". */
const recordFullRun = (table: string) => {
  const path = join(root, "bench/RESULTS.md")
  const marker = "<!-- full runs, newest first: bench/run.ts adds one table per full run below this line -->"
  const text = readFileSync(path, "utf8")
  if (!text.includes(marker)) throw new Error(`bench/RESULTS.md has no line ${marker}`)
  writeFileSync(path, text.replace(marker, `${marker}\n\n${table}`))
}

const main = async (): Promise<boolean> => {
  if (spawnSync("wrk", ["-v"]).error !== undefined) throw new Error("wrk is not installed: apt-get install -y wrk")
  const started = new Date()
  const machineAtStart = machine()
  let load: Awaited<ReturnType<typeof runLoad>> | undefined
  let cold: Awaited<ReturnType<typeof runCold>> | undefined
  if (targets.length > 0) {
    console.log(`Building and starting ${targets.length} variants in workerd...`)
    try {
      const mf = await startWorkerd()
      try {
        load = await runLoad(mf)
      } finally {
        await mf.dispose()
      }
    } catch (error) {
      // The load groups could not run at all: said, and the cold starts still measured and written.
      if (flags.profile !== undefined) throw error
      console.error(error)
      fail("load", { kind: "error", message: messageOf(error) })
    }
    if (flags.profile !== undefined) return failures.size === 0
  }
  if (selected("cold") && flags.profile === undefined && flags.variants === undefined) {
    console.log(`\nCold starts: ${coldVariants.length} variants, ${coldSamples} fresh isolates each...`)
    try {
      cold = await runCold()
    } catch (error) {
      fail("cold", { kind: "error", message: messageOf(error) })
    }
  }
  const clean = failures.size === 0
  const stamp = started.toISOString().replaceAll(":", "-").replace(/\..*/, "")
  const file = `${stamp}.json`
  mkdirSync(join(root, "bench/results"), { recursive: true })
  const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).trim()
  const results = {
    date: started.toISOString(),
    commit,
    took: elapsed(),
    machine: machineAtStart,
    settings: { groups: only ?? groups, rounds, durationSeconds: duration, connections, threads: 1, coldSamples },
    clean,
    failures: Object.fromEntries(failures),
    load,
    cold
  }
  writeFileSync(join(root, "bench/results", file), JSON.stringify(results, null, 2) + "\n")
  console.log(`\nwrote bench/results/${file} (the run took ${results.took})`)
  if (fullRun) {
    recordFullRun(resultsTable(results, file))
    console.log("added its table to bench/RESULTS.md")
  }
  if (!clean) {
    console.log(`\nNot clean: ${[...failures.keys()].join(", ")} failed; their numbers are not comparable.`)
    for (const [id, list] of failures) for (const failure of list) console.log(`  ${id}: ${describeFailure(failure)}`)
  }
  return clean
}

let clean = false
try {
  clean = await main()
} catch (error) {
  console.error(error)
} finally {
  for (const child of children) child.kill()
}
process.exit(clean ? 0 : 1)
