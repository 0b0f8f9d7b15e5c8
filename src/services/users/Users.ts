/**
 * The users store: D1 through `effect/sql`. SQL failures are defects (the
 * caller cannot act on them); a duplicate email is the typed `EmailTaken`.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type { SqlError } from "effect/sql"
import * as SqlClient from "effect/sql/SqlClient"
import { D1 } from "meshwork"
import { uuidv7 } from "../shared/Ids.ts"
import { decodeRows, first, nowIso } from "../shared/Rows.ts"
import { noStackTrace } from "../shared/Spans.ts"
import type { CreateUser, UpdateUser, User } from "./api.ts"
import { EmailTaken, Role, UserNotFound } from "./api.ts"

const UserRow = Schema.Struct({
  id: Schema.String,
  email: Schema.String,
  name: Schema.String,
  role: Role,
  active: Schema.Literals([0, 1]),
  created_at: Schema.String,
  updated_at: Schema.String
})

const users = decodeRows(UserRow, (row): User => ({
  id: row.id,
  email: row.email,
  name: row.name,
  role: row.role,
  active: row.active === 1,
  createdAt: row.created_at,
  updatedAt: row.updated_at
}))

const emailTaken = (email: string) => (error: SqlError.SqlError) =>
  error.reason._tag === "UniqueViolation" ? Effect.fail(new EmailTaken({ email })) : Effect.die(error)

export class Users extends Context.Service<Users, {
  readonly list: (
    page: { readonly limit: number; readonly afterId: string | undefined; readonly email?: string | undefined }
  ) => Effect.Effect<ReadonlyArray<User>>
  readonly get: (id: string) => Effect.Effect<User, UserNotFound>
  readonly create: (input: CreateUser) => Effect.Effect<User, EmailTaken>
  readonly update: (id: string, patch: UpdateUser) => Effect.Effect<User, UserNotFound | EmailTaken>
  readonly remove: (id: string) => Effect.Effect<void, UserNotFound>
}>()("meshwork/services/users/Users") {
  static readonly layerNoDeps = Layer.effect(
    Users,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const notFound = (id: string) => () => new UserNotFound({ userId: id })

      return Users.of({
        list: ({ limit, afterId, email }) =>
          users(sql`
            SELECT * FROM users
            WHERE id > ${afterId ?? ""} ${email === undefined ? sql`` : sql`AND email = ${email.toLowerCase()}`}
            ORDER BY id LIMIT ${limit}`).pipe(
            Effect.orDie,
            Effect.withSpan("Users.list", undefined, noStackTrace)
          ),
        get: (id) =>
          users(sql`SELECT * FROM users WHERE id = ${id}`).pipe(
            Effect.orDie,
            Effect.flatMap(first(notFound(id))),
            Effect.withSpan("Users.get", undefined, noStackTrace)
          ),
        create: Effect.fn("Users.create")(function*(input) {
          const id = yield* uuidv7
          const at = yield* nowIso
          const email = input.email.toLowerCase()
          const created = yield* users(sql`
            INSERT INTO users (id, email, name, role, active, created_at, updated_at)
            VALUES (${id}, ${email}, ${input.name}, ${input.role ?? "user"}, ${input.active === false ? 0 : 1}, ${at}, ${at})
            RETURNING *`).pipe(Effect.catchTag("SqlError", emailTaken(email)))
          return yield* Effect.orDie(first(notFound(id))(created))
        }),
        update: Effect.fn("Users.update")(function*(id, patch) {
          const at = yield* nowIso
          const email = patch.email?.toLowerCase() ?? null
          const active = patch.active === undefined ? null : patch.active ? 1 : 0
          const updated = yield* users(sql`
            UPDATE users SET
              email = COALESCE(${email}, email),
              name = COALESCE(${patch.name ?? null}, name),
              role = COALESCE(${patch.role ?? null}, role),
              active = COALESCE(${active}, active),
              updated_at = ${at}
            WHERE id = ${id}
            RETURNING *`).pipe(Effect.catchTag("SqlError", emailTaken(email ?? "")))
          return yield* first(notFound(id))(updated)
        }),
        remove: Effect.fn("Users.remove")(function*(id) {
          const removed = yield* Effect.orDie(sql`DELETE FROM users WHERE id = ${id} RETURNING id`)
          if (removed.length === 0) return yield* new UserNotFound({ userId: id })
        })
      })
    })
  )

  static readonly layer = Users.layerNoDeps.pipe(Layer.provide(D1.layer("USERS_DB")))
}
