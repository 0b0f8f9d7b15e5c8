/** The auth API's handlers, and the routes a Worker serves. */
import { Effect, Layer, Option } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { authorize, hasRole, isUser, MeshIdentity } from "../../layers/Identity.ts"
import { healthy } from "../shared/Health.ts"
import { Accounts } from "./Accounts.ts"
import { AuthApi, InvalidCredentials, InvalidRefreshToken } from "./api.ts"
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
        return yield* tokens(user)
      }))
      .handle("refresh", Effect.fnUntraced(function*({ payload }) {
        const { userId, familyId } = yield* refresh.use(payload.refresh_token)
        const user = Option.getOrUndefined(yield* accounts.byId(userId))
        if (user === undefined || !user.active) {
          yield* refresh.revokeFamilyById(familyId)
          return yield* new InvalidRefreshToken({ detail: "The account is no longer active" })
        }
        return yield* tokens(user, familyId)
      }))
      .handle("logout", ({ payload }) => refresh.revokeFamily(payload.refresh_token))
      .handle("jwks", () => Effect.succeed(access.jwks))
      .handle("setPassword", ({ params, payload }) =>
        Effect.andThen(
          authorize(
            (identity) => hasRole(identity, "admin") || isUser(identity, params.id),
            "A user may only set its own password"
          ),
          credentials.set(params.id, payload.password)
        ))
  })
)

const HealthHandlers = HttpApiBuilder.group(AuthApi, "health", (handlers) => handlers.handle("health", healthy("auth")))

export const AuthRoutes = HttpApiBuilder.layer(AuthApi).pipe(
  Layer.provide([AuthHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), MeshIdentity.layer])
)
