/**
 * The mesh's static shape, as the console draws it: each Worker with its
 * Durable Object namespaces, queues and service bindings, and the router's
 * routes with the Worker behind each version. Written by hand from the
 * wrangler configs (wrangler.toml and src/services/*\/wrangler*.toml, the
 * list in scripts/mesh.ts); test/node/console.test.ts reads those configs
 * and fails when this description differs from them. What changes at run
 * time (which versions answer, splits, breakers) the console reads from the
 * admin API instead.
 */

export interface WorkerShape {
  /** The deployed name (`name` in its wrangler config). */
  readonly script: string
  /** Durable Object namespaces it binds: binding -> class. */
  readonly durableObjects: Readonly<Record<string, string>>
  /** Queues it sends to, and queues it consumes. */
  readonly produces: ReadonlyArray<string>
  readonly consumes: ReadonlyArray<string>
  /** Workers it calls over service bindings: binding -> script. */
  readonly calls: Readonly<Record<string, string>>
}

export interface RouteShape {
  readonly service: string
  readonly prefix: string
  /** The Worker behind each version (the default version's under `default`). */
  readonly versions: Readonly<Record<string, string>>
  /** The version the route sends everyone to without a split. */
  readonly defaultVersion?: string
}

export const workers: ReadonlyArray<WorkerShape> = [
  {
    script: "meshwork-gateway",
    durableObjects: {
      RATE_LIMITER: "RateLimiterObject",
      CACHE_TAGS: "CacheTagIndexObject",
      REDIS_POOL: "RedisPoolObject",
      API_KEY_QUOTAS: "ApiKeyQuotaObject",
      ROLLOUTS: "RolloutObject",
      MESH_STATS: "MeshStatsObject"
    },
    produces: [],
    consumes: [],
    calls: { ROUTER: "meshwork-router", DOCS: "meshwork-docs" }
  },
  {
    script: "meshwork-router",
    durableObjects: { BREAKERS: "CircuitBreakerObject", ROLLOUTS: "RolloutObject", MESH_STATS: "MeshStatsObject" },
    produces: [],
    consumes: [],
    calls: {
      AUTH: "meshwork-auth",
      USERS: "meshwork-users",
      USERS_GREEN: "meshwork-users-green",
      PRODUCTS: "meshwork-products",
      SESSIONS: "meshwork-sessions"
    }
  },
  // Scalar's script for /api/docs (src/services/docs/).
  { script: "meshwork-docs", durableObjects: {}, produces: [], consumes: [], calls: {} },
  { script: "meshwork-auth", durableObjects: { MESH_STATS: "MeshStatsObject" }, produces: [], consumes: ["meshwork-user-deletions"], calls: { USERS: "meshwork-users" } },
  { script: "meshwork-users", durableObjects: { MESH_STATS: "MeshStatsObject" }, produces: ["meshwork-user-deletions"], consumes: [], calls: {} },
  { script: "meshwork-users-green", durableObjects: { MESH_STATS: "MeshStatsObject" }, produces: ["meshwork-user-deletions"], consumes: [], calls: {} },
  {
    script: "meshwork-products",
    durableObjects: { LOCKS: "LockObject", VIEW_COUNTERS: "CounterShardObject", MESH_STATS: "MeshStatsObject" },
    produces: ["meshwork-product-imports", "meshwork-product-imports-dlq"],
    consumes: ["meshwork-product-imports", "meshwork-product-imports-dlq"],
    calls: { USERS: "meshwork-users" }
  },
  {
    script: "meshwork-sessions",
    durableObjects: { SESSIONS: "SessionObject", MESH_STATS: "MeshStatsObject" },
    produces: [],
    consumes: [],
    calls: { PRODUCTS: "meshwork-products" }
  }
]

/** The router's ROUTES (src/services/router/wrangler.toml). */
export const routes: ReadonlyArray<RouteShape> = [
  { service: "auth", prefix: "/api/auth", versions: { default: "meshwork-auth" } },
  { service: "users", prefix: "/api/users", versions: { blue: "meshwork-users", green: "meshwork-users-green" }, defaultVersion: "blue" },
  { service: "products", prefix: "/api/products", versions: { default: "meshwork-products" } },
  { service: "sessions", prefix: "/api/sessions", versions: { default: "meshwork-sessions" } }
]
