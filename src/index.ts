/**
 * Meshwork: a typed service framework on Effect for a service mesh of
 * Cloudflare Workers. This is the whole public surface: what a Worker
 * imports as `meshwork`.
 *
 * Two kinds of export:
 * - a module of functions is a namespace (`Worker.make`, `Http.serve`,
 *   `Problem.NotFound`, `StateCoordinator.define`);
 * - a service is its class, whose static `layer` adds it to a Worker in one
 *   line (`CircuitBreakers.layer`, `Locks.layer("LOCKS")`); settings schemas
 *   and the Durable Object classes a Worker must export sit beside it.
 *
 * docs/ has a page per concern, each with the vars, bindings and Durable
 * Object classes its exports need.
 */

// The runtime: Workers, Durable Objects, HTTP, errors, bindings, storage, queues, clients, telemetry.
export * as Bindings from "./runtime/Bindings.ts"
export * as D1 from "./runtime/D1.ts"
export * as DurableObjects from "./runtime/DurableObjects.ts"
export * as Health from "./runtime/Health.ts"
export * as Http from "./runtime/Http.ts"
export * as Pagination from "./runtime/Pagination.ts"
export * as Problem from "./runtime/Problem.ts"
export * as Queues from "./runtime/Queues.ts"
export { Redis, RedisError, RedisPoolObject } from "./runtime/Redis.ts"
export * as ServiceClient from "./runtime/ServiceClient.ts"
export * as Telemetry from "./runtime/Telemetry.ts"
export * as Worker from "./runtime/Worker.ts"
// By name, not in Http: a Worker that only proxies then bundles none of Http's serving code.
export { pathOf } from "./runtime/Url.ts"
export { response as editableResponse } from "./runtime/Editable.ts"

// Routing: the routing table, proxying over service bindings, the mesh's health report.
export * as HealthReport from "./layers/routing/HealthReport.ts"
export * as Proxy from "./layers/routing/Proxy.ts"
export { matchesPrefix, PathPrefix, Route, RoutingTable } from "./layers/routing/RoutingTable.ts"

// Resilience: timeouts and retries, circuit breakers, bulkheads, fault injection.
export { BulkheadSettings, Bulkheads } from "./layers/resilience/Bulkheads.ts"
export { BreakerSettings, CircuitBreakerObject, CircuitBreakers } from "./layers/resilience/CircuitBreakers.ts"
export { FaultInjection, FaultSettings } from "./layers/resilience/FaultInjection.ts"
export { Retries, RetrySettings } from "./layers/resilience/Retries.ts"

// Security: identity inside the mesh, authentication at the edge (tokens, API keys), rate limits.
export {
  authenticate,
  Authenticator,
  type AuthenticatorOptions,
  PublicRoute,
  PublicRoutes,
  withIdentity
} from "./layers/security/Authenticator.ts"
export {
  ApiKeyAuthenticator,
  type ApiKeyAuthenticatorOptions,
  ApiKeyQuotaObject,
  authenticateClient,
  type Client,
  type QuotaDecision,
  quotaHeaders,
  quotaRefusal,
  type VerifiedKey
} from "./layers/security/ApiKeyAuthenticator.ts"
export * as Identity from "./layers/security/Identity.ts"
export { rateLimitKey } from "./layers/security/ClientKey.ts"
export {
  RateLimiterObject,
  type RateLimitDecision,
  rateLimitHeaders,
  RateLimitPolicy,
  RateLimits
} from "./layers/security/RateLimits.ts"

// State: sharding, locks with fencing tokens, the state coordinator, sharded counters.
export { LockObject, Locks } from "./layers/state/Locks.ts"
export * as ShardedCounters from "./layers/state/ShardedCounters.ts"
export * as Sharding from "./layers/state/Sharding.ts"
export * as StateCoordinator from "./layers/state/StateCoordinator.ts"

// The edge: the edge cache, batched lookups, CORS.
export * as Batching from "./layers/edge/Batching.ts"
export { CacheRoute, CacheTagIndexObject, EdgeCache } from "./layers/edge/EdgeCache.ts"
export { Cors, CorsOrigin, CorsRoute, withCors } from "./layers/edge/Cors.ts"

// Observability: live figures of the mesh, aggregated across isolates (the console's).
export { LiveStats } from "./layers/observability/LiveStats.ts"
export { LiveReport, MeshStatsObject } from "./layers/observability/MeshStats.ts"
export { TraceDetail, TraceSummary } from "./layers/observability/TraceSample.ts"

// Releasing: traffic splits, feature flags, the admin API over both.
export { FeatureFlags, Flag } from "./layers/release/FeatureFlags.ts"
export { adminPrefix, meshAdmin } from "./layers/release/MeshAdmin.ts"
export { AuditEntry } from "./layers/release/Audit.ts"
export { MirrorReport, OutlierDetection, RolloutObject, SplitSettings, TrafficManager, TrafficSplit } from "./layers/release/TrafficManager.ts"
