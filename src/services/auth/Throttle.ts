/**
 * Throttling of password guesses, per account and per account and client,
 * with progressive backoff, in the auth service's D1 (shared by every isolate).
 *
 * - An *account* is what the guesser names: the normalised email at login
 *   (known or not, so a 429 says nothing about whether an account exists),
 *   the user id when a signed-in user re-enters its password.
 * - A *client* is the caller's address bucket (`rateLimitKey`: IPv6 by /64).
 * - Every attempt is counted before the password is checked, in one atomic
 *   statement per counter, so a parallel burst cannot slip between a read and
 *   a write. After `free` attempts, each further one blocks the counter for
 *   1 s, doubling up to its cap; attempts while blocked are refused unchecked
 *   (a right password too) and not counted. A counter is forgotten
 *   `LOGIN_FAILURE_WINDOW_SECONDS` after its last attempt.
 * - A success clears the account and client counter, takes its own attempt
 *   back from the account counter, and marks the client *known* for the
 *   account (`LOGIN_KNOWN_CLIENT_SECONDS`). The account counter (softer,
 *   capped short) neither blocks nor counts known clients: an attacker
 *   rotating addresses cannot lock the real user out of where it usually
 *   signs in, and from the user's own address it meets the per-client counter.
 *
 * Keys are SHA-256 of their parts, so no email or address is stored in the
 * clear. Rows expire and are deleted a few at a time as attempts come in: the
 * tables hold about what the last window's attempts touched.
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Hex from "effect/encoding/Hex"
import * as SqlClient from "effect/sql/SqlClient"
import { TooManyAttempts } from "./api.ts"
import { AuthDb } from "./db.ts"

/** Progressive backoff for one counter. */
export interface Backoff {
  /** Attempts before the first block. */
  readonly free: number
  /** The first block; each further attempt doubles it. */
  readonly baseMillis: number
  readonly maxBlockMillis: number
  /** The counter is forgotten this long after its last attempt. */
  readonly windowMillis: number
}

/** Self-service email changes per user: 5, then 1 min doubling to 1 h, forgotten after a quiet day. */
export const emailChangeBackoff: Backoff = {
  free: 5,
  baseMillis: 60_000,
  maxBlockMillis: 3_600_000,
  windowMillis: 86_400_000
}

export const ThrottleSettings = Config.all({
  clientFree: Config.Int("LOGIN_CLIENT_FREE_FAILURES").pipe(Config.withDefault(5)),
  clientMaxBlockSeconds: Config.Int("LOGIN_CLIENT_MAX_BLOCK_SECONDS").pipe(Config.withDefault(900)),
  accountFree: Config.Int("LOGIN_ACCOUNT_FREE_FAILURES").pipe(Config.withDefault(20)),
  accountMaxBlockSeconds: Config.Int("LOGIN_ACCOUNT_MAX_BLOCK_SECONDS").pipe(Config.withDefault(300)),
  windowSeconds: Config.Int("LOGIN_FAILURE_WINDOW_SECONDS").pipe(Config.withDefault(3600)),
  knownClientSeconds: Config.Int("LOGIN_KNOWN_CLIENT_SECONDS").pipe(Config.withDefault(30 * 86_400))
})

const hashKey = (...parts: ReadonlyArray<string>) =>
  Effect.promise(async () =>
    Hex.encode(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(parts.join("\u0000")))))
  )

const StateRow = Schema.Struct({
  account_until: Schema.NullOr(Schema.Number),
  client_until: Schema.NullOr(Schema.Number),
  known: Schema.Number
})
const decodeState = Schema.decodeUnknownEffect(Schema.Array(StateRow))

/** Expired rows deleted per attempt: more than an attempt adds, so the tables shrink back. */
const sweepBatch = 20

export class Throttle extends Context.Service<Throttle, {
  /**
   * Runs `attempt` (a password check: `Some` on success) for `account` from
   * `client`, or refuses with 429 while either counter blocks. A success also
   * marks the client known for `alsoKnownAs(value)` (a login's user id).
   */
  readonly guard: <A, E, R>(options: {
    readonly account: string
    readonly client: string
    readonly attempt: Effect.Effect<Option.Option<A>, E, R>
    readonly alsoKnownAs?: (value: A) => ReadonlyArray<string>
  }) => Effect.Effect<Option.Option<A>, E | TooManyAttempts, R>
  /** Counts one action for `key` under `backoff`, successful or not; 429 while blocked. */
  readonly limit: (key: string, backoff: Backoff) => Effect.Effect<void, TooManyAttempts>
}>()("meshwork/services/auth/Throttle") {
  static readonly layerNoDeps = Layer.effect(
    Throttle,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const settings = yield* ThrottleSettings
      const windowMillis = settings.windowSeconds * 1000
      const client: Backoff = { free: settings.clientFree, baseMillis: 1000, maxBlockMillis: settings.clientMaxBlockSeconds * 1000, windowMillis }
      const account: Backoff = { free: settings.accountFree, baseMillis: 1000, maxBlockMillis: settings.accountMaxBlockSeconds * 1000, windowMillis }

      /** Counts one attempt unless the counter is blocked: whether it was counted. */
      const consume = (key: string, backoff: Backoff, now: number) =>
        Effect.map(
          Effect.orDie(sql`
            INSERT INTO attempt_counters (key, attempts, blocked_until, expires_at)
            SELECT ${key}, n, CASE WHEN block > 0 THEN ${now} + block ELSE 0 END, ${now} + MAX(${backoff.windowMillis}, block)
            FROM (
              SELECT n, CASE WHEN n >= ${backoff.free}
                THEN MIN(${backoff.maxBlockMillis}, ${backoff.baseMillis} << MIN(n - ${backoff.free}, 30)) ELSE 0 END AS block
              FROM (SELECT 1 + COALESCE(
                (SELECT attempts FROM attempt_counters WHERE key = ${key} AND expires_at > ${now}), 0) AS n)
            )
            WHERE NOT EXISTS (SELECT 1 FROM attempt_counters WHERE key = ${key} AND blocked_until > ${now})
            ON CONFLICT (key) DO UPDATE SET
              attempts = excluded.attempts, blocked_until = excluded.blocked_until, expires_at = excluded.expires_at
            RETURNING attempts`),
          (rows) => rows.length > 0
        )

      const blockedUntil = (key: string) =>
        Effect.map(
          Effect.orDie(sql<{ blocked_until: number }>`SELECT blocked_until FROM attempt_counters WHERE key = ${key}`),
          (rows) => rows[0]?.blocked_until ?? 0
        )

      const refuse = (until: number, now: number) =>
        Effect.fail(
          new TooManyAttempts({
            detail: "Too many attempts; try again later",
            retryAfterSeconds: Math.max(1, Math.ceil((until - now) / 1000))
          })
        )

      const sweep = (now: number) =>
        Effect.orDie(sql`
          DELETE FROM attempt_counters WHERE key IN (
            SELECT key FROM attempt_counters WHERE expires_at <= ${now} LIMIT ${sweepBatch})`)

      const succeeded = (accountKey: string, clientKey: string, known: boolean, knownKeys: ReadonlyArray<string>, now: number) =>
        Effect.orDie(Effect.gen(function*() {
          yield* sql`DELETE FROM attempt_counters WHERE key = ${clientKey}`
          // The success takes its own attempt back; below `free`, the block it may have set goes too.
          if (!known) {
            yield* sql`
              UPDATE attempt_counters SET
                attempts = MAX(0, attempts - 1),
                blocked_until = CASE WHEN attempts - 1 < ${account.free} THEN 0 ELSE blocked_until END
              WHERE key = ${accountKey}`
          }
          for (const key of knownKeys) {
            yield* sql`
              INSERT INTO known_clients (key, expires_at) VALUES (${key}, ${now + settings.knownClientSeconds * 1000})
              ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at`
          }
          yield* sql`
            DELETE FROM known_clients WHERE key IN (
              SELECT key FROM known_clients WHERE expires_at <= ${now} LIMIT ${sweepBatch})`
        }))

      return Throttle.of({
        guard: (options) =>
          Effect.gen(function*() {
            const now = yield* Clock.currentTimeMillis
            const accountKey = yield* hashKey("account", options.account)
            const clientKey = yield* hashKey("client", options.account, options.client)
            const rows = yield* Effect.orDie(Effect.flatMap(
              sql`
                SELECT
                  (SELECT blocked_until FROM attempt_counters WHERE key = ${accountKey}) AS account_until,
                  (SELECT blocked_until FROM attempt_counters WHERE key = ${clientKey}) AS client_until,
                  EXISTS (SELECT 1 FROM known_clients WHERE key = ${clientKey} AND expires_at > ${now}) AS known`,
              decodeState
            ))
            const state = rows[0]!
            const known = state.known === 1
            const until = Math.max(state.client_until ?? 0, known ? 0 : state.account_until ?? 0)
            if (until > now) return yield* refuse(until, now)
            // Counted before the check; a concurrent attempt may have blocked a counter since the read.
            if (!(yield* consume(clientKey, client, now))) return yield* refuse(yield* blockedUntil(clientKey), now)
            if (!known && !(yield* consume(accountKey, account, now))) {
              return yield* refuse(yield* blockedUntil(accountKey), now)
            }
            const result = yield* options.attempt
            yield* sweep(now)
            if (Option.isNone(result)) return result
            const others = options.alsoKnownAs?.(result.value) ?? []
            const knownKeys = [clientKey, ...(yield* Effect.forEach(others, (other) => hashKey("client", other, options.client)))]
            yield* succeeded(accountKey, clientKey, known, knownKeys, now)
            return result
          }).pipe(Effect.withSpan("Throttle.guard")),
        limit: Effect.fn("Throttle.limit")(function*(key, backoff) {
          const now = yield* Clock.currentTimeMillis
          const hashed = yield* hashKey("limit", key)
          if (!(yield* consume(hashed, backoff, now))) return yield* refuse(yield* blockedUntil(hashed), now)
          yield* sweep(now)
        })
      })
    })
  )

  static readonly layer = Throttle.layerNoDeps.pipe(Layer.provide(AuthDb))
}
