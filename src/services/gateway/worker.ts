/**
 * The API gateway: the mesh's only public Worker. It refuses ambiguous
 * paths, serves `/health` for the whole mesh, authenticates every `/api`
 * request but the public ones (login, refresh, JWKS), rate limits per client
 * and route, replaces whatever identity the client claimed with the mesh's
 * signed assertion, and forwards to the router (its `ROUTES` table has that
 * one entry), through the edge cache for the routes in `CACHE_ROUTES`.
 */
import { Layer } from "effect"
import { Authenticator, PublicRoutes } from "../../layers/Authentication.ts"
import { EdgeCache } from "../../layers/EdgeCache.ts"
import { IdentityKey } from "../../layers/Identity.ts"
import { RateLimits } from "../../layers/RateLimits.ts"
import { proxy, RoutingTable } from "../../layers/Routing.ts"
import * as Worker from "../../runtime/Worker.ts"
import { edge } from "./edge.ts"

/** The Durable Object behind the `durable-object` rate limit store, bound as RATE_LIMITER. */
export { RateLimiterObject } from "../../layers/RateLimits.ts"
/** The edge cache's tag index, bound as CACHE_TAGS. */
export { CacheTagIndexObject } from "../../layers/EdgeCache.ts"
/** Warm Redis connections for the `redis` rate limit store, bound as REDIS_POOL. */
export { RedisPoolObject } from "../../runtime/Redis.ts"

export default Worker.make({
  name: "gateway",
  // Clients are not trusted with the trace context: see TRUST_CLIENT_TRACEPARENT.
  edge: true,
  layer: Layer.mergeAll(
    RoutingTable.layer,
    IdentityKey.layer,
    Authenticator.layer("ROUTER"),
    PublicRoutes.layer,
    RateLimits.layer,
    EdgeCache.layer
  ),
  fetch: proxy("gateway", edge)
})
