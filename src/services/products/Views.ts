/**
 * Product view counts, sharded over `VIEW_SHARDS` counter objects (default
 * 8) by product id (src/layers/state/ShardedCounters.ts).
 */
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Bindings, ShardedCounters, Sharding } from "meshwork"

export class ProductViews extends Context.Service<ProductViews, ShardedCounters.ShardedCounters>()(
  "meshwork/services/products/ProductViews"
) {
  static readonly layer = Layer.effect(
    ProductViews,
    Effect.gen(function*() {
      const count = yield* Config.Int("VIEW_SHARDS").pipe(Config.withDefault(8))
      const namespace = yield* Bindings.durableObject("VIEW_COUNTERS")
      return ShardedCounters.make(namespace, { prefix: "views", shards: Sharding.shards(count) })
    })
  )
}
