/**
 * RFC 9457 problem details at the Worker edge.
 *
 * Every failure a caller can see is a typed error. Errors declared with
 * `HttpApiError.Problem` (Effect's own typed problem classes) render
 * themselves; this module declares the generic HTTP problems the mesh uses and
 * turns any failure into an `application/problem+json` Response.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import * as HttpServerRespondable from "effect/http/HttpServerRespondable"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as ProblemDetails from "effect/http/ProblemDetails"
import * as HttpApiError from "effect/http-api/HttpApiError"

/** One invalid input value: where it was (`["payload", "email"]`) and why. */
export const Issue = Schema.Struct({
  path: Schema.Array(Schema.Union([Schema.String, Schema.Number])),
  message: Schema.String
})
export type Issue = typeof Issue.Type

export class BadRequest extends HttpApiError.Problem<BadRequest>()("BadRequest", {
  type: ProblemDetails.blankType,
  status: 400,
  title: "Bad Request"
}, {
  errors: Schema.optionalKey(Schema.Array(Issue))
}) {}

const formatIssues = SchemaIssue.makeFormatterStandardSchemaV1()

/**
 * The 400 for input that does not decode, exactly as the services'
 * `effect/http-api` routes answer it (`HttpApiMiddleware.layerProblemDetails`):
 * `detail: "Request validation failed"` and one issue per invalid value, its
 * path starting with the part of the request it was in (`params`, `query`,
 * `headers`, `payload`).
 */
export const validationFailed = (issues: ReadonlyArray<Issue>) => new BadRequest({ detail: "Request validation failed", errors: issues })

/** The issues of a schema error, their paths under `slot` (`["payload", "weight"]`). */
export const issuesOf = (slot: string, error: Schema.SchemaError): ReadonlyArray<Issue> =>
  formatIssues(error.issue).issues.map((issue) => ({
    path: [slot, ...(issue.path ?? []).map((segment) => {
      const key = typeof segment === "object" && segment !== null ? segment.key : segment
      return typeof key === "number" ? key : String(key)
    })],
    message: issue.message
  }))

/**
 * 401. `challenge` is sent as the `WWW-Authenticate` header (RFC 6750 for
 * Bearer tokens), not in the body.
 */
export class Unauthorized extends HttpApiError.Problem<Unauthorized>()("Unauthorized", {
  type: ProblemDetails.blankType,
  status: 401,
  title: "Unauthorized"
}, {
  challenge: Schema.optionalKey(Schema.String)
}) {}

export class Forbidden extends HttpApiError.Problem<Forbidden>()("Forbidden", {
  type: ProblemDetails.blankType,
  status: 403,
  title: "Forbidden"
}) {}

export class NotFound extends HttpApiError.Problem<NotFound>()("NotFound", {
  type: ProblemDetails.blankType,
  status: 404,
  title: "Not Found"
}) {}

/** 405. `allow` lists the methods the resource takes; it is also sent as the `Allow` header (RFC 9110). */
/** 409: the request conflicts with the current state of the resource. */
export class Conflict extends HttpApiError.Problem<Conflict>()("Conflict", {
  type: ProblemDetails.blankType,
  status: 409,
  title: "Conflict"
}) {}

export class MethodNotAllowed extends HttpApiError.Problem<MethodNotAllowed>()("MethodNotAllowed", {
  type: ProblemDetails.blankType,
  status: 405,
  title: "Method Not Allowed"
}, {
  allow: Schema.Array(Schema.String)
}) {}

export class PayloadTooLarge extends HttpApiError.Problem<PayloadTooLarge>()("PayloadTooLarge", {
  type: ProblemDetails.blankType,
  status: 413,
  title: "Content Too Large"
}, {
  limit: Schema.Number
}) {}

export class UnsupportedMediaType extends HttpApiError.Problem<UnsupportedMediaType>()("UnsupportedMediaType", {
  type: ProblemDetails.blankType,
  status: 415,
  title: "Unsupported Media Type"
}) {}

export class InternalError extends HttpApiError.Problem<InternalError>()("InternalError", {
  type: ProblemDetails.blankType,
  status: 500,
  title: "Internal Server Error"
}) {}

export class BadGateway extends HttpApiError.Problem<BadGateway>()("BadGateway", {
  type: ProblemDetails.blankType,
  status: 502,
  title: "Bad Gateway"
}, {
  service: Schema.String
}) {}

export class GatewayTimeout extends HttpApiError.Problem<GatewayTimeout>()("GatewayTimeout", {
  type: ProblemDetails.blankType,
  status: 504,
  title: "Gateway Timeout"
}) {}

/** 503. `retryAfterSeconds` is also sent as the `Retry-After` header. */
export class ServiceUnavailable extends HttpApiError.Problem<ServiceUnavailable>()("ServiceUnavailable", {
  type: ProblemDetails.blankType,
  status: 503,
  title: "Service Unavailable"
}, {
  retryAfterSeconds: Schema.optionalKey(Schema.Int)
}) {}

/** 429. `retryAfterSeconds` is also sent as the `Retry-After` header. */
export class TooManyRequests extends HttpApiError.Problem<TooManyRequests>()("TooManyRequests", {
  type: ProblemDetails.blankType,
  status: 429,
  title: "Too Many Requests"
}, {
  retryAfterSeconds: Schema.optionalKey(Schema.Int)
}) {}

const problemHeaders = { "content-type": ProblemDetails.contentType }

/** The body of an error we could not render: no detail leaks to the caller. */
const internalErrorBody = JSON.stringify({ type: ProblemDetails.blankType, status: 500, title: "Internal Server Error" })

const internalErrorResponse = (): Response => new Response(internalErrorBody, { status: 500, headers: problemHeaders })

/**
 * Renders one typed error. Respondable errors (every `HttpApiError.Problem`)
 * render themselves; anything else is a 500 with no detail.
 */
export const fromError = (error: unknown): Response => {
  if (error instanceof Unauthorized && error.challenge !== undefined) return unauthorized(error.challenge, error.detail)
  if (!HttpServerRespondable.isRespondable(error)) return internalErrorResponse()
  const exit = Effect.runSyncExit(HttpServerRespondable.toResponse(error))
  if (Exit.isFailure(exit)) return internalErrorResponse()
  const response = HttpServerResponse.toWeb(exit.value)
  if ((error instanceof ServiceUnavailable || error instanceof TooManyRequests) && error.retryAfterSeconds !== undefined) {
    response.headers.set("retry-after", String(error.retryAfterSeconds))
  }
  if (error instanceof MethodNotAllowed) response.headers.set("allow", error.allow.join(", "))
  return response
}

const unauthorized = (challenge: string, detail: string | undefined): Response =>
  new Response(
    JSON.stringify({ type: ProblemDetails.blankType, status: 401, title: "Unauthorized", ...(detail === undefined ? {} : { detail }) }),
    { status: 401, headers: { ...problemHeaders, "www-authenticate": challenge } }
  )

/**
 * Whether rendering this cause hides something that must be logged: a defect,
 * or a typed error that is not a problem a client is meant to see.
 */
export const isUnexpected = <E>(cause: Cause.Cause<E>): boolean => {
  const error = Cause.findErrorOption(cause)
  if (error._tag === "None") return Cause.hasDies(cause)
  return !HttpServerRespondable.isRespondable(error.value) || statusOf(error.value) >= 500
}

/** The HTTP status a typed error answers with: its `status`, else 500. */
export const statusOf = (error: unknown): number =>
  typeof error === "object" && error !== null && "status" in error && typeof error.status === "number"
    ? error.status
    : 500

/**
 * Renders a failed Exit: the first typed error if there is one, 503 when the
 * request was only interrupted, otherwise (a defect) 500.
 */
export const fromCause = <E>(cause: Cause.Cause<E>): Response => {
  const error = Cause.findErrorOption(cause)
  if (error._tag === "Some") return fromError(error.value)
  if (Cause.hasInterruptsOnly(cause) && cause.reasons.length > 0) return fromError(new ServiceUnavailable())
  return internalErrorResponse()
}
