/** The auth API's handlers, and the routes a Worker serves. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import type { HttpServerRequest } from "effect/http"
import { Health, Identity, rateLimitKey } from "meshwork"
import { Accounts } from "./Accounts.ts"
import { UserNotFound } from "../users/api.ts"
import { AuthApi, InvalidCredentials } from "./api.ts"
import type { TokenResponse } from "./api.ts"
import { KeyHandlers } from "./keys.ts"
import { Credentials } from "./Passwords.ts"
import { emailChangeBackoff, Throttle } from "./Throttle.ts"
import { AccessTokens, RefreshTokens } from "./Tokens.ts"

/**
 * The client a password guess is counted for: its address bucket, keyed as
 * the gateway's rate limits key it (IPv6 by /64). The gateway forwards the
 * edge's `CF-Connecting-IP`; internal Workers are reachable only through it.
 */
const clientOf = (request: HttpServerRequest.HttpServerRequest): string => {
  const address = request.headers["cf-connecting-ip"]
  return rateLimitKey({ kind: "anonymous" }, { headers: new Headers(address === undefined ? {} : { "cf-connecting-ip": address }) })
}

const AuthHandlers = HttpApiBuilder.group(
  AuthApi,
  "auth",
  Effect.fn(function*(handlers) {
    const accounts = yield* Accounts
    const credentials = yield* Credentials
    const access = yield* AccessTokens
    const refresh = yield* RefreshTokens
    const throttle = yield* Throttle

    /** A signed-in user re-entering its password: throttled like a login, per user id. */
    const reauthenticate = (userId: string, password: string | undefined, request: HttpServerRequest.HttpServerRequest) =>
      Effect.flatMap(
        throttle.guard({
          account: `user:${userId}`,
          client: clientOf(request),
          attempt: password === undefined
            ? Effect.succeedNone
            : Effect.map(credentials.check(userId, password), (matches) => (matches ? Option.some(true) : Option.none()))
        }),
        (verified) =>
          Option.isSome(verified)
            ? Effect.void
            : Effect.fail(new InvalidCredentials({ detail: "The current password is required and must match" }))
      )

    const tokens = (user: { readonly id: string; readonly role: string }, familyId?: string) =>
      Effect.all({
        access_token: access.issue(user),
        refresh_token: refresh.issue(user.id, familyId)
      }).pipe(Effect.map((pair): TokenResponse => ({ ...pair, token_type: "Bearer", expires_in: access.ttlSeconds })))

    return handlers
      .handle("login", Effect.fnUntraced(function*({ payload, request }) {
        // Throttled by the email as given (normalised), whether or not anyone has it.
        const user = yield* throttle.guard({
          account: `email:${payload.email.toLowerCase()}`,
          client: clientOf(request),
          attempt: Effect.gen(function*() {
            const user = Option.getOrUndefined(yield* accounts.byEmail(payload.email))
            // The password is checked even for an unknown email, so both take the same time.
            const matches = yield* credentials.check(user?.id, payload.password)
            return user !== undefined && matches && user.active ? Option.some(user) : Option.none()
          }),
          alsoKnownAs: (user) => [`user:${user.id}`]
        })
        if (Option.isNone(user)) return yield* new InvalidCredentials()
        // A new family cannot have been revoked.
        return yield* Effect.orDie(tokens(user.value))
      }))
      .handle("refresh", Effect.fnUntraced(function*({ payload }) {
        const { owner, familyId } = yield* refresh.use(payload.refresh_token, (id) =>
          Effect.map(accounts.byId(id), Option.filter((user) => user.active)))
        return yield* tokens(owner, familyId)
      }))
      .handle("logout", ({ payload }) => refresh.revokeFamily(payload.refresh_token))
      .handle("jwks", () => Effect.succeed(access.jwks))
      .handle("setPassword", Effect.fnUntraced(function*({ params, payload, request }) {
        const identity = yield* Identity.authorize(
          (identity) => Identity.hasRole(identity, "admin") || Identity.isUser(identity, params.id),
          "A user may only set its own password"
        )
        if (Identity.isUser(identity, params.id)) yield* reauthenticate(params.id, payload.current_password, request)
        // A credential only for a user that exists: no orphan for an id users does not know.
        if (Option.isNone(yield* accounts.byId(params.id))) return yield* new UserNotFound({ userId: params.id })
        yield* credentials.set(params.id, payload.password)
        // Sessions started with the old password end with it.
        yield* refresh.revokeUser(params.id)
      }))
      .handle("changeEmail", Effect.fnUntraced(function*({ params, payload, request }) {
        yield* Identity.authorize(
          (identity) => Identity.isUser(identity, params.id),
          "A user changes only its own email here; admins use PATCH /api/users/{id}"
        )
        yield* reauthenticate(params.id, payload.current_password, request)
        // Every change counts, made or not: probing addresses (then reading one's
        // own record back) is a few tries an hour, not hundreds a minute.
        yield* throttle.limit(`email-change:${params.id}`, emailChangeBackoff)
        yield* accounts.changeEmail(params.id, payload.email)
      }))
  })
)

const HealthHandlers = HttpApiBuilder.group(AuthApi, "health", (handlers) => handlers.handle("health", Health.ready("auth", { d1: Health.d1("AUTH_DB") })))

export const AuthRoutes = HttpApiBuilder.layer(AuthApi).pipe(
  Layer.provide([AuthHandlers, KeyHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), Identity.MeshIdentity.layer])
)
