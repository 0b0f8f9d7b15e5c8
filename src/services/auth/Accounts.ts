/**
 * The auth service's view of users, through the users service's typed client:
 * who has an email, and whether they are still active; and a user's own
 * email change, once auth has checked its password. Any failure to ask is
 * a 502 naming the users service, never a silent pass.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { Identity, Problem } from "meshwork"
import type { User } from "../users/api.ts"
import { UsersClient } from "../users/client.ts"

export class Accounts extends Context.Service<Accounts, {
  readonly byEmail: (email: string) => Effect.Effect<Option.Option<User>, Problem.BadGateway>
  readonly byId: (id: string) => Effect.Effect<Option.Option<User>, Problem.BadGateway>
  /**
   * Sets the email of `id` (users lets the auth Worker change an email and
   * nothing else). Whether it changed (the address was free) or not (taken,
   * or the user is gone) is deliberately not told: the caller answers alike.
   */
  readonly changeEmail: (id: string, email: string) => Effect.Effect<void, Problem.BadGateway>
}>()("meshwork/services/auth/Accounts") {
  static readonly layer = Layer.effect(
    Accounts,
    UsersClient.useSync((client) => {
      const unavailable = () => Effect.fail(new Problem.BadGateway({ service: "users" }))
      const failures = {
        HttpClientError: unavailable,
        SchemaError: unavailable,
        BadRequestProblem: unavailable,
        InternalServerErrorProblem: unavailable,
        Unauthorized: unavailable,
        Forbidden: unavailable
      } as const
      return Accounts.of({
        byEmail: (email) =>
          client.users.list({ query: { email, limit: 1 } }).pipe(
            Effect.map((page) => Option.fromNullishOr(page.items[0])),
            Effect.catchTags({ ...failures, InvalidCursor: unavailable })
          ),
        byId: (id) =>
          client.users.get({ params: { id } }).pipe(
            Effect.map(Option.some),
            Effect.catchTags({ ...failures, UserNotFound: () => Effect.succeedNone })
          ),
        changeEmail: (id, email) =>
          client.users.update({ params: { id }, payload: { email } }).pipe(
            Effect.asVoid,
            Effect.catchTags({ ...failures, EmailTaken: () => Effect.void, UserNotFound: () => Effect.void })
          )
      })
    })
  ).pipe(Layer.provide(UsersClient.layer), Layer.provide(Identity.MeshIdentity.layerClient("users")))
}
