/**
 * The sessions Worker: internal, reached through the router; each session is
 * a Durable Object. It reads products over its PRODUCTS binding, in batches.
 */
import * as Layer from "effect/Layer"
import { FeatureFlags, Http, Worker } from "meshwork"
import { ProductsClient } from "../products/client.ts"
import { SessionsRoutes } from "./http.ts"
import { Sessions, SessionState } from "./Sessions.ts"

/** One object per session (src/layers/state/StateCoordinator.ts), bound as SESSIONS. */
export class SessionObject extends SessionState.StateObject {}

export default Worker.make({
  name: "sessions",
  layer: Http.layer(SessionsRoutes).pipe(Layer.provide([Sessions.layer, ProductsClient.layer, FeatureFlags.layer])),
  fetch: Http.serve
})
