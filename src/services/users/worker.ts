/** The users Worker: internal, reached only through the router's service binding. */
import * as Http from "../../runtime/Http.ts"
import * as Worker from "../../runtime/Worker.ts"
import { Layer } from "effect"
import { UsersRoutes } from "./http.ts"
import { Users } from "./Users.ts"

export default Worker.make({
  name: "users",
  layer: Http.layer(UsersRoutes).pipe(Layer.provide(Users.layer)),
  fetch: Http.serve
})
