/** The users Worker: internal, reached only through the router's service binding. */
import * as Layer from "effect/Layer"
import { Http, Worker } from "meshwork"
import { UsersRoutes } from "./http.ts"
import { Users } from "./Users.ts"

export default Worker.make({
  name: "users",
  layer: Http.layer(UsersRoutes).pipe(Layer.provide(Users.layer)),
  fetch: Http.serve
})
