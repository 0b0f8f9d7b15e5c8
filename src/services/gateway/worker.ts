/**
 * The API gateway: the mesh's only public Worker. It refuses ambiguous
 * paths, serves `/health` for the whole mesh, authenticates every `/api`
 * request but the public ones (login, refresh, JWKS, the API's description)
 * by bearer token or API key, rate limits per client (and per API key)
 * and route, replaces whatever identity the client claimed with the mesh's
 * signed assertion, and forwards to the router (its `ROUTES` table has that
 * one entry), through the edge cache for the routes in `CACHE_ROUTES`.
 * Browsers on the origins of `CORS_ROUTES` may call it; their preflights are
 * answered here. It describes the API it serves at `/api/openapi.json`
 * (OpenAPI 3.1) and `/api/docs` (a reference page).
 */
import * as Layer from "effect/Layer"
import { ApiKeyAuthenticator, Authenticator, Cors, EdgeCache, Identity, LiveStats, Proxy, PublicRoutes, RateLimits, RoutingTable, withCors, Worker } from "meshwork"
import { withConsole } from "./console.ts"
import { ApiDocs } from "./docs.ts"
import { edge } from "./edge.ts"

/** The Durable Object behind the `durable-object` rate limit store, bound as RATE_LIMITER. */
export { RateLimiterObject } from "meshwork"
/** The edge cache's tag index, bound as CACHE_TAGS. */
export { CacheTagIndexObject } from "meshwork"
/** Warm Redis connections for the `redis` rate limit store, bound as REDIS_POOL. */
export { RedisPoolObject } from "meshwork"
/** Each API key's quota counters, bound as API_KEY_QUOTAS. */
export { ApiKeyQuotaObject } from "meshwork"

export default Worker.make({
  name: "gateway",
  // Clients are not trusted with the trace context: see TRUST_CLIENT_TRACEPARENT.
  edge: true,
  layer: Layer.mergeAll(
    RoutingTable.layer,
    Identity.IdentityKey.layer,
    // Tokens from the auth service; each user's current status from the users service, both through the router.
    Authenticator.layer({
      binding: "ROUTER",
      jwksUrl: "http://router.internal/api/auth/.well-known/jwks.json",
      userUrl: (id) => `http://router.internal/api/users/${encodeURIComponent(id)}`,
      audience: "router"
    }),
    // Machine clients: `Authorization: ApiKey <key>`, verified by the auth service, a quota per key.
    ApiKeyAuthenticator.layer({
      binding: "ROUTER",
      verifyUrl: "http://router.internal/api/auth/keys/verify",
      audience: "router"
    }),
    PublicRoutes.layer,
    RateLimits.layer,
    EdgeCache.layer,
    Cors.layer,
    // Calls to the router, rate-limit rejections and cache results, reported to the router's MESH_STATS (the console's live panels).
    LiveStats.layer,
    // GET /api/openapi.json and /api/docs: the API's description, from the services' definitions.
    ApiDocs.layer
  ),
  // CORS outermost: preflights go no further, and every answer (problems too) gets its headers.
  // /console (console.ts) is a static page answered before routing; it reads the mesh through the admin API.
  fetch: withCors(withConsole(Proxy.proxy("gateway", edge)))
})
