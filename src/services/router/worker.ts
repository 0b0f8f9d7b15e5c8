/**
 * The service router: internal, reached only from the gateway. It routes by
 * the `ROUTES` table of its wrangler config to the services' bindings.
 */
import { RoutingTable, proxy } from "../../layers/Routing.ts"
import * as Worker from "../../runtime/Worker.ts"

export default Worker.make({
  name: "router",
  layer: RoutingTable.layer,
  fetch: proxy("router")
})
