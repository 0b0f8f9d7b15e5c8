/**
 * The typed client other Workers use to call the products service over their
 * `PRODUCTS` binding, and batched product lookups on top of it.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { HttpApiClient } from "effect/http-api"
import { Batching, Identity, Problem, Retries, ServiceClient } from "meshwork"
import { type Product, ProductNotFound, ProductsApi } from "./api.ts"

export class ProductsClient extends Context.Service<ProductsClient, HttpApiClient.ForApi<typeof ProductsApi>>()(
  "meshwork/services/products/ProductsClient"
) {
  /** Calls are signed by the calling Worker for products, time out after 3 s, and are retried when the caller's layer has `Retries`. */
  static readonly layer = Layer.effect(
    ProductsClient,
    ServiceClient.make(ProductsApi, "PRODUCTS", {
      timeoutMs: 3_000,
      policy: Retries.policy("products", { attempts: 3, deadlineMs: 5_000 })
    })
  ).pipe(Layer.provide(Identity.MeshIdentity.layerClient("products")))
}

/**
 * A product lookup for one request: concurrent lookups go out as
 * `GET /api/products?ids=...` calls of at most `maxBatchSize` ids.
 */
export const productLookups = (options: Pick<Batching.Options<never, never, never, never>, "maxBatchSize" | "window"> = {}) =>
  ProductsClient.use((client) =>
    Batching.lookups({
      ...options,
      lookup: (keys) => {
        // An id with a comma cannot be asked for in a list: it is simply not found, alone.
        const ids = keys.filter((id) => !id.includes(","))
        if (ids.length === 0) return Effect.succeed(new Map<string, Product>())
        return client.products.list({ query: { ids: ids.join(",") } }).pipe(
          Effect.map((page) => new Map<string, Product>(page.items.map((product) => [product.id, product]))),
          Effect.catchCause((cause) =>
            Effect.andThen(
              Effect.logWarning("Product lookup failed", cause),
              Effect.fail(new Problem.BadGateway({ service: "products", detail: "The product lookup failed" }))
            )
          )
        )
      },
      missing: (productId) => new ProductNotFound({ productId })
    }))
