/**
 * The sessions service's HTTP contract. Every read answers with the
 * session's version as a strong ETag (`"<version>"`); a write may send
 * `If-Match` and gets 412 when the session moved on. A PUT (a whole new
 * state) must send `If-Match` (428 otherwise): replacing blind would drop
 * changes the caller never saw.
 */
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiError from "effect/http-api/HttpApiError"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import * as OpenApi from "effect/http-api/OpenApi"
import { Health, Identity, Problem } from "meshwork"
import { Product } from "../products/api.ts"

const Name = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64))
const ProductId = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64))
export const AttributeValue = Schema.Union([Schema.String.check(Schema.isMaxLength(1000)), Schema.Finite, Schema.Boolean])
const Quantity = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 999 }))
const Count = Schema.Int.check(Schema.isBetween({ minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }))

/** A session holds at most this many cart lines, attributes and counters each. */
export const maxEntries = 100

export const Session = Schema.Struct({
  attributes: Schema.Record(Name, AttributeValue).check(Schema.isMaxProperties(maxEntries)),
  cart: Schema.Record(ProductId, Quantity).check(Schema.isMaxProperties(maxEntries)),
  counters: Schema.Record(Name, Count).check(Schema.isMaxProperties(maxEntries))
})
export type Session = typeof Session.Type

export const SessionChange = Schema.Union([
  /** Adds `by` (default 1) to a counter that starts at 0. */
  Schema.TaggedStruct("Increment", {
    counter: Name,
    by: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: -1_000_000, maximum: 1_000_000 })))
  }),
  /** Sets a product's quantity in the cart; 0 takes it out. */
  Schema.TaggedStruct("SetCartItem", {
    productId: ProductId,
    quantity: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 999 }))
  }),
  /** Sets an attribute; null removes it. */
  Schema.TaggedStruct("SetAttribute", { name: Name, value: Schema.NullOr(AttributeValue) })
])
export type SessionChange = typeof SessionChange.Type

export const SessionId = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64))

/** A session as the API shows it. */
export const SessionView = Schema.Struct({ id: Schema.String, version: Schema.Number, ...Session.fields })
export type SessionView = typeof SessionView.Type

export const CreateSession = Schema.Struct({
  attributes: Schema.optionalKey(Session.fields.attributes),
  cart: Schema.optionalKey(Session.fields.cart),
  counters: Schema.optionalKey(Session.fields.counters)
})

export const ChangeSession = Schema.Struct({
  changes: Schema.Array(SessionChange).check(Schema.isMinLength(1), Schema.isMaxLength(100))
}).annotate({
  examples: [{
    changes: [{ _tag: "SetCartItem", productId: "0195f3a0-0000-7000-8000-000000000101", quantity: 2 }, { _tag: "Increment", counter: "visits" }]
  }]
})

/** A cart line with its product, or `null` when the product no longer exists. */
export const CartLine = Schema.Struct({ productId: Schema.String, quantity: Schema.Number, product: Schema.NullOr(Product) })
export const SessionCart = Schema.Struct({
  sessionId: Schema.String,
  version: Schema.Number,
  lines: Schema.Array(CartLine),
  /** Which checkout the user gets: the `new-checkout` feature flag. */
  checkout: Schema.Literals(["new", "classic"])
})

const ifMatch = { "if-match": Schema.optional(Schema.String) }
const withETag = HttpApiSchema.WithHeaders(SessionView, { etag: Schema.String })

export class SessionNotFound extends HttpApiError.Problem<SessionNotFound>()("SessionNotFound", {
  type: "urn:meshwork:problem:session-not-found",
  status: 404,
  title: "Session not found"
}, {
  sessionId: Schema.String
}) {}

/** `If-Match` names none of the session's current version. */
export class SessionPreconditionFailed extends HttpApiError.Problem<SessionPreconditionFailed>()("SessionPreconditionFailed", {
  type: "urn:meshwork:problem:precondition-failed",
  status: 412,
  title: "The session has changed"
}, {
  sessionId: Schema.String,
  currentVersion: Schema.Number
}) {}

export class SessionPreconditionRequired extends HttpApiError.Problem<SessionPreconditionRequired>()(
  "SessionPreconditionRequired",
  {
    type: "urn:meshwork:problem:precondition-required",
    status: 428,
    title: "If-Match required"
  },
  { sessionId: Schema.String }
) {}

/** A change the session refuses (a limit reached, an overflow); nothing of the request was applied. */
export class InvalidSessionChange extends HttpApiError.Problem<InvalidSessionChange>()("InvalidSessionChange", {
  type: "urn:meshwork:problem:invalid-session-change",
  status: 422,
  title: "Change refused"
}, {
  sessionId: Schema.String,
  reason: Schema.String
}) {}

const byId = { id: SessionId }
const writeErrors = [SessionNotFound, SessionPreconditionFailed, InvalidSessionChange, Problem.BadRequest, Problem.ServiceUnavailable, Problem.Forbidden]

export class SessionsGroup extends HttpApiGroup.make("sessions")
  .add(
    HttpApiEndpoint.post("create", "/", {
      payload: CreateSession,
      success: HttpApiSchema.WithHeaders(SessionView, { etag: Schema.String, location: Schema.String }).pipe(
        HttpApiSchema.status(201)
      ),
      error: [InvalidSessionChange, Problem.ServiceUnavailable, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Start a session"),
    HttpApiEndpoint.get("get", "/:id", { params: byId, success: withETag, error: [SessionNotFound, Problem.ServiceUnavailable, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "Read a session"),
    HttpApiEndpoint.get("cart", "/:id/cart", {
      params: byId,
      success: SessionCart,
      error: [SessionNotFound, Problem.BadGateway, Problem.ServiceUnavailable, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "A session's cart, with its products"),
    HttpApiEndpoint.patch("update", "/:id", { params: byId, headers: ifMatch, payload: ChangeSession, success: withETag, error: writeErrors })
      .annotate(OpenApi.Summary, "Apply changes to a session, atomically"),
    HttpApiEndpoint.put("replace", "/:id", {
      params: byId,
      headers: ifMatch,
      payload: Session,
      success: withETag,
      error: [...writeErrors, SessionPreconditionRequired]
    }).annotate(OpenApi.Summary, "Replace a session's state (If-Match required)"),
    HttpApiEndpoint.delete("remove", "/:id", {
      params: byId,
      headers: ifMatch,
      success: HttpApiSchema.NoContent,
      error: [SessionNotFound, SessionPreconditionFailed, Problem.BadRequest, Problem.ServiceUnavailable, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "End a session")
  )
  .prefix("/api/sessions")
  .annotate(OpenApi.Description, "A user's sessions, each its own Durable Object, with optimistic concurrency (ETag, If-Match).")
{}

/** Every session belongs to the user who created it; nobody else sees it (http.ts). */
export class SessionsApi extends HttpApi.make("sessions")
  .add(SessionsGroup)
  .add(Health.HealthGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
  .middleware(Identity.MeshIdentity)
{}
