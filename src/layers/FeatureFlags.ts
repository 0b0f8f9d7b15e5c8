/**
 * Feature flags any service can evaluate, kept in KV (`MESH_CONFIG`, one key
 * per flag: `flags/<name>`, so editing one flag never overwrites another).
 *
 * ```ts
 * const flags = yield* FeatureFlags
 * if (yield* flags.isOn("new-checkout", identity)) ...
 * ```
 *
 * A flag is on for a caller when it is `enabled` (the kill switch: `false`
 * turns it off for everyone, targets included) and the caller is one of its
 * `users`, has one of its `roles`, or falls in its `percentage`. The rollout
 * hashes `"<flag>:<user>"` into 10,000 buckets, so it is uniform over users,
 * independent between flags, and monotonic: a user in at 10% is in at 20%.
 * A flag that does not exist, a configuration that cannot be read, or a
 * caller without identity gets the flag's safe default: off.
 *
 * Each isolate keeps a flag it read for `FLAGS_CACHE_SECONDS` (default 10);
 * a change reaches everyone within that plus KV's propagation. When KV
 * fails, the last copy stands; without the binding every flag is off.
 */
import { Clock, Config, Context, Effect, Layer, Option, Schema } from "effect"
import * as Bindings from "../runtime/Bindings.ts"
import type { Identity } from "./Identity.ts"
import { fnv1a64 } from "./Sharding.ts"

export const FlagName = Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,63}$/))

export const Flag = Schema.Struct({
  /** The kill switch: false turns the flag off for everyone. */
  enabled: Schema.Boolean,
  /** Percent of users the flag is on for, 0 to 100 (two decimals). */
  percentage: Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 100 })),
  /** Users it is always on for, by id. */
  users: Schema.optionalKey(Schema.Array(Schema.String).check(Schema.isMaxLength(1000))),
  /** Roles it is always on for. */
  roles: Schema.optionalKey(Schema.Array(Schema.String).check(Schema.isMaxLength(100)))
})
export type Flag = typeof Flag.Type


const keyOf = (name: string) => `flags/${name}`
const decodeFlag = Schema.decodeUnknownEffect(Schema.fromJsonString(Flag))

/** A user's bucket for a flag, 0 to 9999. */
export const bucketOf = (flag: string, user: string): number => Number(fnv1a64(`${flag}:${user}`) % 10_000n)

/** Whether `flag` is on for `identity`. */
export const evaluate = (flag: Flag | undefined, name: string, identity: Identity | undefined): boolean => {
  if (flag === undefined || !flag.enabled || identity === undefined || identity.kind === "anonymous") return false
  if (flag.users?.includes(identity.sub)) return true
  if (identity.kind === "user" && flag.roles?.some((role) => identity.roles.includes(role))) return true
  return bucketOf(name, identity.sub) < Math.round(flag.percentage * 100)
}

/** The configuration store failed. */
export class FlagStoreError extends Schema.TaggedError<FlagStoreError>()("FlagStoreError", { cause: Schema.Defect() }) {}

const store = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: (cause) => new FlagStoreError({ cause }) })

/** One flag from KV; missing or unreadable is `undefined` (off). */
export const readFlag = (kv: KVNamespace, name: string) =>
  Effect.flatMap(store(() => kv.get(keyOf(name))), (raw): Effect.Effect<Flag | undefined> =>
    raw === null
      ? Effect.succeed(undefined)
      : decodeFlag(raw).pipe(
        Effect.tapError((error) => Effect.logError(`Ignoring the unreadable feature flag ${name}`, error)),
        Effect.orElseSucceed(() => undefined)
      ))

/** Every flag in KV, by name. */
export const readFlags = (kv: KVNamespace) =>
  Effect.gen(function*() {
    const listed = yield* store(() => kv.list({ prefix: "flags/" }))
    const flags: Record<string, Flag> = {}
    for (const { name: key } of listed.keys) {
      const name = key.slice("flags/".length)
      const flag = yield* readFlag(kv, name)
      if (flag !== undefined) flags[name] = flag
    }
    return flags
  })

export const writeFlag = (kv: KVNamespace, name: string, flag: Flag) => store(() => kv.put(keyOf(name), JSON.stringify(flag)))
export const deleteFlag = (kv: KVNamespace, name: string) => store(() => kv.delete(keyOf(name)))

export class FeatureFlags extends Context.Service<FeatureFlags, {
  readonly isOn: (name: string, identity: Identity | undefined) => Effect.Effect<boolean>
}>()("meshwork/layers/FeatureFlags") {
  static readonly make = (kv: KVNamespace | undefined, cacheMillis: number): FeatureFlags["Service"] => {
    const cached = new Map<string, { readonly flag: Flag | undefined; readonly at: number }>()
    /** The flag, from this isolate's copy while fresh; when KV fails, the last copy (or off). */
    const flag = (name: string) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const hit = cached.get(name)
        if (kv === undefined || hit !== undefined && now - hit.at < cacheMillis) return Effect.succeed(hit?.flag)
        return readFlag(kv, name).pipe(
          Effect.tap((read) => Effect.sync(() => cached.set(name, { flag: read, at: now }))),
          Effect.catchTag("FlagStoreError", (error) =>
            Effect.as(Effect.logWarning(`Feature flag ${name} unreadable; keeping the last copy`, error.cause), hit?.flag))
        )
      })
    return FeatureFlags.of({
      isOn: (name, identity) => Effect.map(flag(name), (found) => evaluate(found, name, identity))
    })
  }

  /** Flags from the `MESH_CONFIG` KV namespace, kept `FLAGS_CACHE_SECONDS` (default 10) per isolate. */
  static readonly layer = Layer.effect(
    FeatureFlags,
    Effect.gen(function*() {
      const kv = yield* Effect.option(Bindings.kv("MESH_CONFIG"))
      if (kv._tag === "None") yield* Effect.logWarning("No MESH_CONFIG binding: every feature flag is off")
      const seconds = yield* Config.Number("FLAGS_CACHE_SECONDS").pipe(Config.withDefault(10))
      return FeatureFlags.make(Option.getOrUndefined(kv), seconds * 1000)
    })
  )
}
