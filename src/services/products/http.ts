/** The products API's handlers, and the routes a Worker serves. */
import { Effect, Layer } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { authorize, hasRole, MeshIdentity } from "../../layers/Identity.ts"
import { healthy } from "../shared/Health.ts"
import { decodeCursor, defaultLimit, InvalidCursor, toPage } from "../shared/Pagination.ts"
import { ProductsApi } from "./api.ts"
import { Products } from "./Products.ts"
import { Sellers } from "./Sellers.ts"

const admin = authorize((identity) => hasRole(identity, "admin"), "Product writes require the admin role")
const anyone = authorize((identity) => identity.kind !== "anonymous", "Products need an authenticated caller")

/** Any authenticated user (or Worker) reads products; only admins write them. */
const ProductsHandlers = HttpApiBuilder.group(
  ProductsApi,
  "products",
  Effect.fn(function*(handlers) {
    const products = yield* Products
    const sellers = yield* Sellers
    return handlers
      .handle("list", Effect.fnUntraced(function*({ query }) {
        yield* anyone
        const afterId = query.cursor === undefined ? undefined : decodeCursor(query.cursor)
        if (query.cursor !== undefined && afterId === undefined) return yield* new InvalidCursor()
        const limit = query.limit ?? defaultLimit
        return toPage(yield* products.list({ limit: limit + 1, afterId }), limit)
      }))
      .handle("create", ({ payload }) =>
        admin.pipe(Effect.andThen(sellers.requireActive(payload.sellerId)), Effect.andThen(products.create(payload))))
      .handle("get", ({ params }) => Effect.andThen(anyone, products.get(params.id)))
      .handle("update", ({ params, payload }) =>
        admin.pipe(
          Effect.andThen(payload.sellerId === undefined ? Effect.void : sellers.requireActive(payload.sellerId)),
          Effect.andThen(products.update(params.id, payload))
        ))
      .handle("remove", ({ params }) => Effect.andThen(admin, products.remove(params.id)))
  })
)

const HealthHandlers = HttpApiBuilder.group(
  ProductsApi,
  "health",
  (handlers) => handlers.handle("health", healthy("products"))
)

export const ProductsRoutes = HttpApiBuilder.layer(ProductsApi).pipe(
  Layer.provide([ProductsHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), MeshIdentity.layer])
)
