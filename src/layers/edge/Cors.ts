/**
 * Cross-origin resource sharing (the Fetch standard's CORS protocol) at a
 * public Worker, configured per route by its `CORS_ROUTES` var; the route
 * with the longest matching prefix applies:
 *
 * ```toml
 * CORS_ROUTES = [
 *   { prefix = "/api", origins = ["https://app.example.com"], credentials = true, maxAgeSeconds = 600 },
 *   { prefix = "/api/openapi.json", origins = ["*"] },
 * ]
 * ```
 *
 * - **Preflights** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
 *   on a configured route are answered here and go no further: 204 with the
 *   route's `Access-Control-Allow-*` headers when the origin, the method and
 *   every requested header are allowed, else 403 problem+json without any
 *   CORS header (the browser then refuses the real request).
 * - **Other requests** from an allowed origin get `Access-Control-Allow-Origin`
 *   (the origin itself, or `*` on a route open to every origin without
 *   credentials), `Access-Control-Expose-Headers` and, with `credentials`,
 *   `Access-Control-Allow-Credentials: true`, problem answers included. A
 *   request from any other origin is served as it would be without CORS, and
 *   its answer carries no CORS header. Answers on a route with listed origins
 *   carry `Vary: Origin`, so no cache hands one origin's answer to another.
 * - A route open to `*` cannot allow credentials (browsers refuse that
 *   combination), and the opaque origin `null` (sandboxed frames, files) can
 *   never be listed: the layer refuses such a configuration when it is built.
 */
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Problem from "../../runtime/Problem.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as Editable from "../../runtime/Editable.ts"
import { pathOf } from "../../runtime/Url.ts"
import { matchesPrefix, PathPrefix } from "../routing/RoutingTable.ts"

/** `*`, or an origin as browsers send it: `scheme://host[:port]`, lower case, no path. */
export const CorsOrigin = Schema.String.check(
  Schema.isPattern(/^(?:\*|https?:\/\/(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::\d{1,5})?)$/, {
    message: "An origin is * or scheme://host[:port] in lower case, without a path or a trailing slash (never null)"
  })
)

const HeaderName = Schema.String.check(Schema.isPattern(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/))
const Method = Schema.Literals(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])

export const CorsRoute = Schema.Struct({
  prefix: PathPrefix,
  /** Allowed origins, compared exactly; `["*"]` for any origin. */
  origins: Schema.Array(CorsOrigin).check(Schema.isMinLength(1)),
  /** Methods a preflight allows (default GET, HEAD, POST, PUT, PATCH, DELETE). */
  methods: Schema.optionalKey(Schema.Array(Method)),
  /** Request headers a preflight allows (default `defaultAllowHeaders`). */
  allowHeaders: Schema.optionalKey(Schema.Array(HeaderName)),
  /** Response headers a page's script may read (default `defaultExposeHeaders`). */
  exposeHeaders: Schema.optionalKey(Schema.Array(HeaderName)),
  /** Whether requests with credentials (cookies, TLS client certificates) are allowed (default false). */
  credentials: Schema.optionalKey(Schema.Boolean),
  /** How long a browser may reuse a preflight's answer (default 600; browsers cap it, Chrome at 7200). */
  maxAgeSeconds: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 86_400 })))
}).check(
  Schema.makeFilter((route) => !(route.credentials === true && route.origins.includes("*")), {
    expected: "a route that allows credentials to list its origins (not *)"
  })
)
export type CorsRoute = typeof CorsRoute.Type

export const CorsRoutes = Schema.Array(CorsRoute).check(
  Schema.makeFilter((routes) => new Set(routes.map((route) => route.prefix)).size === routes.length, {
    expected: "CORS routes with distinct prefixes"
  })
)

export const defaultMethods: ReadonlyArray<typeof Method.Type> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

/** What the mesh's clients send: a token or API key, JSON, preconditions, idempotency keys, trace context. */
export const defaultAllowHeaders: ReadonlyArray<string> = [
  "authorization",
  "content-type",
  "if-match",
  "if-none-match",
  "idempotency-key",
  "traceparent",
  "tracestate"
]

/** What the mesh answers with, beyond the headers every page may read. */
export const defaultExposeHeaders: ReadonlyArray<string> = [
  "etag",
  "location",
  "retry-after",
  "ratelimit",
  "ratelimit-policy",
  "www-authenticate",
  "x-cache",
  "x-meshwork-version"
]

/** Request headers a browser never needs permission for (Fetch's CORS-safelisted request headers). */
const safelisted = new Set(["accept", "accept-language", "content-language", "content-type"])

/** A configured route with its answers precomputed: requests do no string building. */
interface ResolvedRoute {
  readonly route: CorsRoute
  readonly anyOrigin: boolean
  readonly origins: ReadonlySet<string>
  readonly methods: ReadonlySet<string>
  readonly allowHeaders: ReadonlySet<string>
  readonly preflightHeaders: Readonly<Record<string, string>>
  readonly responseHeaders: Readonly<Record<string, string>>
}

const resolve = (route: CorsRoute): ResolvedRoute => {
  const methods = route.methods ?? defaultMethods
  const allowHeaders = (route.allowHeaders ?? defaultAllowHeaders).map((name) => name.toLowerCase())
  const exposeHeaders = route.exposeHeaders ?? defaultExposeHeaders
  const credentials = route.credentials === true ? { "access-control-allow-credentials": "true" } : {}
  return {
    route,
    anyOrigin: route.origins.includes("*"),
    origins: new Set(route.origins),
    methods: new Set(methods),
    allowHeaders: new Set(allowHeaders),
    preflightHeaders: {
      "access-control-allow-methods": methods.join(", "),
      ...(allowHeaders.length === 0 ? {} : { "access-control-allow-headers": allowHeaders.join(", ") }),
      "access-control-max-age": String(route.maxAgeSeconds ?? 600),
      ...credentials
    },
    responseHeaders: {
      ...(exposeHeaders.length === 0 ? {} : { "access-control-expose-headers": exposeHeaders.join(", ") }),
      ...credentials
    }
  }
}

/** The answer to a preflight: the headers to send, or why it is refused. */
export type PreflightAnswer =
  | { readonly _tag: "Allowed"; readonly headers: Readonly<Record<string, string>> }
  | { readonly _tag: "Refused"; readonly reason: string }

/** The CORS routes of a public Worker, from `CORS_ROUTES` (default none: no CORS). */
export class Cors extends Context.Service<Cors, {
  /** The route a path falls under (the longest matching prefix), if any. */
  readonly routeFor: (path: string) => ResolvedRoute | undefined
}>()("meshwork/layers/edge/Cors") {
  /** CORS per `routes`, for tests and code-built configurations. */
  static readonly make = (routes: ReadonlyArray<CorsRoute>) => {
    const resolved = [...routes].sort((a, b) => b.prefix.length - a.prefix.length).map(resolve)
    return Cors.of({ routeFor: (path) => resolved.find((entry) => matchesPrefix(path, entry.route.prefix)) })
  }

  static readonly layer = Layer.effect(
    Cors,
    Effect.map(Config.schema(CorsRoutes, "CORS_ROUTES").pipe(Config.withDefault([])), Cors.make)
  )
}

const originAllowed = (route: ResolvedRoute, origin: string): boolean => route.anyOrigin || route.origins.has(origin)

/** The `Access-Control-Allow-Origin` value for an allowed origin. */
const allowOrigin = (route: ResolvedRoute, origin: string): string =>
  route.anyOrigin && route.route.credentials !== true ? "*" : origin

/** Whether a request is a CORS preflight (Fetch standard, section 4.8). */
export const isPreflight = (request: Request): boolean =>
  request.method === "OPTIONS" && request.headers.has("origin") && request.headers.has("access-control-request-method")

/** The answer to the preflight `request` on `route`. */
export const preflight = (route: ResolvedRoute, request: Request): PreflightAnswer => {
  const origin = request.headers.get("origin") ?? ""
  if (!originAllowed(route, origin)) return { _tag: "Refused", reason: `The origin ${origin} is not allowed` }
  const method = request.headers.get("access-control-request-method") ?? ""
  if (!route.methods.has(method)) return { _tag: "Refused", reason: `The method ${method} is not allowed` }
  for (const token of (request.headers.get("access-control-request-headers") ?? "").split(",")) {
    const name = token.trim().toLowerCase()
    if (name !== "" && !route.allowHeaders.has(name) && !safelisted.has(name)) {
      return { _tag: "Refused", reason: `The request header ${name} is not allowed` }
    }
  }
  return {
    _tag: "Allowed",
    headers: {
      "access-control-allow-origin": allowOrigin(route, origin),
      ...route.preflightHeaders,
      vary: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    }
  }
}

const appendVary = (headers: Headers, value: string) => {
  const current = headers.get("vary")
  if (current === null) headers.set("vary", value)
  else if (!current.split(",").some((token) => token.trim().toLowerCase() === value.toLowerCase() || token.trim() === "*")) {
    headers.set("vary", `${current}, ${value}`)
  }
}

/** `response` with the CORS headers of an allowed `origin` on `route` (or only `Vary`, for another origin). */
export const decorate = (route: ResolvedRoute, origin: string | null, response: Response): Response => {
  const allowed = origin !== null && originAllowed(route, origin)
  const varies = !(route.anyOrigin && route.route.credentials !== true)
  if (!allowed && !varies) return response
  const copy = Editable.response(response)
  if (varies) appendVary(copy.headers, "Origin")
  if (allowed) {
    copy.headers.set("access-control-allow-origin", allowOrigin(route, origin))
    for (const [name, value] of Object.entries(route.responseHeaders)) copy.headers.set(name, value)
  }
  return copy
}

/**
 * A typed failure rendered here, so its problem answer can carry CORS
 * headers: what the runtime would do with it (the span's `error.type`, a log
 * line for what the caller must not see). Defects and interruptions stay
 * failures, answered by the runtime.
 */
const renderFailure = <E>(cause: Cause.Cause<E>): Effect.Effect<Response, E> => {
  const error = Cause.findErrorOption(cause)
  if (error._tag === "None") return Effect.failCause(cause)
  const tag = Telemetry.errorTag(error.value)
  return Effect.andThen(
    Effect.all([
      tag === undefined ? Effect.void : Telemetry.annotateServerSpan("error.type", tag),
      Problem.isUnexpected(cause) ? Effect.logError("Request failed", cause) : Effect.void
    ], { discard: true }),
    Effect.sync(() => Problem.fromCause(cause))
  )
}

/**
 * `handler` with CORS, when the Worker's layer has `Cors`: preflights on a
 * configured route are answered without calling `handler`; other answers on
 * one get their CORS headers. Without `Cors` in the layer, `handler` itself.
 */
export const withCors = <E, R>(handler: (request: Request) => Effect.Effect<Response, E, R>) =>
(request: Request): Effect.Effect<Response, E | Problem.Forbidden, R> =>
  Effect.withFiber((fiber): Effect.Effect<Response, E | Problem.Forbidden, R> => {
    const cors = Context.getOrUndefined(fiber.context, Cors)
    if (cors === undefined) return handler(request)
    const route = cors.routeFor(pathOf(request.url))
    if (route === undefined) return handler(request)
    if (isPreflight(request)) {
      const answer = preflight(route, request)
      return Effect.andThen(
        Telemetry.annotateServerSpan("http.route", `${route.route.prefix}/*`),
        answer._tag === "Allowed"
          ? Effect.succeed(new Response(null, { status: 204, headers: answer.headers }))
          : Effect.fail(new Problem.Forbidden({ detail: `CORS preflight refused: ${answer.reason}` }))
      )
    }
    const origin = request.headers.get("origin")
    if (origin === null || !originAllowed(route, origin)) return Effect.map(handler(request), (response) => decorate(route, origin, response))
    return handler(request).pipe(
      Effect.catchCause(renderFailure),
      Effect.map((response) => decorate(route, origin, response))
    )
  })
