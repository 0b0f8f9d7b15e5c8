/**
 * The auth service's HTTP contract: login, refresh and logout (public
 * through the gateway), the JWKS, and what needs the current password:
 * setting a password and changing one's own email.
 */
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiError from "effect/http-api/HttpApiError"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import * as OpenApi from "effect/http-api/OpenApi"
import { Health, Identity, Pagination, Problem } from "meshwork"
import { Email, Id, Role, UserId, UserNotFound } from "../users/api.ts"

export const Password = Schema.String.check(Schema.isMinLength(12), Schema.isMaxLength(256))

export const Login = Schema.Struct({ email: Email, password: Schema.String.check(Schema.isMaxLength(256)) }).annotate({
  examples: [{ email: "ada@meshwork.dev", password: "ada-local-password" }]
})
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
    }).annotate(OpenApi.Summary, "Sign in: an access token and a refresh token"),
    HttpApiEndpoint.post("refresh", "/refresh", {
      payload: Refresh,
      success: TokenResponse,
      error: [InvalidRefreshToken, Problem.BadGateway]
    }).annotate(OpenApi.Summary, "Trade a refresh token for a new pair"),
    HttpApiEndpoint.post("logout", "/logout", { payload: Refresh, success: HttpApiSchema.NoContent })
      .annotate(OpenApi.Summary, "Revoke a refresh token's family"),
    HttpApiEndpoint.get("jwks", "/.well-known/jwks.json", { success: Jwks })
      .annotate(OpenApi.Summary, "The public keys access tokens are signed with"),
    HttpApiEndpoint.put("setPassword", "/users/:id/password", {
      params: { id: UserId },
      payload: SetPassword,
      success: HttpApiSchema.NoContent,
      error: [Problem.Forbidden, InvalidCredentials, TooManyAttemptsWithRetryAfter, UserNotFound, Problem.BadGateway]
    }).annotate(OpenApi.Summary, "Set a user's password"),
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
    }).annotate(OpenApi.Summary, "Change one's own email")
  )
  .prefix("/api/auth")
  .annotate(OpenApi.Description, "Sign-in, tokens and credentials.")
{}

// ---------------------------------------------------------------------------
// API keys for machine clients (ApiKeys.ts): issued, listed and revoked here,
// verified for the gateway, which takes `Authorization: ApiKey <key>`.

/** A key as clients send it: `mwk_` and 43 base64url characters (32 random bytes). */
export const apiKeyPattern = /^mwk_[A-Za-z0-9_-]{43}$/

export const ApiKeyName = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1), Schema.isMaxLength(100))
export const PlanName = Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,31}$/))
export const PerMinute = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))
export const PerDay = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000_000 }))

/** How many requests a key may make: per minute and per UTC day, counted at the gateway. */
export const Quota = Schema.Struct({ perMinute: PerMinute, perDay: PerDay })
export type Quota = typeof Quota.Type

export const CreateApiKey = Schema.Struct({
  /** What the key is for, to tell keys apart in lists. */
  name: ApiKeyName,
  /** Whose key it is: the key acts as this user (default: the caller). Admins only for another user. */
  userId: Schema.optionalKey(UserId),
  /** The roles it carries, at most its user's (default `["user"]`). */
  roles: Schema.optionalKey(Schema.Array(Role).check(Schema.isMinLength(1), Schema.isMaxLength(2))),
  /** Its plan, one of API_KEY_PLANS (default API_KEY_DEFAULT_PLAN). Admins only. */
  plan: Schema.optionalKey(PlanName),
  /** Quotas of its own, instead of the plan's. Admins only. */
  perMinute: Schema.optionalKey(PerMinute),
  perDay: Schema.optionalKey(PerDay),
  /** When it stops working, ISO 8601 and in the future (default: never). */
  expiresAt: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(40)))
}).annotate({
  examples: [{ name: "nightly import job", roles: ["user"], expiresAt: "2027-01-01T00:00:00Z" }]
})
export type CreateApiKey = typeof CreateApiKey.Type

/** A key as lists show it: never the key itself, only its first characters. */
export const ApiKey = Schema.Struct({
  id: Id,
  name: ApiKeyName,
  /** The key's first 12 characters (`mwk_` and 8 more), to recognise it. */
  prefix: Schema.String,
  userId: UserId,
  roles: Schema.Array(Role),
  plan: PlanName,
  quota: Quota,
  createdAt: Schema.String,
  expiresAt: Schema.NullOr(Schema.String),
  revokedAt: Schema.NullOr(Schema.String)
})
export type ApiKey = typeof ApiKey.Type

/** A key just issued: the only answer that carries `key`. Store it now; it cannot be shown again. */
export const IssuedApiKey = Schema.Struct({ ...ApiKey.fields, key: Schema.String })
export type IssuedApiKey = typeof IssuedApiKey.Type

export const ApiKeyPage = Pagination.Page(ApiKey)
export const ApiKeyQuery = { ...Pagination.PageQuery, userId: Schema.optional(UserId) }

export const VerifyApiKey = Schema.Struct({ key: Schema.String.check(Schema.isMaxLength(256)) })
/** What the gateway learns of a valid key: who it acts as, and its quota. */
export const VerifiedApiKey = Schema.Struct({
  id: Id,
  userId: UserId,
  roles: Schema.Array(Role),
  quota: Quota,
  /** Epoch ms after which the key is refused, if it expires. */
  expiresAt: Schema.NullOr(Schema.Number)
})
export type VerifiedApiKey = typeof VerifiedApiKey.Type

/** The same answer for a key that is unknown, revoked or expired, or whose user is gone. */
export class InvalidApiKey extends HttpApiError.Problem<InvalidApiKey>()("InvalidApiKey", {
  type: "urn:meshwork:problem:invalid-api-key",
  status: 401,
  title: "Invalid API key"
}) {}

export class ApiKeyNotFound extends HttpApiError.Problem<ApiKeyNotFound>()("ApiKeyNotFound", {
  type: "urn:meshwork:problem:api-key-not-found",
  status: 404,
  title: "API key not found"
}, {
  keyId: Schema.String
}) {}

export class UnknownPlan extends HttpApiError.Problem<UnknownPlan>()("UnknownPlan", {
  type: "urn:meshwork:problem:unknown-plan",
  status: 422,
  title: "No such plan"
}, {
  plan: Schema.String
}) {}

/** A user holds at most API_KEYS_PER_USER keys that still work. */
export class TooManyApiKeys extends HttpApiError.Problem<TooManyApiKeys>()("TooManyApiKeys", {
  type: "urn:meshwork:problem:too-many-api-keys",
  status: 409,
  title: "Too many API keys"
}, {
  limit: Schema.Int
}) {}

export class ApiKeysGroup extends HttpApiGroup.make("keys")
  .add(
    HttpApiEndpoint.post("create", "/", {
      payload: CreateApiKey,
      success: IssuedApiKey.pipe(HttpApiSchema.status(201)),
      error: [Problem.BadRequest, Problem.Forbidden, UserNotFound, UnknownPlan, TooManyApiKeys, Problem.BadGateway]
    })
      .annotate(OpenApi.Summary, "Issue an API key")
      .annotate(
        OpenApi.Description,
        "The answer is the only time the key is shown: it is stored hashed. A user issues keys for itself with its own roles at most; " +
          "admins issue them for anyone, with a plan or quotas of their own."
      ),
    HttpApiEndpoint.get("list", "/", { query: ApiKeyQuery, success: ApiKeyPage, error: [Pagination.InvalidCursor, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "List API keys")
      .annotate(
        OpenApi.Description,
        "One's own keys; admins see everyone's, or one user's with `?userId=`. Revoked and expired keys are listed until they are purged, 30 days on."
      ),
    HttpApiEndpoint.delete("revoke", "/:id", { params: { id: Id }, success: HttpApiSchema.NoContent, error: [ApiKeyNotFound, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "Revoke an API key")
      .annotate(OpenApi.Description, "Its owner's or an admin's. The gateway stops taking it within API_KEY_CACHE_SECONDS (10 s)."),
    // For the gateway (a Worker: no user may call it); not part of the public API.
    HttpApiEndpoint.post("verify", "/verify", {
      payload: VerifyApiKey,
      success: VerifiedApiKey,
      error: [InvalidApiKey, Problem.Forbidden, Problem.BadGateway]
    }).annotate(OpenApi.Exclude, true)
  )
  .prefix("/api/auth/keys")
  .annotate(OpenApi.Description, "API keys for machine clients, sent as `Authorization: ApiKey <key>`.")
{}

export class AuthApi extends HttpApi.make("auth")
  .add(AuthGroup)
  .add(ApiKeysGroup)
  .add(Health.HealthGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
  .middleware(Identity.MeshIdentity)
{}
