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
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as ConfigStore from "./ConfigStore.ts"
import type { Identity } from "../security/Identity.ts"
import { fnv1a64 } from "../state/Sharding.ts"

export const FlagName = Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,63}$/))

export const Flag = Schema.Struct({
  /** The kill switch: false turns the flag off for everyone. */
  enabled: Schema.Boolean,
  /** Percent of users the flag is on for, 0 to 100 (two decimals). */
  percentage: Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 100 })),
  /** Users it is always on for, by id (at most 1000, each at most 64 characters). */
  users: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64))).check(Schema.isMaxLength(1000))),
  /** Roles it is always on for (at most 100, each at most 64 characters). */
  roles: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64))).check(Schema.isMaxLength(100)))
})
export type Flag = typeof Flag.Type


const prefix = "flags/"
/** A user's bucket for a flag, 0 to 9999. */
export const bucketOf = (flag: string, user: string): number => Number(fnv1a64(`${flag}:${user}`) % 10_000n)

/** Whether `flag` is on for `identity`. */
export const evaluate = (flag: Flag | undefined, name: string, identity: Identity | undefined): boolean => {
  if (flag === undefined || !flag.enabled || identity === undefined || identity.kind === "anonymous") return false
  if (flag.users?.includes(identity.sub)) return true
  if (identity.kind === "user" && flag.roles?.some((role) => identity.roles.includes(role))) return true
  return bucketOf(name, identity.sub) < Math.round(flag.percentage * 100)
}

/** One flag from KV; missing or unreadable is `undefined` (off). */
export const readFlag = (kv: KVNamespace, name: string) => ConfigStore.read(kv, prefix + name, Flag)

/** Every flag in KV, by name. */
export const readFlags = (kv: KVNamespace) => ConfigStore.readAll(kv, prefix, Flag)

export const writeFlag = (kv: KVNamespace, name: string, flag: Flag) => ConfigStore.write(kv, prefix + name, flag)
export const deleteFlag = (kv: KVNamespace, name: string) => ConfigStore.remove(kv, prefix + name)

export class FeatureFlags extends Context.Service<FeatureFlags, {
  readonly isOn: (name: string, identity: Identity | undefined) => Effect.Effect<boolean>
}>()("meshwork/layers/release/FeatureFlags") {
  static readonly make = (kv: KVNamespace | undefined, cacheMillis: number): FeatureFlags["Service"] => {
    const flags = ConfigStore.cached(kv, cacheMillis, Flag)
    return FeatureFlags.of({
      isOn: (name, identity) => Effect.map(flags.get(prefix + name), (found) => evaluate(found, name, identity))
    })
  }

  /** Flags from the `MESH_CONFIG` KV namespace, kept `FLAGS_CACHE_SECONDS` (default 10) per isolate. */
  static readonly layer = Layer.effect(
    FeatureFlags,
    Effect.map(
      ConfigStore.fromEnv("FLAGS_CACHE_SECONDS", "every feature flag is off"),
      ({ kv, cacheMillis }) => FeatureFlags.make(kv, cacheMillis)
    )
  )
}
