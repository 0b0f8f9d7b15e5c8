/**
 * Tokens: short-lived ES256 access tokens (RFC 9068 `at+jwt`) and rotating,
 * opaque refresh tokens.
 *
 * Signing keys come from the secret `AUTH_SIGNING_KEYS`, a key set
 * `{ "active": kid, "keys": [private ES256 JWKs] }` managed with
 * `npm run keys`: the active key signs, every key in the set is published in
 * the JWKS and so still verifies; retiring a key removes it from the set.
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
import { Identity } from "meshwork"
import { uuidv7 } from "../shared/Ids.ts"
import type { Jwks } from "./api.ts"
import { InvalidRefreshToken } from "./api.ts"
import { AuthDb } from "./db.ts"

export const PrivateJwk = Schema.Struct({
  kty: Schema.Literal("EC"),
  crv: Schema.Literal("P-256"),
  x: Schema.String,
  y: Schema.String,
  d: Schema.String,
  kid: Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_-]{1,64}$/)),
  alg: Schema.Literal("ES256")
})
export type PrivateJwk = typeof PrivateJwk.Type

export const KeySet = Schema.Struct({
  active: Schema.String,
  keys: Schema.NonEmptyArray(PrivateJwk)
}).check(Schema.makeFilter((set) => set.keys.some((key) => key.kid === set.active), {
  expected: "a key set whose active kid is one of its keys"
}))
export type KeySet = typeof KeySet.Type

/** The issuer and audience every access token carries, and its lifetime. */
export const TokenSettings = Config.all({
  issuer: Config.String("AUTH_ISSUER").pipe(Config.withDefault("meshwork-auth")),
  audience: Config.String("AUTH_AUDIENCE").pipe(Config.withDefault("meshwork-api")),
  accessTtlSeconds: Config.Int("ACCESS_TOKEN_TTL_SECONDS").pipe(Config.withDefault(300)),
  refreshTtlSeconds: Config.Int("REFRESH_TOKEN_TTL_SECONDS").pipe(Config.withDefault(14 * 24 * 3600))
})

export interface TokenSubject {
  readonly id: string
  readonly role: string
}

/** Signs access tokens with the active key; publishes the public half of every key. */
export class AccessTokens extends Context.Service<AccessTokens, {
  readonly ttlSeconds: number
  readonly activeKid: string
  readonly jwks: Jwks
  readonly issue: (subject: TokenSubject) => Effect.Effect<string>
}>()("meshwork/services/auth/AccessTokens") {
  static readonly layer = Layer.effect(
    AccessTokens,
    Effect.gen(function*() {
      const settings = yield* TokenSettings
      const keySet = yield* Config.schema(Schema.fromJsonString(KeySet), "AUTH_SIGNING_KEYS")
      const active = keySet.keys.find((key) => key.kid === keySet.active)!
      // Signed on WebCrypto alone, as the mesh signs its identity assertions: no JWT library in this bundle.
      const privateKey = yield* Effect.promise(() => Identity.importSigningKey(active))
      const jwks: Jwks = {
        keys: keySet.keys.map(({ kty, crv, x, y, kid, alg }) => ({ kty, crv, x, y, kid, alg, use: "sig" as const }))
      }
      return AccessTokens.of({
        ttlSeconds: settings.accessTtlSeconds,
        activeKid: active.kid,
        jwks,
        issue: Effect.fn("AccessTokens.issue")(function*(subject) {
          const now = Math.floor((yield* Clock.currentTimeMillis) / 1000)
          const jti = yield* uuidv7
          return yield* Effect.promise(() =>
            Identity.signJws(privateKey, active.kid, {
              roles: [subject.role],
              iss: settings.issuer,
              aud: settings.audience,
              sub: subject.id,
              iat: now,
              exp: now + settings.accessTtlSeconds,
              jti
            }, "at+jwt")
          )
        })
      })
    })
  )
}

const sha256 = (text: string) =>
  Effect.promise(async () => Hex.encode(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)))))

const randomToken = (): string => Base64Url.encode(crypto.getRandomValues(new Uint8Array(32)))

const TokenRow = Schema.Struct({
  family_id: Schema.String,
  user_id: Schema.String,
  expires_at: Schema.Number,
  used_at: Schema.NullOr(Schema.Number),
  revoked_at: Schema.NullOr(Schema.Number)
})
const decodeRows = Schema.decodeUnknownEffect(Schema.Array(TokenRow))

/**
 * Refresh tokens, stored only as SHA-256 hashes. A login starts a family; a
 * refresh uses its token (exactly once, even under concurrency) and issues
 * the next in the family. Presenting a used token again is taken as theft:
 * the whole family is revoked, the thief's copy and the owner's alike. A
 * family with any revoked token is dead: no token of it is claimed and no new
 * one is issued into it, whatever the order of concurrent requests.
 */
export class RefreshTokens extends Context.Service<RefreshTokens, {
  /** A new token for `userId`, in a new family, or in `familyId` unless that family is revoked. */
  readonly issue: (userId: string, familyId?: string) => Effect.Effect<string, InvalidRefreshToken>
  /**
   * Uses `token`. `owner` looks up the token's user first (the account, if it
   * is still active), before anything is claimed, so a failure there leaves
   * the token usable for a retry. Answers the owner and the family, or
   * InvalidRefreshToken (revoking the family on reuse or an inactive owner).
   */
  readonly use: <A, E>(
    token: string,
    owner: (userId: string) => Effect.Effect<Option.Option<A>, E>
  ) => Effect.Effect<{ readonly owner: A; readonly familyId: string }, InvalidRefreshToken | E>
  /** Revokes the family `token` belongs to; unknown tokens are ignored. */
  readonly revokeFamily: (token: string) => Effect.Effect<void>
  /** Revokes every family of `userId` (after a password change). */
  readonly revokeUser: (userId: string) => Effect.Effect<void>
}>()("meshwork/services/auth/RefreshTokens") {
  static readonly layerNoDeps = Layer.effect(
    RefreshTokens,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const settings = yield* TokenSettings
      const find = (id: string) =>
        sql`SELECT family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE id = ${id}`.pipe(
          Effect.flatMap(decodeRows),
          Effect.map((rows) => rows[0]),
          Effect.orDie
        )
      const revoke = (column: "family_id" | "user_id", value: string) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.orDie(sql`
            UPDATE refresh_tokens SET revoked_at = ${now}
            WHERE ${sql(column)} = ${value} AND revoked_at IS NULL`)).pipe(Effect.asVoid)
      const invalid = (detail: string) => new InvalidRefreshToken({ detail })
      const reused = (familyId: string) =>
        Effect.andThen(revoke("family_id", familyId), invalid("The refresh token was already used; its family is revoked"))
      const familyAlive = (familyId: string) => sql`
        NOT EXISTS (SELECT 1 FROM refresh_tokens f WHERE f.family_id = ${familyId} AND f.revoked_at IS NOT NULL)`

      return RefreshTokens.of({
        issue: Effect.fn("RefreshTokens.issue")(function*(userId, familyId) {
          const token = randomToken()
          const id = yield* sha256(token)
          const now = yield* Clock.currentTimeMillis
          const family = familyId ?? (yield* uuidv7)
          // Into an existing family only while none of its tokens is revoked.
          const inserted = yield* Effect.orDie(sql`
            INSERT INTO refresh_tokens (id, family_id, user_id, created_at, expires_at)
            SELECT ${id}, ${family}, ${userId}, ${now}, ${now + settings.refreshTtlSeconds * 1000}
            WHERE ${familyAlive(family)}
            RETURNING id`)
          if (inserted.length === 0) return yield* invalid("The refresh token's family was revoked")
          return token
        }),
        use: (token, owner) =>
          Effect.gen(function*() {
            const id = yield* sha256(token)
            const row = yield* find(id)
            if (row === undefined) return yield* invalid("Unknown refresh token")
            if (row.used_at !== null || row.revoked_at !== null) return yield* reused(row.family_id)
            if (row.expires_at <= (yield* Clock.currentTimeMillis)) return yield* invalid("The refresh token has expired")
            const account = yield* owner(row.user_id)
            if (Option.isNone(account)) {
              yield* revoke("family_id", row.family_id)
              return yield* invalid("The account is no longer active")
            }
            // Compare-and-set, last: of two concurrent refreshes with one token,
            // at most one wins, and none once the family is revoked.
            const now = yield* Clock.currentTimeMillis
            const claimed = yield* Effect.orDie(sql`
              UPDATE refresh_tokens SET used_at = ${now}
              WHERE id = ${id} AND used_at IS NULL AND revoked_at IS NULL AND ${familyAlive(row.family_id)}
              RETURNING id`)
            if (claimed.length === 0) return yield* reused(row.family_id)
            return { owner: account.value, familyId: row.family_id }
          }).pipe(Effect.withSpan("RefreshTokens.use")),
        revokeFamily: Effect.fn("RefreshTokens.revokeFamily")(function*(token) {
          const row = yield* find(yield* sha256(token))
          if (row !== undefined) yield* revoke("family_id", row.family_id)
        }),
        revokeUser: (userId) => revoke("user_id", userId).pipe(Effect.withSpan("RefreshTokens.revokeUser"))
      })
    })
  )

  static readonly layer = RefreshTokens.layerNoDeps.pipe(Layer.provide(AuthDb))
}
