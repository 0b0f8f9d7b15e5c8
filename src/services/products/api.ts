/**
 * The products service's HTTP contract, shared by the server (`http.ts`) and
 * every typed client (`client.ts`).
 */
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiError from "effect/http-api/HttpApiError"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import * as OpenApi from "effect/http-api/OpenApi"
import { Health, Identity, Pagination, Problem } from "meshwork"
import { Id, UserId } from "../users/api.ts"

export const ProductId = Id
export const Sku = Schema.String.check(Schema.isPattern(/^[A-Z0-9][A-Z0-9-]{0,39}$/))
export const ProductName = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1), Schema.isMaxLength(200))
export const Description = Schema.String.check(Schema.isMaxLength(2000))
export const PriceCents = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 100_000_000 }))
export const Currency = Schema.String.check(Schema.isPattern(/^[A-Z]{3}$/))
export const Stock = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 1_000_000_000 }))

export const Product = Schema.Struct({
  id: ProductId,
  sku: Sku,
  name: ProductName,
  description: Description,
  priceCents: PriceCents,
  currency: Currency,
  stock: Stock,
  sellerId: UserId,
  createdAt: Schema.String,
  updatedAt: Schema.String
})
export type Product = typeof Product.Type

export const CreateProduct = Schema.Struct({
  sku: Sku,
  name: ProductName,
  description: Schema.optionalKey(Description),
  priceCents: PriceCents,
  currency: Schema.optionalKey(Currency),
  stock: Schema.optionalKey(Stock),
  sellerId: UserId
}).annotate({
  examples: [{ sku: "MESH-001", name: "Mesh router", priceCents: 4999, sellerId: "0195f3a0-0000-7000-8000-000000000001", currency: "EUR", stock: 10 }]
})
export type CreateProduct = typeof CreateProduct.Type

export const UpdateProduct = Schema.Struct({
  sku: Schema.optionalKey(Sku),
  name: Schema.optionalKey(ProductName),
  description: Schema.optionalKey(Description),
  priceCents: Schema.optionalKey(PriceCents),
  currency: Schema.optionalKey(Currency),
  stock: Schema.optionalKey(Stock),
  sellerId: Schema.optionalKey(UserId)
}).check(Schema.isMinProperties(1))
export type UpdateProduct = typeof UpdateProduct.Type

export const ProductPage = Pagination.Page(Product)

export class ProductNotFound extends HttpApiError.Problem<ProductNotFound>()("ProductNotFound", {
  type: "urn:meshwork:problem:product-not-found",
  status: 404,
  title: "Product not found"
}, {
  productId: Schema.String
}) {}

export class SkuTaken extends HttpApiError.Problem<SkuTaken>()("SkuTaken", {
  type: "urn:meshwork:problem:sku-taken",
  status: 409,
  title: "SKU already in use"
}, {
  sku: Schema.String
}) {}

export class UnknownSeller extends HttpApiError.Problem<UnknownSeller>()("UnknownSeller", {
  type: "urn:meshwork:problem:unknown-seller",
  status: 422,
  title: "Seller is not an active user"
}, {
  sellerId: Schema.String
}) {}

/** Another update of the product holds its lock; retry after `retryAfterMillis`. */
export class ProductLocked extends HttpApiError.Problem<ProductLocked>()("ProductLocked", {
  type: "urn:meshwork:problem:product-locked",
  status: 409,
  title: "Product is being updated"
}, {
  productId: Schema.String,
  retryAfterMillis: Schema.Number
}) {}

/** The update's lock expired and a later holder has written: it was not applied. */
export class StaleFencingToken extends HttpApiError.Problem<StaleFencingToken>()("StaleFencingToken", {
  type: "urn:meshwork:problem:stale-fencing-token",
  status: 409,
  title: "Write under an expired lock"
}, {
  productId: Schema.String,
  fencingToken: Schema.Number,
  seen: Schema.Number
}) {}

/** An import: up to 1000 products, created asynchronously through a queue. */
export const CreateImport = Schema.Struct({
  products: Schema.Array(CreateProduct).check(Schema.isMinLength(1), Schema.isMaxLength(1000))
})
export type CreateImport = typeof CreateImport.Type

export const ImportId = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64))

export const ImportFailure = Schema.Struct({
  /** The item's position in the import's `products`. */
  item: Schema.Number,
  outcome: Schema.Literals(["failed", "dead"]),
  reason: Schema.String
})

/** Where an import stands. It is `done` once every item is imported, failed or dead. */
export const ImportJob = Schema.Struct({
  id: ImportId,
  status: Schema.Literals(["running", "done"]),
  total: Schema.Number,
  imported: Schema.Number,
  failed: Schema.Number,
  dead: Schema.Number,
  /** The first 100 items that did not import, by position. */
  failures: Schema.Array(ImportFailure),
  createdAt: Schema.String,
  updatedAt: Schema.String
})
export type ImportJob = typeof ImportJob.Type

export class ImportNotFound extends HttpApiError.Problem<ImportNotFound>()("ImportNotFound", {
  type: "urn:meshwork:problem:import-not-found",
  status: 404,
  title: "Import not found"
}, {
  importId: Schema.String
}) {}

const byId = { id: ProductId }

/** Most ids one `?ids=` lookup takes. */
export const maxIds = 100

/**
 * A page of products, or with `ids=a,b,c` (at most 100) those products that
 * exist, in the order asked (a batch lookup: missing ids are left out).
 */
export const ProductQuery = {
  ...Pagination.PageQuery,
  ids: Schema.optional(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(maxIds * 65)))
}

export const ProductViewCount = Schema.Struct({ productId: ProductId, views: Schema.Number })
export const ProductStats = Schema.Struct({
  productId: ProductId,
  views: Schema.Number,
  /** The counter shard that holds the product (src/layers/state/Sharding.ts). */
  shard: Schema.Number
})
export const PopularProducts = Schema.Struct({ items: Schema.Array(ProductViewCount) })
export const PopularQuery = {
  limit: Schema.optional(Schema.FiniteFromString.check(Schema.isInt(), Schema.isBetween({ minimum: 1, maximum: 100 })))
}

export class ProductsGroup extends HttpApiGroup.make("products")
  .add(
    HttpApiEndpoint.get("list", "/", { query: ProductQuery, success: ProductPage, error: [Pagination.InvalidCursor, Problem.BadRequest, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "List products, or look several up by id"),
    HttpApiEndpoint.post("create", "/", {
      payload: CreateProduct,
      success: Product.pipe(HttpApiSchema.status(201)),
      error: [SkuTaken, UnknownSeller, Problem.BadGateway, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Create a product (admins)"),
    HttpApiEndpoint.get("popular", "/popular", { query: PopularQuery, success: PopularProducts, error: [Problem.ServiceUnavailable, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "The most viewed products"),
    HttpApiEndpoint.get("get", "/:id", {
      params: byId,
      // Cacheable at the edge (src/layers/edge/EdgeCache.ts), tagged for purges.
      success: HttpApiSchema.WithHeaders(Product, { "cache-control": Schema.String, "cache-tag": Schema.String }),
      error: [ProductNotFound, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Read a product (cached at the edge)"),
    HttpApiEndpoint.post("view", "/:id/views", {
      params: byId,
      success: ProductViewCount,
      error: [ProductNotFound, Problem.ServiceUnavailable, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Count a view of a product"),
    HttpApiEndpoint.get("stats", "/:id/stats", { params: byId, success: ProductStats, error: [ProductNotFound, Problem.ServiceUnavailable, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "A product's view count"),
    HttpApiEndpoint.patch("update", "/:id", {
      params: byId,
      payload: UpdateProduct,
      success: Product,
      error: [ProductNotFound, SkuTaken, UnknownSeller, ProductLocked, StaleFencingToken, Problem.BadGateway, Problem.ServiceUnavailable, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Change a product (admins)"),
    HttpApiEndpoint.delete("remove", "/:id", {
      params: byId,
      success: HttpApiSchema.NoContent,
      error: [ProductNotFound, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Delete a product (admins)")
  )
  .prefix("/api/products")
  .annotate(OpenApi.Description, "The catalogue. Any signed-in caller reads; admins write.")
{}

/** Product imports: admins queue them, then follow them by id. */
export class ImportsGroup extends HttpApiGroup.make("imports")
  .add(
    HttpApiEndpoint.post("create", "/", {
      payload: CreateImport,
      success: HttpApiSchema.WithHeaders(ImportJob, { location: Schema.String }).pipe(HttpApiSchema.status(202)),
      error: [Problem.ServiceUnavailable, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Queue an import of up to 1000 products (admins)"),
    HttpApiEndpoint.get("get", "/:id", { params: { id: ImportId }, success: ImportJob, error: [ImportNotFound, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "Follow an import (admins)")
  )
  .prefix("/api/products/imports")
  .annotate(OpenApi.Description, "Bulk imports, through a queue.")
{}

/** Reads need any identity; writes need an admin (http.ts). */
export class ProductsApi extends HttpApi.make("products")
  .add(ImportsGroup)
  .add(ProductsGroup)
  .add(Health.HealthGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
  .middleware(Identity.MeshIdentity)
{}
