/**
 * API keys for machine clients: issued (shown once), stored as SHA-256
 * hashes in auth's D1, listed, revoked, and verified for the gateway.
 *
 * A key acts as its user, with the roles it was given (at most the user's),
 * under a quota: its plan's (`API_KEY_PLANS`, by name) or its own. Keys are
 * 32 random bytes, so one SHA-256 is a safe store: there is nothing to guess
 * that a slow hash would protect. A user holds at most `API_KEYS_PER_USER`
 * working keys, and revoked or expired keys are purged 30 days on, so the
 * table stays about as large as the keys in use.
 *
 * | var | default | |
 * | --- | --- | --- |
 * | `API_KEY_PLANS` | `{ free = { perMinute = 60, perDay = 10000 } }` | plans by name |
 * | `API_KEY_DEFAULT_PLAN` | `free` | the plan of a key created without one |
 * | `API_KEYS_PER_USER` | `20` | working (not revoked, not expired) keys per user |
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Base64Url from "effect/encoding/Base64Url"
import * as Hex from "effect/encoding/Hex"
import * as SqlClient from "effect/sql/SqlClient"
import { Pagination } from "meshwork"
import { uuidv7 } from "../shared/Ids.ts"
import { noStackTrace } from "../shared/Spans.ts"
import { type ApiKey, apiKeyPattern, InvalidApiKey, type IssuedApiKey, PlanName, Quota, TooManyApiKeys, UnknownPlan } from "./api.ts"
import { AuthDb } from "./db.ts"

export const ApiKeySettings = Config.all({
  plans: Config.schema(Schema.Record(PlanName, Quota), "API_KEY_PLANS").pipe(
    Config.withDefault<Readonly<Record<string, Quota>>>({ free: { perMinute: 60, perDay: 10_000 } })
  ),
  defaultPlan: Config.schema(PlanName, "API_KEY_DEFAULT_PLAN").pipe(Config.withDefault("free")),
  perUser: Config.Int("API_KEYS_PER_USER").pipe(Config.withDefault(20))
})

/** Revoked and expired keys stay listed this long, then go. */
const purgeAfterMillis = 30 * 86_400_000

const KeyRow = Schema.Struct({
  id: Schema.String,
  prefix: Schema.String,
  name: Schema.String,
  user_id: Schema.String,
  roles: Schema.String,
  plan: Schema.String,
  per_minute: Schema.NullOr(Schema.Number),
  per_day: Schema.NullOr(Schema.Number),
  created_at: Schema.Number,
  expires_at: Schema.NullOr(Schema.Number),
  revoked_at: Schema.NullOr(Schema.Number)
})
type KeyRow = typeof KeyRow.Type
const decodeRows = Schema.decodeUnknownEffect(Schema.Array(KeyRow))
const Roles = Schema.fromJsonString(Schema.Array(Schema.Literals(["admin", "user"])))
const decodeRoles = Schema.decodeUnknownSync(Roles)

const sha256 = (text: string) =>
  Effect.promise(() => crypto.subtle.digest("SHA-256", new TextEncoder().encode(text))).pipe(
    Effect.map((digest) => Hex.encode(new Uint8Array(digest)))
  )

const iso = (millis: number | null) => (millis === null ? null : new Date(millis).toISOString())

export interface NewApiKey {
  readonly name: string
  readonly userId: string
  readonly roles: ReadonlyArray<"admin" | "user">
  readonly plan: string | undefined
  readonly perMinute: number | undefined
  readonly perDay: number | undefined
  /** Epoch ms, in the future; `undefined` for a key that does not expire. */
  readonly expiresAt: number | undefined
}

/** A key the store found for its hash, still valid: not revoked, not expired. */
export interface ValidKey {
  readonly id: string
  readonly userId: string
  readonly roles: ReadonlyArray<"admin" | "user">
  readonly quota: Quota
  readonly expiresAt: number | null
}

export class ApiKeys extends Context.Service<ApiKeys, {
  readonly defaultPlan: string
  readonly issue: (key: NewApiKey) => Effect.Effect<IssuedApiKey, UnknownPlan | TooManyApiKeys>
  readonly list: (options: {
    readonly userId: string | undefined
    readonly limit: number
    readonly cursor: string | undefined
  }) => Effect.Effect<{ readonly items: ReadonlyArray<ApiKey>; readonly nextCursor: string | null }, Pagination.InvalidCursor>
  /** The owner of key `id`, if there is such a key. */
  readonly ownerOf: (id: string) => Effect.Effect<Option.Option<string>>
  /** Revokes key `id` (again: nothing changes). */
  readonly revoke: (id: string) => Effect.Effect<void>
  /** The key `key` is, if it is one, not revoked and not expired; else the one InvalidApiKey for all. */
  readonly verify: (key: string) => Effect.Effect<ValidKey, InvalidApiKey>
}>()("meshwork/services/auth/ApiKeys") {
  static readonly layerNoDeps = Layer.effect(
    ApiKeys,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const settings = yield* ApiKeySettings
      const quotaOf = (row: KeyRow): Quota => {
        const plan = settings.plans[row.plan] ?? settings.plans[settings.defaultPlan] ?? { perMinute: 60, perDay: 10_000 }
        return { perMinute: row.per_minute ?? plan.perMinute, perDay: row.per_day ?? plan.perDay }
      }
      const toApi = (row: KeyRow): ApiKey => ({
        id: row.id,
        name: row.name,
        prefix: row.prefix,
        userId: row.user_id,
        roles: decodeRoles(row.roles),
        plan: row.plan,
        quota: quotaOf(row),
        createdAt: new Date(row.created_at).toISOString(),
        expiresAt: iso(row.expires_at),
        revokedAt: iso(row.revoked_at)
      })
      const columns = sql`id, prefix, name, user_id, roles, plan, per_minute, per_day, created_at, expires_at, revoked_at`
      const invalid = () => new InvalidApiKey({ detail: "The API key is not valid" })

      return ApiKeys.of({
        defaultPlan: settings.defaultPlan,
        issue: Effect.fn("ApiKeys.issue")(function*(input) {
          const plan = input.plan ?? settings.defaultPlan
          if (settings.plans[plan] === undefined) return yield* new UnknownPlan({ plan, detail: `Plans: ${Object.keys(settings.plans).join(", ")}` })
          const now = yield* Clock.currentTimeMillis
          yield* Effect.orDie(sql`
            DELETE FROM api_keys WHERE user_id = ${input.userId}
            AND ((revoked_at IS NOT NULL AND revoked_at < ${now - purgeAfterMillis})
              OR (expires_at IS NOT NULL AND expires_at < ${now - purgeAfterMillis}))`)
          const key = `mwk_${Base64Url.encode(crypto.getRandomValues(new Uint8Array(32)))}`
          const id = yield* uuidv7
          const hash = yield* sha256(key)
          const roles = JSON.stringify(input.roles)
          // Counted and inserted in one statement: concurrent creations cannot pass the limit together.
          const inserted = yield* Effect.orDie(sql`
            INSERT INTO api_keys (id, hash, prefix, name, user_id, roles, plan, per_minute, per_day, created_at, expires_at)
            SELECT ${id}, ${hash}, ${key.slice(0, 12)}, ${input.name}, ${input.userId}, ${roles}, ${plan},
              ${input.perMinute ?? null}, ${input.perDay ?? null}, ${now}, ${input.expiresAt ?? null}
            WHERE (SELECT COUNT(*) FROM api_keys WHERE user_id = ${input.userId} AND revoked_at IS NULL
              AND (expires_at IS NULL OR expires_at > ${now})) < ${settings.perUser}
            RETURNING ${columns}`.pipe(Effect.flatMap(decodeRows)))
          const row = inserted[0]
          if (row === undefined) return yield* new TooManyApiKeys({ limit: settings.perUser, detail: "Revoke a key first" })
          return { ...toApi(row), key }
        }),
        list: Effect.fn("ApiKeys.list")(function*({ userId, limit, cursor }) {
          const after = cursor === undefined ? undefined : Pagination.decodeCursor(cursor)
          if (cursor !== undefined && after === undefined) return yield* new Pagination.InvalidCursor()
          const rows = yield* Effect.orDie(sql`
            SELECT ${columns} FROM api_keys
            WHERE ${userId === undefined ? sql`1 = 1` : sql`user_id = ${userId}`}
            AND ${after === undefined ? sql`1 = 1` : sql`id > ${after}`}
            ORDER BY id LIMIT ${limit + 1}`.pipe(Effect.flatMap(decodeRows)))
          return Pagination.toPage(rows.map(toApi), limit)
        }),
        ownerOf: (id) =>
          sql`SELECT user_id FROM api_keys WHERE id = ${id}`.pipe(
            Effect.map((rows) => Option.fromNullishOr(rows[0]?.["user_id"] as string | undefined)),
            Effect.orDie,
            Effect.withSpan("ApiKeys.ownerOf")
          ),
        revoke: (id) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            Effect.orDie(sql`UPDATE api_keys SET revoked_at = ${now} WHERE id = ${id} AND revoked_at IS NULL`)).pipe(
              Effect.asVoid,
              Effect.withSpan("ApiKeys.revoke")
            ),
        verify: (key) =>
          Effect.gen(function*() {
            if (!apiKeyPattern.test(key)) return yield* invalid()
            const rows = yield* Effect.orDie(sql`SELECT ${columns} FROM api_keys WHERE hash = ${yield* sha256(key)}`.pipe(
              Effect.flatMap(decodeRows)
            ))
            const row = rows[0]
            const now = yield* Clock.currentTimeMillis
            if (row === undefined || row.revoked_at !== null || (row.expires_at !== null && row.expires_at <= now)) return yield* invalid()
            return { id: row.id, userId: row.user_id, roles: decodeRoles(row.roles), quota: quotaOf(row), expiresAt: row.expires_at }
          }).pipe(Effect.withSpan("ApiKeys.verify", undefined, noStackTrace))
      })
    })
  )

  static readonly layer = ApiKeys.layerNoDeps.pipe(Layer.provide(AuthDb))
}
