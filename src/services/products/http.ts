/** The products API's handlers, and the routes a Worker serves. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import { Health, Identity, Locks, Pagination, Problem, type ShardedCounters } from "meshwork"
import { maxIds, ProductLocked, ProductsApi } from "./api.ts"
import { Imports } from "./Imports.ts"
import { Products } from "./Products.ts"
import { Sellers } from "./Sellers.ts"
import { ProductViews } from "./Views.ts"

const admin = Identity.authorize((identity) => Identity.hasRole(identity, "admin"), "Product writes require the admin role")
const anyone = Identity.authorize((identity) => identity.kind !== "anonymous", "Products need an authenticated caller")

/**
 * An update holds the product's lock while it checks the seller and writes,
 * and its write is fenced with the lock's token. Concurrent updates of one
 * product wait for each other up to `wait`.
 */
const updateLock = { ttl: "10 seconds", wait: "2 seconds" } as const

/**
 * How long the edge may keep a product: fresh for 30 s, then served stale
 * while it revalidates for a minute more, and for 10 minutes when products
 * fail. An update shows within 30 s unless its product is purged.
 */
const productCacheControl = "max-age=30, stale-while-revalidate=60, stale-if-error=600"

/** Any authenticated user (or Worker) reads products; only admins write them. */
const ProductsHandlers = HttpApiBuilder.group(
  ProductsApi,
  "products",
  Effect.fn(function*(handlers) {
    const products = yield* Products
    const sellers = yield* Sellers
    const locks = yield* Locks
    const views = yield* ProductViews
    const countersDown = (error: ShardedCounters.CountersUnavailable) =>
      Effect.andThen(
        Effect.logWarning("View counters unavailable", error.cause),
        Effect.fail(new Problem.ServiceUnavailable({ detail: "The view counters could not be reached" }))
      )
    return handlers
      .handle("list", Effect.fnUntraced(function*({ query }) {
        yield* anyone
        if (query.ids !== undefined) {
          const ids = query.ids.split(",")
          if (ids.length > maxIds || ids.some((id) => id.length === 0 || id.length > 64)) {
            return yield* new Problem.BadRequest({ detail: `ids is a comma-separated list of 1 to ${maxIds} product ids` })
          }
          return { items: yield* products.getMany(ids), nextCursor: null }
        }
        const afterId = query.cursor === undefined ? undefined : Pagination.decodeCursor(query.cursor)
        if (query.cursor !== undefined && afterId === undefined) return yield* new Pagination.InvalidCursor()
        const limit = query.limit ?? Pagination.defaultLimit
        return Pagination.toPage(yield* products.list({ limit: limit + 1, afterId }), limit)
      }))
      .handle("create", ({ payload }) =>
        admin.pipe(Effect.andThen(sellers.requireActive(payload.sellerId)), Effect.andThen(products.create(payload))))
      .handle("get", ({ params }) =>
        Effect.andThen(anyone, products.get(params.id)).pipe(
          Effect.map((product) =>
            HttpApiSchema.withHeaders({
              body: product,
              headers: { "cache-control": productCacheControl, "cache-tag": `product:${product.id}` }
            })
          )
        ))
      .handle("view", ({ params }) =>
        anyone.pipe(
          Effect.andThen(products.get(params.id)),
          Effect.andThen(views.add(params.id)),
          Effect.map((count) => ({ productId: params.id, views: count })),
          Effect.catchTag("meshwork/ShardedCounters/CountersUnavailable", countersDown)
        ))
      .handle("stats", ({ params }) =>
        anyone.pipe(
          Effect.andThen(products.get(params.id)),
          Effect.andThen(views.get(params.id)),
          Effect.map((count) => ({ productId: params.id, views: count, shard: views.shardOf(params.id) })),
          Effect.catchTag("meshwork/ShardedCounters/CountersUnavailable", countersDown)
        ))
      .handle("popular", ({ query }) =>
        anyone.pipe(
          Effect.andThen(views.top(query.limit ?? 10)),
          Effect.map((top) => ({ items: top.map(({ key, count }) => ({ productId: key, views: count })) })),
          Effect.catchTag("meshwork/ShardedCounters/CountersUnavailable", countersDown)
        ))
      .handle("update", ({ params, payload }) =>
        admin.pipe(
          Effect.andThen(locks.withLock(
            `product:${params.id}`,
            (lease) =>
              Effect.andThen(
                payload.sellerId === undefined ? Effect.void : sellers.requireActive(payload.sellerId),
                products.update(params.id, payload, lease.fencingToken)
              ),
            updateLock
          )),
          Effect.catchTags({
            "meshwork/Locks/LockHeld": (held) =>
              Effect.fail(new ProductLocked({ productId: params.id, retryAfterMillis: held.retryAfterMillis })),
            // The update was cut off mid-way: its fenced write may or may not have landed.
            "meshwork/Locks/LockLost": () =>
              Effect.fail(new Problem.ServiceUnavailable({ detail: "The update lost its lock before it finished; it may or may not have been applied" })),
            "meshwork/Locks/LockUnavailable": () => Effect.fail(new Problem.ServiceUnavailable({ detail: "The product lock could not be reached" }))
          })
        ))
      .handle("remove", ({ params }) => Effect.andThen(admin, products.remove(params.id)))
  })
)

/** Imports are admin work; the job answers 202 and is followed at its Location. */
const ImportsHandlers = HttpApiBuilder.group(
  ProductsApi,
  "imports",
  Effect.fn(function*(handlers) {
    const imports = yield* Imports
    return handlers
      .handle("create", Effect.fnUntraced(function*({ payload }) {
        const identity = yield* admin
        const job = yield* imports.start(payload.products, identity.kind === "anonymous" ? "" : identity.sub)
        return HttpApiSchema.withHeaders({ body: job, headers: { location: `/api/products/imports/${job.id}` } })
      }))
      .handle("get", ({ params }) => Effect.andThen(admin, imports.get(params.id)))
  })
)

/** Ready when its database answers and a view counter shard (a Durable Object) does. */
const HealthHandlers = HttpApiBuilder.group(
  ProductsApi,
  "health",
  Effect.fn(function*(handlers) {
    const views = yield* ProductViews
    return handlers.handle("health", Health.ready("products", { d1: Health.d1("PRODUCTS_DB"), durableObjects: views.get("readiness") }))
  })
)

export const ProductsRoutes = HttpApiBuilder.layer(ProductsApi).pipe(
  Layer.provide([ProductsHandlers, ImportsHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), Identity.MeshIdentity.layer])
)
