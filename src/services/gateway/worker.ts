/**
 * The API gateway: the mesh's only public Worker. It refuses ambiguous
 * paths, serves `/health` for the whole mesh, and forwards `/api/*` to the
 * router (its `ROUTES` table has that one entry).
 */
import { RoutingTable, proxy } from "../../layers/Routing.ts"
import * as Worker from "../../runtime/Worker.ts"

export default Worker.make({
  name: "gateway",
  layer: RoutingTable.layer,
  fetch: proxy("gateway")
})
