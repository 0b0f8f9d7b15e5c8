/**
 * The API gateway: the mesh's only public Worker. It refuses ambiguous
 * paths, serves `/health` for the whole mesh, authenticates every `/api`
 * request but the public ones (login, refresh, JWKS), rate limits per client
 * and route, replaces whatever identity the client claimed with the mesh's
 * signed assertion, and forwards to the router (its `ROUTES` table has that
 * one entry), through the edge cache for the routes in `CACHE_ROUTES`.
 */
import { Layer } from "effect"
import { Authenticator, EdgeCache, Identity, Proxy, PublicRoutes, RateLimits, RoutingTable, Worker } from "meshwork"
import { edge } from "./edge.ts"

/** The Durable Object behind the `durable-object` rate limit store, bound as RATE_LIMITER. */
export { RateLimiterObject } from "meshwork"
/** The edge cache's tag index, bound as CACHE_TAGS. */
export { CacheTagIndexObject } from "meshwork"
/** Warm Redis connections for the `redis` rate limit store, bound as REDIS_POOL. */
export { RedisPoolObject } from "meshwork"

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
    PublicRoutes.layer,
    RateLimits.layer,
    EdgeCache.layer
  ),
  fetch: Proxy.proxy("gateway", edge)
})
