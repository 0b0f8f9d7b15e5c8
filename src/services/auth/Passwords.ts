/**
 * Passwords: salted PBKDF2-SHA256 through WebCrypto, compared in constant time.
 *
 * The work factor is `PBKDF2_ITERATIONS` (default 100,000) and is stored with
 * each hash, so it can be raised later without invalidating old hashes.
 * Why 100,000: it is the most Cloudflare's WebCrypto accepts for PBKDF2 (as
 * reported for production; local workerd does not enforce it), and one hash
 * costs about 20 ms of CPU in workerd here, which fits the paid plan's CPU
 * limit with room to spare. On the free plan (10 ms of CPU per request) a
 * login at this setting can be cut off: lower the var there and accept the
 * weaker hash, or stay on the paid plan.
 */
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as Base64 from "effect/encoding/Base64"
import * as SqlClient from "effect/sql/SqlClient"
import { AuthDb } from "./db.ts"
import { nowIso } from "../shared/Rows.ts"

export interface StoredPassword {
  readonly hash: string
  readonly salt: string
  readonly iterations: number
}


const derive = (password: string, salt: Uint8Array, iterations: number) =>
  Effect.promise(async () => {
    const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(password), "PBKDF2", false, ["deriveBits"])
    return new Uint8Array(
      await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, key, 256)
    )
  })

/** Hashes `password` with a fresh 16-byte salt. */
export const hash = (password: string, iterations: number) =>
  Effect.gen(function*() {
    const salt = crypto.getRandomValues(new Uint8Array(16))
    const derived = yield* derive(password, salt, iterations)
    return { hash: Base64.encode(derived), salt: Base64.encode(salt), iterations } satisfies StoredPassword
  })

/** Whether `password` matches `stored`, compared in constant time. */
export const verify = (password: string, stored: StoredPassword) =>
  Effect.map(derive(password, Result.getOrThrow(Base64.decode(stored.salt)), stored.iterations), (derived) => {
    const expected = Result.getOrThrow(Base64.decode(stored.hash))
    return derived.byteLength === expected.byteLength && crypto.subtle.timingSafeEqual(derived, expected)
  })

const CredentialRow = Schema.Struct({
  hash: Schema.String,
  salt: Schema.String,
  iterations: Schema.Number
})
const decodeRows = Schema.decodeUnknownEffect(Schema.Array(CredentialRow))

/** Stored credentials, by user id, and the work factor for new hashes. */
export class Credentials extends Context.Service<Credentials, {
  readonly iterations: number
  readonly get: (userId: string) => Effect.Effect<Option.Option<StoredPassword>>
  readonly set: (userId: string, password: string) => Effect.Effect<void>
  /**
   * Checks `password` for `userId`. An unknown user costs the same work as a
   * known one (the same query, a hash of a decoy at the current work factor),
   * so timing does not tell which emails exist. A match on a hash made at an
   * older work factor is rehashed at the current one.
   */
  readonly check: (userId: string | undefined, password: string) => Effect.Effect<boolean>
}>()("meshwork/services/auth/Credentials") {
  static readonly layerNoDeps = Layer.effect(
    Credentials,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const iterations = yield* Config.Int("PBKDF2_ITERATIONS").pipe(Config.withDefault(100_000))
      const decoy = yield* hash(crypto.randomUUID(), iterations)
      const get = (userId: string) =>
        sql`SELECT hash, salt, iterations FROM credentials WHERE user_id = ${userId}`.pipe(
          Effect.flatMap(decodeRows),
          Effect.map((rows) => Option.fromNullishOr(rows[0])),
          Effect.orDie
        )
      const set = Effect.fn("Credentials.set")(function*(userId: string, password: string) {
        const stored = yield* hash(password, iterations)
        const at = yield* nowIso
        yield* Effect.orDie(sql`
          INSERT INTO credentials (user_id, hash, salt, iterations, updated_at)
          VALUES (${userId}, ${stored.hash}, ${stored.salt}, ${stored.iterations}, ${at})
          ON CONFLICT (user_id) DO UPDATE SET
            hash = excluded.hash, salt = excluded.salt, iterations = excluded.iterations, updated_at = excluded.updated_at`)
      })
      return Credentials.of({
        iterations,
        get,
        set,
        check: Effect.fn("Credentials.check")(function*(userId, password) {
          const stored = yield* get(userId ?? "")
          const matches = yield* verify(password, Option.getOrElse(stored, () => decoy))
          if (userId === undefined || Option.isNone(stored) || !matches) return false
          if (stored.value.iterations !== iterations) yield* set(userId, password)
          return true
        })
      })
    })
  )

  static readonly layer = Credentials.layerNoDeps.pipe(Layer.provide(AuthDb))
}
