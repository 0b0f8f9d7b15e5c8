/**
 * Forgetting deleted users. The users service queues `UserDeleted` before it
 * deletes a user (the queue `meshwork-user-deletions`); this Worker consumes
 * it and deletes the user's credentials, refresh tokens and API keys, in one D1 batch.
 *
 * It acts only once users no longer has the user: a message can arrive before
 * the deletion is committed, or for a deletion that then failed. Until then
 * the message is retried (with backoff, `max_retries` in wrangler.toml), and
 * dropped after that, the credentials kept with the user they belong to.
 * Deleting is idempotent, so a redelivered message changes nothing.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as SqlClient from "effect/sql/SqlClient"
import { D1, Problem, Queues } from "meshwork"
import { UserDeleted, userDeletionsQueue } from "../users/api.ts"
import { Accounts } from "./Accounts.ts"
import { AuthDb } from "./db.ts"

/** The user is still there: its deletion is not committed yet, or failed. Retried. */
export class UserStillExists extends Schema.TaggedError<UserStillExists>()("meshwork/services/auth/UserStillExists", {
  userId: Schema.String
}) {}

export class Deletions extends Context.Service<Deletions, {
  /** Deletes `userId`'s credentials and refresh tokens, once users no longer has it. */
  readonly forget: (userId: string) => Effect.Effect<void, UserStillExists | Problem.BadGateway>
}>()("meshwork/services/auth/Deletions") {
  static readonly layer = Layer.effect(
    Deletions,
    Effect.gen(function*() {
      const accounts = yield* Accounts
      const sql = yield* SqlClient.SqlClient
      const d1 = yield* D1.D1Batch
      return Deletions.of({
        forget: Effect.fn("Deletions.forget")(function*(userId) {
          if (Option.isSome(yield* accounts.byId(userId))) return yield* new UserStillExists({ userId })
          yield* Effect.orDie(d1.batch([
            sql`DELETE FROM credentials WHERE user_id = ${userId}`,
            sql`DELETE FROM refresh_tokens WHERE user_id = ${userId}`,
            sql`DELETE FROM api_keys WHERE user_id = ${userId}`
          ]))
        })
      })
    })
  ).pipe(Layer.provide(AuthDb))
}

/** The auth Worker's consumer of the users service's deletions. */
export const deletionsConsumer = Queues.consumer({
  name: userDeletionsQueue,
  body: UserDeleted,
  handle: (deleted) => Deletions.use((deletions) => deletions.forget(deleted.userId))
})
