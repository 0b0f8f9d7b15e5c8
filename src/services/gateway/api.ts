/**
 * The mesh's public API as a client sees it through the gateway: the
 * services' own `effect/http-api` groups (the definitions their Workers serve),
 * the gateway's own routes, and what the gateway does around every route
 * (authentication, rate limits, limits on bodies, upstream failures),
 * declared as documentation-only middlewares so that `OpenApi.fromApi`
 * writes them into every operation. Nothing here serves a request: the
 * gateway's routes are served by edge.ts and MeshAdmin; this describes them.
 */
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import * as HttpApiSecurity from "effect/http-api/HttpApiSecurity"
import * as OpenApi from "effect/http-api/OpenApi"
import { AuditEntry, Flag, HealthReport, LiveReport, MirrorReport, Problem, SplitSettings, TraceDetail, TraceSummary, TrafficSplit } from "meshwork"
import { ApiKeysGroup, AuthGroup } from "../auth/api.ts"
import { ImportsGroup, ProductsGroup } from "../products/api.ts"
import { SessionsGroup } from "../sessions/api.ts"
import { UsersGroup } from "../users/api.ts"

/** How a client proves who it is: a user's access token, or a machine client's API key. */
export class GatewayAuthentication extends HttpApiMiddleware.Service<GatewayAuthentication>()("meshwork/services/gateway/GatewayAuthentication", {
  security: {
    // Lower case: some clients (Scalar among them) match the scheme name case-sensitively.
    bearer: HttpApiSecurity.http({ scheme: "bearer" }).pipe(
      HttpApiSecurity.annotate(OpenApi.Format, "JWT"),
      HttpApiSecurity.annotate(OpenApi.Description, "An access token from `POST /api/auth/login` (an ES256 JWT, 5 minutes): `Authorization: Bearer <token>`.")
    ),
    apiKey: HttpApiSecurity.apiKey({ key: "Authorization", in: "header" }).pipe(
      HttpApiSecurity.annotate(
        OpenApi.Description,
        "An API key from `POST /api/auth/keys`, for machine clients: `Authorization: ApiKey <key>` (the word `ApiKey`, a space, the key). Quotas per key: see `RateLimit` headers."
      )
    )
  },
  error: [Problem.Unauthorized, Problem.Forbidden]
}) {}

const TooManyRequests = Problem.TooManyRequests.pipe(HttpApiSchema.encodeToWithHeaders({
  body: Problem.TooManyRequests,
  headers: { "retry-after": Schema.String }
}, {
  decode: ({ body }) => body,
  encode: (error) => ({ body: error, headers: { "retry-after": String(error.retryAfterSeconds ?? 1) } })
}))

/** What any route can answer from the gateway or the router, besides its own answers. */
export class GatewayEdge extends HttpApiMiddleware.Service<GatewayEdge>()("meshwork/services/gateway/GatewayEdge", {
  error: [Problem.PayloadTooLarge, TooManyRequests, Problem.BadGateway, Problem.ServiceUnavailable, Problem.GatewayTimeout]
}) {}

const Html = Schema.String.pipe(HttpApiSchema.asText({ contentType: "text/html" }))

/** An OpenAPI 3.1 document (this one). */
const OpenApiDocument = Schema.Record(Schema.String, Schema.Unknown).annotate({
  title: "OpenAPI document",
  description: "An OpenAPI 3.1 document"
})

/** The gateway's own public routes: the mesh's health and this API's description. */
export class MeshGroup extends HttpApiGroup.make("mesh")
  .add(
    HttpApiEndpoint.get("health", "/health", {
      success: HealthReport.HealthReport,
      error: HealthReport.HealthReport.pipe(HttpApiSchema.status(503))
    })
      .annotate(OpenApi.Summary, "The health of every Worker of the mesh")
      .annotate(OpenApi.Description, "200 when every service answers its own health check within 2 s, 503 (`degraded`) otherwise. Reused for 5 s. Also `HEAD`."),
    HttpApiEndpoint.get("openapi", "/api/openapi.json", { success: OpenApiDocument, error: TooManyRequests })
      .annotate(OpenApi.Summary, "This document")
      .annotate(OpenApi.Description, "Cacheable (`ETag`, `Cache-Control`); any origin may read it."),
    HttpApiEndpoint.get("docs", "/api/docs", { success: Html, error: TooManyRequests })
      .annotate(OpenApi.Summary, "The API reference, as a web page")
      .annotate(OpenApi.Description, "Scalar's API reference over this document, its script served by the gateway itself (`/api/docs/scalar.js`).")
  )
  .annotate(OpenApi.Description, "The gateway's own routes: public, no token needed.")
{}

const Purge = Schema.Struct({
  urls: Schema.optionalKey(Schema.Array(Schema.String).check(Schema.isMaxLength(1000))),
  tags: Schema.optionalKey(Schema.Array(Schema.String).check(Schema.isMaxLength(1000)))
})
const Status = Schema.Struct({ traffic: Schema.Record(Schema.String, TrafficSplit), flags: Schema.Record(Schema.String, Flag) })
const service = { service: Schema.String }
const flagName = { name: Schema.String }
const adminErrors = [
  Problem.BadRequest,
  Problem.NotFound,
  Problem.MethodNotAllowed,
  Problem.PayloadTooLarge,
  Problem.UnsupportedMediaType,
  TooManyRequests,
  Problem.ServiceUnavailable
]

/** The admin API (src/layers/release/MeshAdmin.ts): admins only. */
export class AdminGroup extends HttpApiGroup.make("admin")
  .add(
    HttpApiEndpoint.get("status", "/status", { success: Status, error: adminErrors })
      .annotate(OpenApi.Summary, "Every traffic split and feature flag"),
    HttpApiEndpoint.get("audit", "/audit", {
      query: { limit: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 200 }))) },
      success: Schema.Struct({ entries: Schema.Array(AuditEntry) }),
      error: adminErrors
    }).annotate(OpenApi.Summary, "The newest changes made through the admin API, newest first (who, what, when)"),
    HttpApiEndpoint.get("health", "/health", { success: HealthReport.HealthReport, error: adminErrors })
      .annotate(OpenApi.Summary, "The mesh's detailed health: every route, version and readiness check"),
    HttpApiEndpoint.get("live", "/live", {
      query: { minutes: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 15 }))) },
      success: LiveReport,
      error: adminErrors
    })
      .annotate(OpenApi.Summary, "Live figures across every isolate: calls, failures and latency by upstream and version, policy decisions, breaker transitions")
      .annotate(OpenApi.Description, "Over the last `minutes` (default 5), in 10 s windows. Isolates report every `LIVE_STATS_INTERVAL_SECONDS` (10 s deployed), so the newest seconds may be missing."),
    HttpApiEndpoint.get("traces", "/traces", {
      query: {
        limit: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100 }))),
        series: Schema.optional(Schema.String),
        errors: Schema.optional(Schema.Literals(["true", "false"]))
      },
      success: Schema.Struct({ traces: Schema.Array(TraceSummary) }),
      error: adminErrors
    })
      .annotate(OpenApi.Summary, "The mesh's sample of recent traces, newest first")
      .annotate(OpenApi.Description, "Kept by the Workers with `KEEP_TRACES` on (100 of 15 minutes: the newest 50, and of the older ones the failed ones longest). `series=users@green`: only traces that called it; `errors=true`: only failed ones."),
    HttpApiEndpoint.get("trace", "/traces/:traceId", { params: { traceId: Schema.String }, success: TraceDetail, error: adminErrors })
      .annotate(OpenApi.Summary, "One kept trace, with its spans in start order"),
    HttpApiEndpoint.get("traffic", "/traffic", { success: Schema.Record(Schema.String, TrafficSplit), error: adminErrors })
      .annotate(OpenApi.Summary, "Every service's traffic split"),
    HttpApiEndpoint.get("split", "/traffic/:service", { params: service, success: TrafficSplit, error: adminErrors })
      .annotate(OpenApi.Summary, "One service's traffic split"),
    HttpApiEndpoint.put("setSplit", "/traffic/:service", { params: service, payload: SplitSettings, success: SplitSettings, error: adminErrors })
      .annotate(OpenApi.Summary, "Set a service's split between its stable and canary versions"),
    HttpApiEndpoint.post("rollback", "/traffic/:service/rollback", { params: service, success: TrafficSplit, error: adminErrors })
      .annotate(OpenApi.Summary, "Send no traffic to the canary"),
    HttpApiEndpoint.get("mirror", "/traffic/:service/mirror", { params: service, success: MirrorReport, error: adminErrors })
      .annotate(OpenApi.Summary, "The requests mirrored to the canary: matched, mismatched, the newest mismatches"),
    HttpApiEndpoint.get("flags", "/flags", { success: Schema.Record(Schema.String, Flag), error: adminErrors })
      .annotate(OpenApi.Summary, "Every feature flag"),
    HttpApiEndpoint.get("flag", "/flags/:name", { params: flagName, success: Flag, error: adminErrors })
      .annotate(OpenApi.Summary, "One feature flag"),
    HttpApiEndpoint.put("setFlag", "/flags/:name", { params: flagName, payload: Flag, success: Flag, error: adminErrors })
      .annotate(OpenApi.Summary, "Set a feature flag"),
    HttpApiEndpoint.delete("deleteFlag", "/flags/:name", { params: flagName, success: HttpApiSchema.NoContent, error: adminErrors })
      .annotate(OpenApi.Summary, "Delete a feature flag"),
    HttpApiEndpoint.post("purge", "/cache/purge", { payload: Purge, success: Schema.Struct({ purged: Schema.Number }), error: adminErrors })
      .annotate(OpenApi.Summary, "Purge the edge cache by URL or Cache-Tag")
  )
  .prefix("/api/admin")
  .annotate(OpenApi.Description, "Traffic splits, feature flags and the edge cache of the running mesh. Served by the gateway itself; admins only (403 otherwise).")
{}

/**
 * The public API: every route the gateway serves, with the errors it adds.
 * Routes behind the gateway need a token or an API key (the gateway's
 * `PUBLIC_ROUTES` are marked open when the document is served, docs.ts);
 * the mesh's own routes need none.
 */
export class PublicApi extends HttpApi.make("meshwork")
  .add(AuthGroup)
  .add(ApiKeysGroup)
  .add(UsersGroup)
  .add(ProductsGroup)
  .add(ImportsGroup)
  .add(SessionsGroup)
  // Forwarded to the services: the gateway's and the router's failures too.
  .middleware(GatewayEdge)
  .add(AdminGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
  .middleware(GatewayAuthentication)
  .add(MeshGroup)
  .annotateMerge(OpenApi.annotations({
    title: "Meshwork reference mesh",
    version: "0.1.0",
    description: [
      "The HTTP API of the Meshwork reference mesh, as a client sees it through its gateway.",
      "",
      "- **JSON** in and out. Errors are `application/problem+json` (RFC 9457).",
      "- **Authentication:** `Authorization: Bearer <access token>` (from `POST /api/auth/login`) or `Authorization: ApiKey <key>`, except on the routes marked public.",
      "- **Rate limits:** answers carry `RateLimit-Policy` and `RateLimit` (IETF draft); a refused request is 429 with `Retry-After`.",
      "- **Lists** answer `{ items, nextCursor }` and take `?limit=1..100` and `?cursor=`."
    ].join("\n"),
    servers: [{ url: "/", description: "This gateway" }]
  }))
{}
