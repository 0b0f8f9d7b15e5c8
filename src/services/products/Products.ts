/**
 * The products store: D1 through `effect/sql`. SQL failures are defects; a
 * duplicate SKU is the typed `SkuTaken`.
 *
 * Updates are fenced: each carries the fencing token of the product's lock
 * (src/layers/state/Locks.ts), the row keeps the highest token it has seen, and an
 * update with a lower one is refused with `StaleFencingToken`, so a writer
 * whose lock expired mid-update cannot overwrite its successor.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type { SqlError } from "effect/sql"
import * as SqlClient from "effect/sql/SqlClient"
import { D1 } from "meshwork"
import { uuidv7 } from "../shared/Ids.ts"
import { decodeRows, first, nowIso } from "../shared/Rows.ts"
import { noStackTrace } from "../shared/Spans.ts"
import type { CreateProduct, Product, UpdateProduct } from "./api.ts"
import { ProductNotFound, SkuTaken, StaleFencingToken } from "./api.ts"

const ProductRow = Schema.Struct({
  id: Schema.String,
  sku: Schema.String,
  name: Schema.String,
  description: Schema.String,
  price_cents: Schema.Number,
  currency: Schema.String,
  stock: Schema.Number,
  seller_id: Schema.String,
  created_at: Schema.String,
  updated_at: Schema.String
})

const products = decodeRows(ProductRow, (row): Product => ({
  id: row.id,
  sku: row.sku,
  name: row.name,
  description: row.description,
  priceCents: row.price_cents,
  currency: row.currency,
  stock: row.stock,
  sellerId: row.seller_id,
  createdAt: row.created_at,
  updatedAt: row.updated_at
}))

/** The statement inserting a product, for `create` and for batches (imports). */
export const insertProduct = (sql: SqlClient.SqlClient, id: string, input: CreateProduct, at: string) =>
  sql`INSERT INTO products (id, sku, name, description, price_cents, currency, stock, seller_id, created_at, updated_at)
      VALUES (${id}, ${input.sku}, ${input.name}, ${input.description ?? ""}, ${input.priceCents},
              ${input.currency ?? "USD"}, ${input.stock ?? 0}, ${input.sellerId}, ${at}, ${at})`

const skuTaken = (sku: string) => (error: SqlError.SqlError) =>
  error.reason._tag === "UniqueViolation" ? Effect.fail(new SkuTaken({ sku })) : Effect.die(error)

export class Products extends Context.Service<Products, {
  readonly list: (page: { readonly limit: number; readonly afterId: string | undefined }) => Effect.Effect<ReadonlyArray<Product>>
  readonly get: (id: string) => Effect.Effect<Product, ProductNotFound>
  /** The products among `ids` that exist, in the order of `ids`. */
  readonly getMany: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Product>>
  readonly create: (input: CreateProduct) => Effect.Effect<Product, SkuTaken>
  readonly update: (
    id: string,
    patch: UpdateProduct,
    fencingToken: number
  ) => Effect.Effect<Product, ProductNotFound | SkuTaken | StaleFencingToken>
  readonly remove: (id: string) => Effect.Effect<void, ProductNotFound>
}>()("meshwork/services/products/Products") {
  static readonly layerNoDeps = Layer.effect(
    Products,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const notFound = (id: string) => () => new ProductNotFound({ productId: id })

      return Products.of({
        list: ({ limit, afterId }) =>
          products(sql`SELECT * FROM products WHERE id > ${afterId ?? ""} ORDER BY id LIMIT ${limit}`).pipe(
            Effect.orDie,
            Effect.withSpan("Products.list", undefined, noStackTrace)
          ),
        get: (id) =>
          products(sql`SELECT * FROM products WHERE id = ${id}`).pipe(
            Effect.orDie,
            Effect.flatMap(first(notFound(id))),
            Effect.withSpan("Products.get", undefined, noStackTrace)
          ),
        getMany: (ids) =>
          products(sql`SELECT * FROM products WHERE ${sql.in("id", ids)}`).pipe(
            Effect.orDie,
            Effect.map((found) => {
              const byId = new Map(found.map((product) => [product.id, product]))
              return [...new Set(ids)].flatMap((id) => byId.get(id) ?? [])
            }),
            Effect.withSpan("Products.getMany", { attributes: { "meshwork.batch.size": ids.length } }, noStackTrace)
          ),
        create: Effect.fn("Products.create")(function*(input) {
          const id = yield* uuidv7
          const at = yield* nowIso
          const created = yield* products(sql`${insertProduct(sql, id, input, at)} RETURNING *`).pipe(
            Effect.catchTag("SqlError", skuTaken(input.sku))
          )
          return yield* Effect.orDie(first(notFound(id))(created))
        }),
        update: Effect.fn("Products.update")(function*(id, patch, fencingToken) {
          const at = yield* nowIso
          const updated = yield* products(sql`
            UPDATE products SET
              sku = COALESCE(${patch.sku ?? null}, sku),
              name = COALESCE(${patch.name ?? null}, name),
              description = COALESCE(${patch.description ?? null}, description),
              price_cents = COALESCE(${patch.priceCents ?? null}, price_cents),
              currency = COALESCE(${patch.currency ?? null}, currency),
              stock = COALESCE(${patch.stock ?? null}, stock),
              seller_id = COALESCE(${patch.sellerId ?? null}, seller_id),
              updated_at = ${at},
              fence = ${fencingToken}
            WHERE id = ${id} AND fence <= ${fencingToken}
            RETURNING *`).pipe(Effect.catchTag("SqlError", skuTaken(patch.sku ?? "")))
          if (updated.length > 0) return updated[0]!
          const fences = yield* Effect.orDie(sql<{ fence: number }>`SELECT fence FROM products WHERE id = ${id}`)
          if (fences[0] === undefined) return yield* new ProductNotFound({ productId: id })
          return yield* new StaleFencingToken({ productId: id, fencingToken, seen: fences[0].fence })
        }),
        remove: Effect.fn("Products.remove")(function*(id) {
          const removed = yield* Effect.orDie(sql`DELETE FROM products WHERE id = ${id} RETURNING id`)
          if (removed.length === 0) return yield* new ProductNotFound({ productId: id })
        })
      })
    })
  )

  static readonly layer = Products.layerNoDeps.pipe(Layer.provide(D1.layer("PRODUCTS_DB")))
}
