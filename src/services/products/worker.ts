/**
 * The products Worker: internal, reached through the router; calls users
 * over its own binding, and consumes the product import queue and its
 * dead-letter queue.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { D1, Http, Locks, Queues, Retries, ShardedCounters, Worker } from "meshwork"
import { ProductsRoutes } from "./http.ts"
import { ImportItem, Imports, importsDeadLetterQueue, importsQueue } from "./Imports.ts"
import { Products } from "./Products.ts"
import { Sellers } from "./Sellers.ts"
import { ProductViews } from "./Views.ts"

/** Product locks (src/layers/state/Locks.ts), bound as LOCKS. */
export { LockObject } from "meshwork"
/** View counter shards (src/layers/state/ShardedCounters.ts), bound as VIEW_COUNTERS. */
export class CounterShardObject extends ShardedCounters.CounterShardObject {}

const services = Layer.mergeAll(Products.layer, Imports.layer, Locks.layer(), ProductViews.layer).pipe(Layer.provideMerge(Sellers.layer))

export default Worker.make({
  name: "products",
  layer: Http.layer(ProductsRoutes).pipe(Layer.provideMerge(services), Layer.provideMerge(Retries.layer)),
  fetch: Http.serve,
  // Daily: forget handled queue messages old enough that no redelivery can come.
  scheduled: () =>
    Queues.pruneProcessed().pipe(
      Effect.tap((deleted) => Effect.logInfo(`Pruned ${deleted} handled queue messages`)),
      Effect.orDie,
      Effect.provide(D1.layer("PRODUCTS_DB"))
    ),
  queue: Queues.route({
    [importsQueue]: Queues.consumer({
      name: importsQueue,
      body: ImportItem,
      handle: (item, delivery) => Imports.use((imports) => imports.importItem(item, delivery)),
      deadLetter: "IMPORTS_DLQ"
    }),
    [importsDeadLetterQueue]: Queues.consumer({
      name: importsDeadLetterQueue,
      body: ImportItem,
      handle: (item, delivery) => Imports.use((imports) => imports.markDead(item, delivery)),
      onUndecodable: (message) => Imports.use((imports) => imports.keepDeadLetter(message))
    })
  })
})
