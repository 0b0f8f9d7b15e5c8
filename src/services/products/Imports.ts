/**
 * Product imports through a queue.
 *
 * `start` records a job and queues one message per product (IMPORTS, the
 * queue `meshwork-product-imports`). The products Worker consumes it:
 * `importItem` checks the seller and creates the product; a product that can
 * never be created (SKU taken, seller unknown or disabled) is recorded as
 * failed, and anything else (users unreachable, D1 failing) is retried with
 * backoff until the queue dead-letters it. The dead-letter queue's consumer
 * records the item as dead. Each message is counted exactly once, as
 * imported, failed or dead, in the same D1 transaction as its writes
 * (`Queues.once`), so redeliveries change nothing and a job's counts always
 * add up to its total once it is done.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type { SqlError, Statement } from "effect/sql"
import * as SqlClient from "effect/sql/SqlClient"
import { D1, Problem, Queues } from "meshwork"
import { uuidv7 } from "../shared/Ids.ts"
import { decodeRows, first, nowIso } from "../shared/Rows.ts"
import { type CreateProduct, CreateProduct as CreateProductSchema, ImportId, type ImportJob, ImportNotFound } from "./api.ts"
import { insertProduct } from "./Products.ts"
import { Sellers } from "./Sellers.ts"

/** One queued product of an import. */
export const ImportItem = Schema.Struct({ jobId: ImportId, item: Schema.Int, product: CreateProductSchema })
export type ImportItem = typeof ImportItem.Type

/** The queues' names, as in the products wrangler config. */
export const importsQueue = "meshwork-product-imports"
export const importsDeadLetterQueue = "meshwork-product-imports-dlq"

const JobRow = Schema.Struct({
  id: Schema.String,
  total: Schema.Number,
  imported: Schema.Number,
  failed: Schema.Number,
  dead: Schema.Number,
  created_at: Schema.String,
  updated_at: Schema.String
})
const FailureRow = Schema.Struct({ item: Schema.Number, outcome: Schema.Literals(["failed", "dead"]), reason: Schema.String })
const jobs = decodeRows(JobRow, (row) => row)
const failures = decodeRows(FailureRow, (row) => row)

/** What a dead letter must hold to be counted against its job. */
const decodeNamed = (body: unknown) =>
  Effect.flatMap(Schema.decodeUnknownEffect(Queues.Envelope)(body), (envelope) =>
    Effect.map(
      Schema.decodeUnknownEffect(Schema.Struct({ jobId: ImportId, item: Schema.Int }))(envelope.body),
      (item) => ({ envelope, item })
    ))

/** How many failures a job's status shows. */
const failuresShown = 100

export class Imports extends Context.Service<Imports, {
  /** Records a job for `products` and queues them. */
  readonly start: (products: ReadonlyArray<CreateProduct>, createdBy: string) => Effect.Effect<ImportJob, Problem.ServiceUnavailable>
  readonly get: (id: string) => Effect.Effect<ImportJob, ImportNotFound>
  /** The consumer's work for one message: fails only when a retry may help. */
  readonly importItem: (item: ImportItem, delivery: Queues.Delivery) => Effect.Effect<void, Problem.ServiceUnavailable>
  /** The dead-letter consumer's work: the item will not be imported. */
  readonly markDead: (item: ImportItem, delivery: Queues.Delivery) => Effect.Effect<void>
  /** Keeps a dead-lettered message that names no job. */
  readonly keepDeadLetter: (message: Message<unknown>) => Effect.Effect<void>
}>()("meshwork/services/products/Imports") {
  static readonly layerNoDeps = Layer.effect(
    Imports,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const d1 = yield* D1.D1Batch
      const sellers = yield* Sellers
      const queue = yield* Queues.producer("IMPORTS", ImportItem)
      const services = Effect.provideService(SqlClient.SqlClient, sql)

      const get = (id: string) =>
        Effect.gen(function*() {
          const job = yield* jobs(sql`SELECT * FROM import_jobs WHERE id = ${id}`).pipe(
            Effect.orDie,
            Effect.flatMap(first(() => new ImportNotFound({ importId: id })))
          )
          const failed = yield* Effect.orDie(failures(sql`
            SELECT item, outcome, reason FROM import_failures WHERE job_id = ${id} ORDER BY item LIMIT ${failuresShown}`))
          return {
            id: job.id,
            status: job.imported + job.failed + job.dead >= job.total ? "done" : "running",
            total: job.total,
            imported: job.imported,
            failed: job.failed,
            dead: job.dead,
            failures: failed,
            createdAt: job.created_at,
            updatedAt: job.updated_at
          } satisfies ImportJob
        }).pipe(Effect.withSpan("Imports.get"))

      /** Counts `item` once as `outcome` (with a reason unless imported), together with `writes`. */
      const settle = (
        item: Pick<ImportItem, "jobId" | "item">,
        delivery: Queues.Delivery,
        outcome: "imported" | "failed" | "dead",
        reason: string | undefined,
        writes: ReadonlyArray<Statement.Statement<unknown>>
      ) =>
        Effect.gen(function*() {
          const at = yield* nowIso
          const count = outcome === "imported"
            ? sql`UPDATE import_jobs SET imported = imported + 1, updated_at = ${at} WHERE id = ${item.jobId}`
            : outcome === "failed"
            ? sql`UPDATE import_jobs SET failed = failed + 1, updated_at = ${at} WHERE id = ${item.jobId}`
            : sql`UPDATE import_jobs SET dead = dead + 1, updated_at = ${at} WHERE id = ${item.jobId}`
          const failure = reason === undefined ? [] : [sql`
            INSERT INTO import_failures (job_id, item, outcome, reason) VALUES (${item.jobId}, ${item.item}, ${outcome}, ${reason})`]
          const result = yield* Queues.once(delivery, outcome, [...writes, count, ...failure]).pipe(
            services,
            Effect.provideService(D1.D1Batch, d1)
          )
          if (result === "duplicate") yield* Effect.logInfo("Duplicate delivery; already counted")
        })

      const failedForGood = (item: ImportItem, delivery: Queues.Delivery, reason: string) =>
        settle(item, delivery, "failed", reason, [])

      return Imports.of({
        start: Effect.fn("Imports.start")(function*(products, createdBy) {
          const id = yield* uuidv7
          const at = yield* nowIso
          yield* Effect.orDie(sql`
            INSERT INTO import_jobs (id, total, created_by, created_at, updated_at)
            VALUES (${id}, ${products.length}, ${createdBy}, ${at}, ${at})`)
          const items = products.map((product, item) => ({ jobId: id, item, product }))
          yield* queue.sendBatch(items).pipe(
            Effect.catchTag("meshwork/Queues/QueueSendFailed", (error) =>
              Effect.gen(function*() {
                yield* Effect.logError("Queueing an import failed", error.cause)
                if (error.sent === 0) {
                  yield* Effect.orDie(sql`DELETE FROM import_jobs WHERE id = ${id}`)
                  return yield* new Problem.ServiceUnavailable({ detail: "The import queue could not be reached" })
                }
                // Part of it went out: the rest is failed, so the job still adds up.
                const unsent = items.slice(error.sent)
                yield* Effect.orDie(d1.batch([
                  sql`UPDATE import_jobs SET failed = failed + ${unsent.length} WHERE id = ${id}`,
                  ...unsent.map((item) =>
                    sql`INSERT INTO import_failures (job_id, item, outcome, reason)
                        VALUES (${id}, ${item.item}, 'failed', 'The item could not be queued')`)
                ]))
              }))
          )
          return yield* Effect.orDie(get(id))
        }),
        get,
        importItem: (item, delivery) =>
          Effect.gen(function*() {
            const seller = yield* Effect.exit(sellers.requireActive(item.product.sellerId))
            if (seller._tag === "Failure") {
              const error = seller.cause.reasons.find((reason) => reason._tag === "Fail")?.error
              if (error?._tag === "UnknownSeller") {
                return yield* failedForGood(item, delivery, `Unknown seller ${item.product.sellerId}: ${error.detail ?? ""}`.trim())
              }
              return yield* new Problem.ServiceUnavailable({ detail: "The users service could not check the seller" })
            }
            const id = yield* uuidv7
            const at = yield* nowIso
            yield* settle(item, delivery, "imported", undefined, [insertProduct(sql, id, item.product, at)]).pipe(
              Effect.catchTag("SqlError", (error: SqlError.SqlError) =>
                error.reason._tag === "UniqueViolation" && error.reason.constraint === "products.sku"
                  ? failedForGood(item, delivery, `SKU ${item.product.sku} is already in use`)
                  : Effect.die(error))
            )
          }).pipe(Effect.catchTag("SqlError", Effect.die), Effect.withSpan("Imports.importItem")),
        markDead: (item, delivery) =>
          settle(item, delivery, "dead", "Not imported after the queue's retries", []).pipe(
            Effect.orDie,
            Effect.withSpan("Imports.markDead")
          ),
        keepDeadLetter: (message) =>
          Effect.gen(function*() {
            // A message whose product no longer decodes still names its job and item: count it as dead there.
            const named = yield* Effect.option(decodeNamed(message.body))
            if (named._tag === "Some") {
              const { envelope, item } = named.value
              const delivery = { id: envelope.id, queue: importsDeadLetterQueue, messageId: message.id, attempts: message.attempts, sentAt: envelope.sentAt }
              return yield* settle(
                item,
                delivery,
                "dead",
                "The item could not be read",
                []
              ).pipe(Effect.orDie)
            }
            const at = yield* nowIso
            let body: string
            try {
              body = JSON.stringify(message.body) ?? "null"
            } catch {
              body = String(message.body)
            }
            yield* Effect.orDie(sql`
              INSERT INTO dead_letters (message_id, queue, body, received_at)
              VALUES (${message.id}, ${importsDeadLetterQueue}, ${body}, ${at})
              ON CONFLICT (message_id) DO NOTHING`)
          })
      })
    })
  )

  static readonly layer = Imports.layerNoDeps.pipe(Layer.provide(D1.layer("PRODUCTS_DB")))
}
