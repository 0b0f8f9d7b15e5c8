/** The products Worker: internal, reached through the router; calls users over its own binding. */
import { Layer } from "effect"
import { Locks } from "../../layers/Locks.ts"
import { Retries } from "../../layers/Retry.ts"
import * as Http from "../../runtime/Http.ts"
import * as Worker from "../../runtime/Worker.ts"
import { ProductsRoutes } from "./http.ts"
import { Products } from "./Products.ts"
import { Sellers } from "./Sellers.ts"

/** Product locks (src/layers/Locks.ts), bound as LOCKS. */
export { LockObject } from "../../layers/Locks.ts"

export default Worker.make({
  name: "products",
  layer: Http.layer(ProductsRoutes).pipe(Layer.provide([Products.layer, Sellers.layer, Locks.layer()]), Layer.provideMerge(Retries.layer)),
  fetch: Http.serve
})
