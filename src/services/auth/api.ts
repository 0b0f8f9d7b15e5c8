/**
 * The auth service's HTTP contract: login, refresh and logout (public
 * through the gateway), the JWKS, and what needs the current password:
 * setting a password and changing one's own email.
 */
import { Schema } from "effect"
import { HttpApi, HttpApiEndpoint, HttpApiError, HttpApiGroup, HttpApiMiddleware, HttpApiSchema } from "effect/http-api"
import { Health, Identity, Problem } from "meshwork"
import { Email, UserId } from "../users/api.ts"

export const Password = Schema.String.check(Schema.isMinLength(12), Schema.isMaxLength(256))

export const Login = Schema.Struct({ email: Email, password: Schema.String.check(Schema.isMaxLength(256)) })
export const Refresh = Schema.Struct({ refresh_token: Schema.String.check(Schema.isMaxLength(256)) })
/** A user changing its own password proves it knows the current one; an admin setting another's does not. */
export const SetPassword = Schema.Struct({
  password: Password,
  current_password: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(256)))
})
/** A user changing its own email proves it knows its password. */
export const ChangeEmail = Schema.Struct({
  email: Email,
  current_password: Schema.String.check(Schema.isMaxLength(256))
})

/** RFC 6749 section 5.1 token response. */
export const TokenResponse = Schema.Struct({
  access_token: Schema.String,
  token_type: Schema.Literal("Bearer"),
  expires_in: Schema.Int,
  refresh_token: Schema.String
})
export type TokenResponse = typeof TokenResponse.Type

/** Public ES256 keys, RFC 7517. */
export const PublicJwk = Schema.Struct({
  kty: Schema.Literal("EC"),
  crv: Schema.Literal("P-256"),
  x: Schema.String,
  y: Schema.String,
  kid: Schema.String,
  alg: Schema.Literal("ES256"),
  use: Schema.Literal("sig")
})
export const Jwks = Schema.Struct({ keys: Schema.Array(PublicJwk) })
export type Jwks = typeof Jwks.Type

/** The same answer for an unknown email, a wrong password and a disabled account. */
export class InvalidCredentials extends HttpApiError.Problem<InvalidCredentials>()("InvalidCredentials", {
  type: "urn:meshwork:problem:invalid-credentials",
  status: 401,
  title: "Invalid email or password"
}) {}

/**
 * 429 while a password-guessing (or email-change) counter blocks. The same
 * for every email, known or not; the wait is also sent as `Retry-After`.
 */
export class TooManyAttempts extends HttpApiError.Problem<TooManyAttempts>()("TooManyAttempts", {
  type: "urn:meshwork:problem:too-many-attempts",
  status: 429,
  title: "Too many attempts"
}, {
  retryAfterSeconds: Schema.Int
}) {}

const TooManyAttemptsWithRetryAfter = TooManyAttempts.pipe(HttpApiSchema.encodeToWithHeaders({
  body: TooManyAttempts,
  headers: { "retry-after": Schema.String }
}, {
  decode: ({ body }) => body,
  encode: (error) => ({ body: error, headers: { "retry-after": String(error.retryAfterSeconds) } })
}))

export class InvalidRefreshToken extends HttpApiError.Problem<InvalidRefreshToken>()("InvalidRefreshToken", {
  type: "urn:meshwork:problem:invalid-refresh-token",
  status: 401,
  title: "Invalid refresh token"
}) {}

export class AuthGroup extends HttpApiGroup.make("auth")
  .add(
    HttpApiEndpoint.post("login", "/login", {
      payload: Login,
      success: TokenResponse,
      error: [InvalidCredentials, TooManyAttemptsWithRetryAfter, Problem.BadGateway]
    }),
    HttpApiEndpoint.post("refresh", "/refresh", {
      payload: Refresh,
      success: TokenResponse,
      error: [InvalidRefreshToken, Problem.BadGateway]
    }),
    HttpApiEndpoint.post("logout", "/logout", { payload: Refresh, success: HttpApiSchema.NoContent }),
    HttpApiEndpoint.get("jwks", "/.well-known/jwks.json", { success: Jwks }),
    HttpApiEndpoint.put("setPassword", "/users/:id/password", {
      params: { id: UserId },
      payload: SetPassword,
      success: HttpApiSchema.NoContent,
      error: [Problem.Forbidden, InvalidCredentials, TooManyAttemptsWithRetryAfter]
    }),
    /**
     * 202 whether the new address was free (the change is made) or taken (it
     * is not): the answer tells nobody who has an address. Admins change
     * anyone's email with `PATCH /api/users/{id}`, conflicts explicit.
     */
    HttpApiEndpoint.put("changeEmail", "/users/:id/email", {
      params: { id: UserId },
      payload: ChangeEmail,
      success: HttpApiSchema.Accepted,
      error: [Problem.Forbidden, InvalidCredentials, TooManyAttemptsWithRetryAfter, Problem.BadGateway]
    })
  )
  .prefix("/api/auth")
{}

export class AuthApi extends HttpApi.make("auth")
  .add(AuthGroup)
  .add(Health.HealthGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
  .middleware(Identity.MeshIdentity)
{}
