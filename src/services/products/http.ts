/** The products API's handlers, and the routes a Worker serves. */
import { Effect, Layer } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { healthy } from "../shared/Health.ts"
import { decodeCursor, defaultLimit, InvalidCursor, toPage } from "../shared/Pagination.ts"
import { ProductsApi } from "./api.ts"
import { Products } from "./Products.ts"
import { Sellers } from "./Sellers.ts"

const ProductsHandlers = HttpApiBuilder.group(
  ProductsApi,
  "products",
  Effect.fn(function*(handlers) {
    const products = yield* Products
    const sellers = yield* Sellers
    return handlers
      .handle("list", Effect.fnUntraced(function*({ query }) {
        const afterId = query.cursor === undefined ? undefined : decodeCursor(query.cursor)
        if (query.cursor !== undefined && afterId === undefined) return yield* new InvalidCursor()
        const limit = query.limit ?? defaultLimit
        return toPage(yield* products.list({ limit: limit + 1, afterId }), limit)
      }))
      .handle("create", ({ payload }) =>
        Effect.andThen(sellers.requireActive(payload.sellerId), products.create(payload)))
      .handle("get", ({ params }) => products.get(params.id))
      .handle("update", ({ params, payload }) =>
        Effect.andThen(
          payload.sellerId === undefined ? Effect.void : sellers.requireActive(payload.sellerId),
          products.update(params.id, payload)
        ))
      .handle("remove", ({ params }) => products.remove(params.id))
  })
)

const HealthHandlers = HttpApiBuilder.group(
  ProductsApi,
  "health",
  (handlers) => handlers.handle("health", healthy("products"))
)

export const ProductsRoutes = HttpApiBuilder.layer(ProductsApi).pipe(
  Layer.provide([ProductsHandlers, HealthHandlers]),
  Layer.provide(HttpApiMiddleware.layerProblemDetails({ includeDetails: true }))
)
