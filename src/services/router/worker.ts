/**
 * The service router: internal, reached only from the gateway. It refuses
 * any request without the mesh's identity assertion, and routes by the
 * `ROUTES` table of its wrangler config to the services' bindings, splitting
 * a service's traffic between its versions as MESH_CONFIG says.
 */
import * as Layer from "effect/Layer"
import { Bulkheads, CircuitBreakers, FaultInjection, Identity, LiveStats, Proxy, Retries, RoutingTable, TrafficManager, Worker } from "meshwork"

/** The Durable Object behind BREAKER_STORE = "durable-object", bound as BREAKERS. */
export { CircuitBreakerObject } from "meshwork"
/** Canary answers counted across isolates, for automatic rollback; bound as ROLLOUTS. */
export { RolloutObject } from "meshwork"
/** Live figures of the gateway's and the router's isolates, for the console; bound as MESH_STATS. */
export { MeshStatsObject } from "meshwork"

export default Worker.make({
  name: "router",
  layer: Layer.mergeAll(
    RoutingTable.layer,
    Identity.IdentityKey.layer,
    Retries.layer,
    CircuitBreakers.layer,
    Bulkheads.layer,
    FaultInjection.layer,
    TrafficManager.layer,
    // Calls per upstream and version, policy decisions and breaker transitions, reported to MESH_STATS.
    LiveStats.layer
  ),
  fetch: Identity.requireIdentity(Proxy.proxy("router"))
})
