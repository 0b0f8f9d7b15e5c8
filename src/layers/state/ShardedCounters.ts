/**
 * Counters sharded over Durable Objects by key.
 *
 * ```ts
 * // a Worker that exports CounterShardObject and binds it as VIEW_COUNTERS
 * const views = ShardedCounters.make(env.VIEW_COUNTERS, { prefix: "views", shards: Sharding.shards(8) })
 * yield* views.add(productId)          // one call, to the key's shard
 * yield* views.top(10)                 // one call per shard, merged
 * ```
 *
 * One object serialises every write sent to it, so a single counter object
 * tops out at roughly a thousand increments a second. Keys are spread over
 * `shards` objects by the sharding rule (src/layers/state/Sharding.ts): a key's
 * writes and reads go to its one shard; a question about all keys (the top
 * ten) asks every shard for its own top and merges the answers. Every shard
 * keeps each of its keys exactly, so the merge is exact too.
 *
 * One key is always on one shard: a single very hot key is still one
 * object's worth of throughput. Changing the shard count moves about
 * `1 / (n + 1)` of the keys per added shard, and their counts stay behind in
 * their old shard: plan the count up front, or migrate.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Sharding from "./Sharding.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

export interface Count {
  readonly key: string
  readonly count: number
}

/** The counters object could not be reached or failed. */
export class CountersUnavailable extends Schema.TaggedError<CountersUnavailable>()("meshwork/ShardedCounters/CountersUnavailable", {
  cause: Schema.Defect()
}) {}

/** The counters of one shard, over its SQLite storage. */
class CounterTable extends Context.Service<CounterTable, {
  readonly add: (key: string, by: number) => number
  readonly get: (keys: ReadonlyArray<string>) => Record<string, number>
  readonly top: (limit: number) => Array<Count>
}>()("meshwork/layers/state/ShardedCounters/CounterTable") {
  static readonly layer = Layer.effect(
    CounterTable,
    DurableObjects.State.useSync((state) => {
      const sql = state.storage.sql
      sql.exec("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, count INTEGER NOT NULL)")
      sql.exec("CREATE INDEX IF NOT EXISTS counters_by_count ON counters (count DESC)")
      return CounterTable.of({
        add: (key, by) =>
          sql.exec<{ count: number }>(
            `INSERT INTO counters (key, count) VALUES (?, ?)
             ON CONFLICT (key) DO UPDATE SET count = count + excluded.count RETURNING count`,
            key,
            by
          ).one().count,
        get: (keys) => {
          const counts: Record<string, number> = {}
          for (const key of keys) {
            counts[key] = sql.exec<{ count: number }>("SELECT count FROM counters WHERE key = ?", key).toArray()[0]?.count ?? 0
          }
          return counts
        },
        top: (limit) =>
          sql.exec<{ key: string; count: number }>("SELECT key, count FROM counters ORDER BY count DESC, key LIMIT ?", limit)
            .toArray()
            .map(({ key, count }) => ({ key, count }))
      })
    })
  )
}

/** One shard of counters. Export it from the Worker and bind it. */
export class CounterShardObject extends DurableObjects.make({ name: "CounterShardObject", layer: CounterTable.layer }) {
  add(key: string, by: number, trace?: Telemetry.Carrier): Promise<number> {
    return this.run(CounterTable.use((table) => Effect.sync(() => table.add(key, by))), { method: "add", trace })
  }
  get(keys: ReadonlyArray<string>, trace?: Telemetry.Carrier): Promise<Record<string, number>> {
    return this.run(CounterTable.use((table) => Effect.sync(() => table.get(keys))), { method: "get", trace })
  }
  top(limit: number, trace?: Telemetry.Carrier): Promise<Array<Count>> {
    return this.run(CounterTable.use((table) => Effect.sync(() => table.top(limit))), { method: "top", trace })
  }
}

type ShardStub = Pick<CounterShardObject, "add" | "get" | "top">

export interface Options {
  /** Names the shard objects: `<prefix>/<shard>`. */
  readonly prefix: string
  readonly shards: Sharding.Shards
}

export interface ShardedCounters {
  readonly shards: Sharding.Shards
  /** Adds `by` (default 1) to `key`'s counter; answers the new count. */
  readonly add: (key: string, by?: number) => Effect.Effect<number, CountersUnavailable>
  readonly get: (key: string) => Effect.Effect<number, CountersUnavailable>
  /** The `limit` highest counters over all shards, highest first (ties by key). */
  readonly top: (limit: number) => Effect.Effect<ReadonlyArray<Count>, CountersUnavailable>
  /** The shard that holds `key`. */
  readonly shardOf: (key: string) => number
}

export const make = (namespace: DurableObjectNamespace, options: Options): ShardedCounters => {
  const shard = (name: string) => namespace.get(namespace.idFromName(name)) as unknown as ShardStub
  const call = <A>(name: string, f: (object: ShardStub, trace: Telemetry.Carrier | undefined) => Promise<A>) =>
    Effect.flatMap(Telemetry.activeCarrier, (trace) =>
      Effect.tryPromise({ try: () => f(shard(name), trace), catch: (cause) => new CountersUnavailable({ cause }) }))
  const of = (key: string) => Sharding.objectName(options.prefix, options.shards, key)
  return {
    shards: options.shards,
    add: (key, by = 1) => call(of(key), (object, trace) => object.add(key, by, trace)),
    get: (key) => Effect.map(call(of(key), (object, trace) => object.get([key], trace)), (counts) => counts[key] ?? 0),
    top: (limit) =>
      Effect.forEach(
        Sharding.allObjectNames(options.prefix, options.shards),
        (name) => call(name, (object, trace) => object.top(limit, trace)),
        { concurrency: "unbounded" }
      ).pipe(Effect.map((tops) =>
        tops.flat().sort((a, b) => b.count - a.count || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)).slice(0, limit)
      )),
    shardOf: (key) => Sharding.shardOf(key, options.shards.count)
  }
}
