/**
 * Routing and forwarding policies, over a real service binding (ECHO, a
 * Worker that answers with what it received).
 */
import { env } from "cloudflare:workers"
import { ConfigProvider, Effect, Exit, Layer } from "effect"
import { describe, expect, it } from "vitest"
import { IdentityKey, requireIdentity } from "../../src/layers/security/Identity.ts"
import { CircuitBreakers } from "../../src/layers/resilience/CircuitBreakers.ts"
import * as HealthReport from "../../src/layers/routing/HealthReport.ts"
import * as Proxy from "../../src/layers/routing/Proxy.ts"
import { matchesPrefix, RoutingTable } from "../../src/layers/routing/RoutingTable.ts"
import { proxy } from "../../src/layers/routing/Proxy.ts"
import * as Bindings from "../../src/runtime/Bindings.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import { meshAdmin } from "../../src/layers/release/MeshAdmin.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { meshEnv, meshHeaders } from "../helpers.ts"

interface Echo {
  readonly method: string
  readonly url: string
  readonly headers: ReadonlyArray<readonly [string, string]>
  readonly body: string
}

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

describe("matchesPrefix", () => {
  it.each([
    ["/api/users", true],
    ["/api/users/", true],
    ["/api/users/7", true],
    ["/api/users/7/orders", true],
    ["/api/usersadmin", false],
    ["/api/user", false],
    ["/api", false],
    ["/api/users-admin", false]
  ])("/api/users vs %s: %s", (path, expected) => {
    expect(matchesPrefix(path, "/api/users")).toBe(expected)
  })

  it("prefers the longest matching prefix", () => {
    const fetcher = env.ECHO
    const table = RoutingTable.make([
      { service: "api", prefix: "/api", binding: "A", fetcher },
      { service: "users", prefix: "/api/users", binding: "U", fetcher },
      { service: "admin", prefix: "/api/users/admin", binding: "X", fetcher }
    ])
    expect(table.match("/api/users/admin/1")?.service).toBe("admin")
    expect(table.match("/api/users/adminx")?.service).toBe("users")
    expect(table.match("/api/products")?.service).toBe("api")
    expect(table.match("/apix")).toBeUndefined()
  })
})

describe("RoutingTable.layer", () => {
  const build = (env: Record<string, unknown>) =>
    Effect.runPromiseExit(
      Effect.provide(
        RoutingTable,
        RoutingTable.layer.pipe(
          Layer.provide(Bindings.WorkerEnv.layer(env)),
          Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env)))
        )
      )
    )

  it("decodes the ROUTES var and resolves every binding", async () => {
    const exit = await build({ ROUTES: [{ service: "users", prefix: "/api/users", binding: "USERS" }], USERS: env.ECHO })
    expect(Exit.isSuccess(exit) && exit.value.upstreams.map((upstream) => upstream.service)).toEqual(["users"])
  })

  it.each([
    ["a trailing slash", [{ service: "users", prefix: "/api/users/", binding: "USERS" }]],
    ["a dot segment", [{ service: "users", prefix: "/api/../users", binding: "USERS" }]],
    ["no leading slash", [{ service: "users", prefix: "api/users", binding: "USERS" }]],
    ["a duplicate prefix", [
      { service: "users", prefix: "/api/users", binding: "USERS" },
      { service: "people", prefix: "/api/users", binding: "USERS" }
    ]],
    ["a missing field", [{ service: "users", prefix: "/api/users" }]]
  ])("refuses a table with %s", async (_, routes) => {
    const exit = await build({ ROUTES: routes, USERS: env.ECHO })
    expect(Exit.isFailure(exit)).toBe(true)
    expect(String(Exit.isFailure(exit) && exit.cause)).toContain("ConfigError")
  })

  it("refuses a route whose binding is missing, naming it", async () => {
    const exit = await build({ ROUTES: [{ service: "users", prefix: "/api/users", binding: "USERS" }] })
    expect(String(Exit.isFailure(exit) && exit.cause)).toContain("env.USERS is not a service binding")
  })
})

describe("Proxy.checkPath", () => {
  it.each([
    "/api/users",
    "/api/users/7",
    "/api/users/a..b",
    "/api/users/..b",
    "/api/.well-known/jwks.json",
    "/api/users/%20x",
    "/api/users/",
    "/"
  ])("accepts %s", async (path) => {
    await expect(run(Proxy.checkPath(path))).resolves.toBeUndefined()
  })

  it.each([
    "/api//users",
    "//api/users",
    "/api/users/../admin",
    "/api/users/..",
    "/api/./users",
    "/api/users/%2e%2e/admin",
    "/api/users/%2E./admin",
    "/api/users/.%2e",
    "/api/users%2Fadmin",
    "/api/users%2fadmin",
    "/api/users%5Cadmin",
    "/api/users%5cadmin",
    "/api/users\\admin",
    "/api/users/%00"
  ])("refuses %s with a 400 problem", async (path) => {
    const exit = await Effect.runPromiseExit(Proxy.checkPath(path))
    expect(Exit.isFailure(exit) && String(exit.cause)).toContain("BadRequest")
  })
})

describe("Proxy.forward over a service binding", () => {
  const forward = (init: RequestInit & { readonly url: string }) =>
    run(Effect.flatMap(Proxy.forward({ service: "echo", fetcher: env.ECHO }, new Request(init.url, init)), (response) =>
      Effect.promise(async () => ({ response, echo: await response.json() as Echo }))))

  it("delivers method, path, query and body exactly as received", async () => {
    const url = "http://mesh/api/users/a%20b/%C3%A9?b=2&a=1&a=3&empty=&enc=%2F%3F"
    const { echo } = await forward({ url, method: "POST", body: "payload", headers: { "content-type": "text/plain" } })
    expect(echo.method).toBe("POST")
    expect(echo.url).toBe(url)
    expect(echo.body).toBe("payload")
  })

  it("drops hop-by-hop request headers and every header Connection names, keeping the rest", async () => {
    const { echo } = await forward({
      url: "http://mesh/api/users",
      headers: {
        connection: "keep-alive, X-Secret, x-other",
        "keep-alive": "timeout=5",
        "x-secret": "1",
        "x-other": "2",
        te: "trailers",
        upgrade: "h2c",
        "proxy-authorization": "Basic abc",
        "x-kept": "yes",
        accept: "application/json"
      }
    })
    const names = echo.headers.map(([name]) => name)
    for (const dropped of ["connection", "keep-alive", "x-secret", "x-other", "te", "upgrade", "proxy-authorization"]) {
      expect(names).not.toContain(dropped)
    }
    expect(names).toEqual(expect.arrayContaining(["x-kept", "accept"]))
  })

  it("drops hop-by-hop response headers and those the upstream's Connection names", async () => {
    const { response } = await forward({ url: "http://mesh/x" })
    expect(response.headers.get("x-upstream-secret")).toBeNull()
    expect(response.headers.get("keep-alive")).toBeNull()
    expect(response.headers.get("connection")).toBeNull()
    expect(response.headers.get("x-kept")).toBe("1")
  })

  it("answers 502 naming the service when the upstream cannot be reached", async () => {
    // A binding whose fetch rejects, as a crashed or missing Worker's does.
    const unreachable = { fetch: () => Promise.reject(new Error("connection refused")) } as unknown as Fetcher
    const exit = await Effect.runPromiseExit(Proxy.forward({ service: "users", fetcher: unreachable }, new Request("http://mesh/api/users")))
    expect(Exit.isFailure(exit) && String(exit.cause)).toContain("BadGateway")
  })
})

describe("proxy handler", () => {
  const worker = Worker.make({
    name: "edge",
    layer: Layer.merge(RoutingTable.layer, IdentityKey.layer),
    fetch: proxy("edge")
  })
  const edgeEnv = {
    ROUTES: [{ service: "echo", prefix: "/api/echo", binding: "ECHO" }],
    ECHO: env.ECHO,
    ...meshEnv("gateway"),
    OTLP_ENDPOINT: env.OTLP_ENDPOINT
  }
  const call = async (path: string, init?: RequestInit) =>
    worker.fetch!(
      new Request(`http://mesh${path}`, init) as Request<unknown, IncomingRequestCfProperties>,
      edgeEnv,
      { waitUntil: () => {}, passThroughOnException: () => {}, props: {} } as unknown as ExecutionContext
    )

  it("routes on segment boundaries and keeps the query", async () => {
    const hit = await call("/api/echo/7?x=1")
    expect(hit.status).toBe(200)
    expect((await hit.json() as Echo).url).toBe("http://mesh/api/echo/7?x=1")
    const miss = await call("/api/echoadmin")
    expect(miss.status).toBe(404)
    expect(miss.headers.get("content-type")).toBe("application/problem+json")
  })

  it("refuses ambiguous paths before routing", async () => {
    const response = await call("/api/echo%2F..%2Fadmin")
    expect(response.status).toBe(400)
    expect(await response.json()).toMatchObject({ status: 400, title: "Bad Request" })
  })

  it("answers GET /health with its status only to a caller outside the mesh, and 405 for other methods", async () => {
    const health = await call("/health")
    expect(health.status).toBe(200)
    expect(await health.json()).toEqual({ status: "ok" })
    expect((await call("/health", { method: "POST" })).status).toBe(405)
  })

  it("reports its upstreams' health to another Worker of the mesh", async () => {
    const internal = Worker.make({
      name: "router",
      layer: Layer.merge(RoutingTable.layer, IdentityKey.layer),
      fetch: requireIdentity(proxy("router"))
    })
    const response = await internal.fetch!(
      new Request("http://mesh/health", { headers: await meshHeaders({ to: "router", from: "gateway", path: "/health" }) }) as Request<
        unknown,
        IncomingRequestCfProperties
      >,
      { ...edgeEnv, ...meshEnv("router", [{ from: ["gateway"], paths: ["*"] }]) },
      { waitUntil: () => {}, passThroughOnException: () => {}, props: {} } as unknown as ExecutionContext
    )
    expect(response.status).toBe(503) // the echo Worker has no health endpoint: it is reported down
    expect(await response.json()).toMatchObject({ service: "router", status: "degraded", upstreams: { echo: { status: "down" } } })
  })
})

describe("HealthReport", () => {
  /** A Worker's health endpoint, answering `status`. */
  const answering = (status: "ok" | "degraded") =>
    ({
      fetch: async (url: string) => Response.json({ service: new URL(url).hostname.split(".")[0], status }, { status: status === "ok" ? 200 : 503 })
    }) as unknown as Fetcher
  const services = Layer.mergeAll(IdentityKey.layer, CircuitBreakers.layer).pipe(Layer.provide(Worker.envLayer(meshEnv("router"))))
  const reportOf = (upstreams: Parameters<typeof HealthReport.report>[1], before: (breakers: CircuitBreakers["Service"]) => Effect.Effect<unknown, unknown> = () => Effect.void) =>
    Effect.runPromise(
      Effect.gen(function*() {
        yield* Effect.exit(before(yield* CircuitBreakers))
        return yield* HealthReport.report("router", upstreams)
      }).pipe(Effect.provide(services))
    )

  it("probes every version of a route, each named as its breaker is", async () => {
    const versions = { service: "users", defaultVersion: "blue", fetchers: new Map([["blue", answering("ok")], ["green", answering("degraded")]]) }
    const report = await reportOf([{ service: "users", fetcher: answering("ok"), resolvedVersions: versions }])
    expect(report).toMatchObject({
      status: "degraded",
      upstreams: {
        users: { status: "up", version: "blue" },
        "users@green": { status: "down", version: "green", detail: "users@green reported degraded (HTTP 503)" }
      }
    })
  })

  it("refuses to send traffic to a version that is not ready, saying why, and allows what goes to healthy versions", async () => {
    const vars = {
      ...meshEnv("gateway"),
      ROUTES: [{ service: "users", prefix: "/api/users", binding: "BLUE", versions: { blue: "BLUE", green: "GREEN" } }],
      BLUE: answering("ok"),
      GREEN: answering("degraded"),
      MESH_CONFIG: env.MESH_CONFIG
    }
    const admin = { kind: "user", sub: "ada", roles: ["admin"] } as const
    const put = (split: object) =>
      Effect.runPromise(
        meshAdmin(
          new Request("http://gateway/api/admin/traffic/users", { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(split) }),
          admin
        ).pipe(
          Effect.catch((error) => Effect.succeed(Problem.fromError(error))),
          Effect.provide(Layer.mergeAll(RoutingTable.layer, IdentityKey.layer).pipe(Layer.provideMerge(Worker.envLayer(vars)))),
          Effect.provideService(Bindings.Invocation, { waitUntil: () => {} })
        )
      )
    for (const split of [{ stable: "blue", canary: "green", weight: 10 }, { stable: "green", weight: 0 }]) {
      const refused = await put(split)
      expect(refused.status).toBe(409)
      expect(await refused.json()).toMatchObject({ detail: expect.stringMatching(/^users@green is not ready, so no traffic is sent to it: users@green reported degraded/) })
    }
    // Weight 0 for the canary sends it nothing: allowed.
    expect((await put({ stable: "blue", canary: "green", weight: 0 })).status).toBe(200)
    await env.MESH_CONFIG.delete("traffic/users")
  })

  it("is degraded while a breaker is open, though every upstream answers", async () => {
    const healthy = [{ service: "products", fetcher: answering("ok") }]
    expect(await reportOf(healthy)).toMatchObject({ status: "ok", upstreams: { products: { status: "up", breaker: "Closed" } } })
    const report = await reportOf(healthy, (breakers) =>
      breakers.guard({ service: "products", breaker: { consecutiveFailures: 1, openMs: 60_000 } }, Effect.succeed(new Response(null, { status: 503 }))))
    expect(report).toMatchObject({ status: "degraded", upstreams: { products: { status: "up", breaker: "Open" } } })
  })
})
