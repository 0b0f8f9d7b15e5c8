/** The auth Worker: internal, reached through the router. */
import * as Http from "../../runtime/Http.ts"
import * as Worker from "../../runtime/Worker.ts"
import { AuthRoutes } from "./http.ts"

export default Worker.make({
  name: "auth",
  layer: Http.layer(AuthRoutes),
  fetch: Http.serve
})
