/**
 * The service router: internal, reached only from the gateway. It refuses
 * any request without the mesh's identity assertion, and routes by the
 * `ROUTES` table of its wrangler config to the services' bindings, splitting
 * a service's traffic between its versions as MESH_CONFIG says.
 */
import { Layer } from "effect"
import { CircuitBreakers } from "../../layers/CircuitBreakers.ts"
import { FaultInjection } from "../../layers/Faults.ts"
import { IdentityKey, requireIdentity } from "../../layers/Identity.ts"
import { Retries } from "../../layers/Retry.ts"
import { proxy, RoutingTable } from "../../layers/Routing.ts"
import { TrafficManager } from "../../layers/Traffic.ts"
import * as Worker from "../../runtime/Worker.ts"

/** The Durable Object behind BREAKER_STORE = "durable-object", bound as BREAKERS. */
export { CircuitBreakerObject } from "../../layers/CircuitBreakers.ts"

export default Worker.make({
  name: "router",
  layer: Layer.mergeAll(
    RoutingTable.layer,
    IdentityKey.layer,
    Retries.layer,
    CircuitBreakers.layer,
    FaultInjection.layer,
    TrafficManager.layer
  ),
  fetch: requireIdentity(proxy("router"))
})
