/**
 * CORS as a policy: preflights answered without the handler, allowed origins
 * decorated (problem answers too), other origins left without CORS headers,
 * credentials and `*` kept apart, and configurations browsers would refuse
 * refused when the layer is built.
 */
import { expect, it } from "@effect/vitest"
import { describe } from "vitest"
import { Effect, Exit, Layer } from "effect"
import { Cors, type CorsRoute, withCors } from "../../src/layers/edge/Cors.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import { envLayer } from "../../src/runtime/Worker.ts"

const app = "https://app.example.com"
const routes: ReadonlyArray<CorsRoute> = [
  { prefix: "/api", origins: [app, "http://localhost:5173"], maxAgeSeconds: 300 },
  { prefix: "/api/account", origins: [app], credentials: true, methods: ["GET", "POST"] },
  { prefix: "/api/public", origins: ["*"] }
]

/** A handler that counts its calls: 401 on /api/private, JSON elsewhere. */
const counting = () => {
  let calls = 0
  const handler = (request: Request) => {
    calls++
    return new URL(request.url).pathname === "/api/private"
      ? Effect.fail(new Problem.Unauthorized({ detail: "no token", challenge: `Bearer realm="test"` }))
      : Effect.succeed(Response.json({ ok: true }, { headers: { etag: `"1"` } }))
  }
  return { handler: withCors(handler), calls: () => calls }
}

const serve = (request: Request, handler = counting().handler) =>
  Effect.flatMap(Effect.exit(handler(request)), (exit) => Effect.succeed(Exit.isSuccess(exit) ? exit.value : Problem.fromCause(exit.cause))).pipe(
    Effect.provideService(Cors, Cors.make(routes))
  )

const preflight = (path: string, origin: string, method = "PUT", headers = "authorization, content-type") =>
  new Request(`http://gw${path}`, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": method, "access-control-request-headers": headers }
  })

const corsHeaders = (response: Response) => [...response.headers.keys()].filter((name) => name.startsWith("access-control-"))

describe("preflights", () => {
  it.effect("answers an allowed preflight itself, 204 with the route's permissions", () =>
    Effect.gen(function*() {
      const { handler, calls } = counting()
      const response = yield* serve(preflight("/api/users/7", app), handler)
      expect(response.status).toBe(204)
      expect(Object.fromEntries(response.headers)).toMatchObject({
        "access-control-allow-origin": app,
        "access-control-allow-methods": "GET, HEAD, POST, PUT, PATCH, DELETE",
        "access-control-max-age": "300",
        vary: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
      })
      expect(response.headers.get("access-control-allow-headers")).toContain("authorization")
      expect(response.headers.has("access-control-allow-credentials")).toBe(false)
      expect(calls()).toBe(0)
    }))

  it.effect.each([
    ["an origin not listed", preflight("/api/users", "https://evil.example")],
    ["a look-alike origin", preflight("/api/users", "https://app.example.com.evil.example")],
    ["the opaque origin null", preflight("/api/users", "null")],
    ["a method not allowed", preflight("/api/account", app, "DELETE")],
    ["a header not allowed", preflight("/api/users", app, "GET", "authorization, x-debug")]
  ] as const)("refuses %s with 403 and no CORS header, without calling the handler", ([, request]) =>
    Effect.gen(function*() {
      const { handler, calls } = counting()
      const response = yield* serve(request, handler)
      expect(response.status).toBe(403)
      expect(response.headers.get("content-type")).toBe("application/problem+json")
      expect(corsHeaders(response)).toEqual([])
      expect(calls()).toBe(0)
    }))

  it.effect("lets safelisted request headers through without listing them", () =>
    Effect.gen(function*() {
      const response = yield* serve(preflight("/api/users", app, "POST", "Accept, Content-Language, Content-Type"))
      expect(response.status).toBe(204)
    }))

  it.effect("leaves OPTIONS without a preflight's headers, and paths outside every route, to the handler", () =>
    Effect.gen(function*() {
      const { handler, calls } = counting()
      yield* serve(new Request("http://gw/api/users", { method: "OPTIONS", headers: { origin: app } }), handler)
      yield* serve(preflight("/health", app), handler)
      yield* serve(preflight("/apis", app), handler)
      expect(calls()).toBe(3)
    }))
})

describe("other requests", () => {
  it.effect("a simple request from an allowed origin: its origin, exposed headers, Vary", () =>
    Effect.gen(function*() {
      const response = yield* serve(new Request("http://gw/api/users", { headers: { origin: "http://localhost:5173" } }))
      expect(response.status).toBe(200)
      expect(response.headers.get("access-control-allow-origin")).toBe("http://localhost:5173")
      expect(response.headers.get("access-control-expose-headers")).toContain("etag")
      expect(response.headers.get("access-control-allow-credentials")).toBeNull()
      expect(response.headers.get("vary")).toBe("Origin")
      expect(yield* Effect.promise(() => response.json())).toEqual({ ok: true })
    }))

  it.effect("another origin is served, with no CORS header but Vary: Origin", () =>
    Effect.gen(function*() {
      const { handler, calls } = counting()
      const response = yield* serve(new Request("http://gw/api/users", { headers: { origin: "https://evil.example" } }), handler)
      expect(response.status).toBe(200)
      expect(corsHeaders(response)).toEqual([])
      expect(response.headers.get("vary")).toBe("Origin")
      expect(calls()).toBe(1)
    }))

  it.effect("a request without Origin still gets Vary: Origin, so caches keep the two apart", () =>
    Effect.gen(function*() {
      const response = yield* serve(new Request("http://gw/api/users"))
      expect(corsHeaders(response)).toEqual([])
      expect(response.headers.get("vary")).toBe("Origin")
    }))

  it.effect("a credentialed route echoes the origin and allows credentials, preflight and request alike", () =>
    Effect.gen(function*() {
      const allowed = yield* serve(preflight("/api/account/keys", app, "POST", "content-type"))
      expect(allowed.headers.get("access-control-allow-origin")).toBe(app)
      expect(allowed.headers.get("access-control-allow-credentials")).toBe("true")
      const response = yield* serve(new Request("http://gw/api/account", { headers: { origin: app, cookie: "s=1" } }))
      expect(response.headers.get("access-control-allow-origin")).toBe(app)
      expect(response.headers.get("access-control-allow-credentials")).toBe("true")
    }))

  it.effect("a route open to every origin answers *, with no Vary", () =>
    Effect.gen(function*() {
      const response = yield* serve(new Request("http://gw/api/public/doc", { headers: { origin: "https://anyone.example" } }))
      expect(response.headers.get("access-control-allow-origin")).toBe("*")
      expect(response.headers.get("vary")).toBeNull()
    }))

  it.effect("a problem answer carries the CORS headers too, so the page can read it", () =>
    Effect.gen(function*() {
      const response = yield* serve(new Request("http://gw/api/private", { headers: { origin: app } }))
      expect(response.status).toBe(401)
      expect(response.headers.get("content-type")).toBe("application/problem+json")
      expect(response.headers.get("www-authenticate")).toBe(`Bearer realm="test"`)
      expect(response.headers.get("access-control-allow-origin")).toBe(app)
      expect(response.headers.get("access-control-expose-headers")).toContain("www-authenticate")
    }))

  it.effect("the longest matching prefix decides", () =>
    Effect.gen(function*() {
      // /api allows localhost:5173; /api/account does not.
      const response = yield* serve(new Request("http://gw/api/account", { headers: { origin: "http://localhost:5173" } }))
      expect(corsHeaders(response)).toEqual([])
    }))

  it.effect("without the Cors layer, withCors changes nothing", () =>
    Effect.gen(function*() {
      const { handler, calls } = counting()
      const response = yield* handler(preflight("/api/users", app))
      expect(response.status).toBe(200)
      expect(corsHeaders(response)).toEqual([])
      expect(calls()).toBe(1)
    }))
})

describe("configuration", () => {
  const build = (value: unknown) => Effect.exit(Effect.asVoid(Layer.build(Cors.layer.pipe(Layer.provide(envLayer({ CORS_ROUTES: value }))))))

  it.effect("no CORS_ROUTES: no route", () =>
    Effect.gen(function*() {
      const cors = yield* Cors
      expect(cors.routeFor("/api/users")).toBeUndefined()
    }).pipe(Effect.provide(Cors.layer.pipe(Layer.provide(envLayer({}))))))

  it.effect.each([
    ["* with credentials", [{ prefix: "/api", origins: ["*"], credentials: true }]],
    ["the origin null", [{ prefix: "/api", origins: ["null"] }]],
    ["an origin with a path", [{ prefix: "/api", origins: ["https://app.example.com/"] }]],
    ["an origin in upper case", [{ prefix: "/api", origins: ["https://App.example.com"] }]],
    ["no origins", [{ prefix: "/api", origins: [] }]],
    ["a prefix twice", [{ prefix: "/api", origins: [app] }, { prefix: "/api", origins: ["*"] }]]
  ] as const)("refuses %s", ([, value]) =>
    Effect.gen(function*() {
      expect(Exit.isFailure(yield* Effect.scoped(build(value)))).toBe(true)
    }))

  it.effect("takes a valid configuration", () =>
    Effect.gen(function*() {
      expect(Exit.isSuccess(yield* Effect.scoped(build(routes)))).toBe(true)
    }))
})
