/**
 * The mesh's configuration store: JSON values in the `MESH_CONFIG` KV
 * namespace (traffic splits, feature flags), read through a per-isolate
 * cache. A KV failure never fails a request: the last copy read stands.
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"

/** KV failed (unreachable, or over its write rate). */
export class ConfigStoreError extends Schema.TaggedError<ConfigStoreError>()("meshwork/ConfigStore/ConfigStoreError", {
  cause: Schema.Defect()
}) {}

const call = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: (cause) => new ConfigStoreError({ cause }) })

/** One value of `schema` at `key`; missing or unreadable (logged) is `undefined`. */
export const read = <A>(kv: KVNamespace, key: string, schema: Schema.Codec<A, unknown>) => {
  const decode = Schema.decodeUnknownEffect(Schema.fromJsonString(schema))
  return Effect.flatMap(call(() => kv.get(key)), (raw): Effect.Effect<A | undefined> =>
    raw === null
      ? Effect.succeed(undefined)
      : decode(raw).pipe(
        Effect.tapError((error) => Effect.logError(`Ignoring the unreadable configuration ${key}`, error)),
        Effect.orElseSucceed(() => undefined)
      ))
}

/** Every value under `prefix`, by the rest of its key. */
export const readAll = <A>(kv: KVNamespace, prefix: string, schema: Schema.Codec<A, unknown>) =>
  Effect.gen(function*() {
    const listed = yield* call(() => kv.list({ prefix }))
    const values: Record<string, A> = {}
    for (const { name } of listed.keys) {
      const value = yield* read(kv, name, schema)
      if (value !== undefined) values[name.slice(prefix.length)] = value
    }
    return values
  })

export const write = (kv: KVNamespace, key: string, value: unknown) => call(() => kv.put(key, JSON.stringify(value)))
export const remove = (kv: KVNamespace, key: string) => call(() => kv.delete(key))

/**
 * Values read through this isolate's cache: each kept `cacheMillis`; when KV
 * fails, the last copy (or `undefined`); without a store, always `undefined`.
 */
export const cached = <A>(kv: KVNamespace | undefined, cacheMillis: number, schema: Schema.Codec<A, unknown>) => {
  const copies = new Map<string, { readonly value: A | undefined; readonly at: number }>()
  return {
    get: (key: string): Effect.Effect<A | undefined> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const hit = copies.get(key)
        if (kv === undefined || hit !== undefined && now - hit.at < cacheMillis) return Effect.succeed(hit?.value)
        return read(kv, key, schema).pipe(
          Effect.tap((value) => Effect.sync(() => copies.set(key, { value, at: now }))),
          Effect.catchTag("meshwork/ConfigStore/ConfigStoreError", (error) =>
            Effect.as(Effect.logWarning(`Configuration ${key} unreadable; keeping the last copy`, error.cause), hit?.value))
        )
      }),
    /** The copy this isolate holds now, without reading. */
    peek: (key: string): A | undefined => copies.get(key)?.value,
    /** Replaces this isolate's copy, as of `at`. */
    put: (key: string, value: A | undefined, at: number) => void copies.set(key, { value, at })
  }
}

/**
 * The store and the cache time from `cacheSecondsVar` (default 10 s). Without
 * the binding, `undefined` and a warning saying what that means.
 */
export const fromEnv = (cacheSecondsVar: string, withoutStore: string) =>
  Effect.gen(function*() {
    const kv = Option.getOrUndefined(yield* Effect.option(Bindings.kv("MESH_CONFIG")))
    if (kv === undefined) yield* Effect.logWarning(`No MESH_CONFIG binding: ${withoutStore}`)
    const seconds = yield* Config.Number(cacheSecondsVar).pipe(Config.withDefault(10))
    return { kv, cacheMillis: seconds * 1000 }
  })
