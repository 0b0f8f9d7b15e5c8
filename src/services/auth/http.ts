/** The auth API's handlers, and the routes a Worker serves. */
import { Effect, Layer, Option } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { Health, Identity } from "meshwork"
import { Accounts } from "./Accounts.ts"
import { AuthApi, InvalidCredentials } from "./api.ts"
import type { TokenResponse } from "./api.ts"
import { Credentials } from "./Passwords.ts"
import { AccessTokens, RefreshTokens } from "./Tokens.ts"

const AuthHandlers = HttpApiBuilder.group(
  AuthApi,
  "auth",
  Effect.fn(function*(handlers) {
    const accounts = yield* Accounts
    const credentials = yield* Credentials
    const access = yield* AccessTokens
    const refresh = yield* RefreshTokens

    const tokens = (user: { readonly id: string; readonly role: string }, familyId?: string) =>
      Effect.all({
        access_token: access.issue(user),
        refresh_token: refresh.issue(user.id, familyId)
      }).pipe(Effect.map((pair): TokenResponse => ({ ...pair, token_type: "Bearer", expires_in: access.ttlSeconds })))

    return handlers
      .handle("login", Effect.fnUntraced(function*({ payload }) {
        const user = Option.getOrUndefined(yield* accounts.byEmail(payload.email))
        // The password is checked even for an unknown email, so both take the same time.
        const matches = yield* credentials.check(user?.id, payload.password)
        if (user === undefined || !matches || !user.active) return yield* new InvalidCredentials()
        // A new family cannot have been revoked.
        return yield* Effect.orDie(tokens(user))
      }))
      .handle("refresh", Effect.fnUntraced(function*({ payload }) {
        const { owner, familyId } = yield* refresh.use(payload.refresh_token, (id) =>
          Effect.map(accounts.byId(id), Option.filter((user) => user.active)))
        return yield* tokens(owner, familyId)
      }))
      .handle("logout", ({ payload }) => refresh.revokeFamily(payload.refresh_token))
      .handle("jwks", () => Effect.succeed(access.jwks))
      .handle("setPassword", Effect.fnUntraced(function*({ params, payload }) {
        const identity = yield* Identity.authorize(
          (identity) => Identity.hasRole(identity, "admin") || Identity.isUser(identity, params.id),
          "A user may only set its own password"
        )
        if (Identity.isUser(identity, params.id)) {
          const current = payload.current_password
          if (current === undefined || !(yield* credentials.check(params.id, current))) {
            return yield* new InvalidCredentials({ detail: "The current password is required and must match" })
          }
        }
        yield* credentials.set(params.id, payload.password)
        // Sessions started with the old password end with it.
        yield* refresh.revokeUser(params.id)
      }))
  })
)

const HealthHandlers = HttpApiBuilder.group(AuthApi, "health", (handlers) => handlers.handle("health", Health.healthy("auth")))

export const AuthRoutes = HttpApiBuilder.layer(AuthApi).pipe(
  Layer.provide([AuthHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), Identity.MeshIdentity.layer])
)
