/**
 * The users service's HTTP contract, shared by the server (`http.ts`) and
 * every typed client (`client.ts`): a change here breaks callers at compile time.
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

/**
 * An id as it appears in a path: letters, digits, `-` and `_`. Anything else
 * (`.` and `..` above all, which URL normalisation would resolve) is refused
 * at the API's edge, so no typed client is ever asked to put it in a path.
 */
export const Id = Schema.String.check(
  Schema.isMinLength(1),
  Schema.isMaxLength(64),
  Schema.isPattern(/^[A-Za-z0-9_-]+$/, { message: "An id is 1 to 64 letters, digits, '-' or '_'" })
)
export const UserId = Id
export const Email = Schema.String.check(Schema.isMaxLength(254), Schema.isPattern(/^[^\s@]+@[^\s@]+\.[^\s@]+$/))
export const Name = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1), Schema.isMaxLength(100))
export const Role = Schema.Literals(["admin", "user"])
export type Role = typeof Role.Type

export const User = Schema.Struct({
  id: UserId,
  email: Email,
  name: Name,
  role: Role,
  active: Schema.Boolean,
  createdAt: Schema.String,
  updatedAt: Schema.String
})
export type User = typeof User.Type

export const CreateUser = Schema.Struct({
  email: Email,
  name: Name,
  role: Schema.optionalKey(Role),
  active: Schema.optionalKey(Schema.Boolean)
}).annotate({ examples: [{ email: "grace@example.com", name: "Grace Hopper", role: "user" }] })
export type CreateUser = typeof CreateUser.Type

export const UpdateUser = Schema.Struct({
  email: Schema.optionalKey(Email),
  name: Schema.optionalKey(Name),
  role: Schema.optionalKey(Role),
  active: Schema.optionalKey(Schema.Boolean)
}).check(Schema.isMinProperties(1))
export type UpdateUser = typeof UpdateUser.Type

export const UserPage = Pagination.Page(User)

export class UserNotFound extends HttpApiError.Problem<UserNotFound>()("UserNotFound", {
  type: "urn:meshwork:problem:user-not-found",
  status: 404,
  title: "User not found"
}, {
  userId: Schema.String
}) {}

export class EmailTaken extends HttpApiError.Problem<EmailTaken>()("EmailTaken", {
  type: "urn:meshwork:problem:email-taken",
  status: 409,
  title: "Email already in use"
}, {
  email: Schema.String
}) {}

/**
 * What the users service queues when it deletes a user (the queue
 * `meshwork-user-deletions`, bound as USER_DELETIONS): the auth service
 * consumes it and forgets the user's credentials and refresh tokens.
 */
export const UserDeleted = Schema.Struct({ userId: UserId })
export type UserDeleted = typeof UserDeleted.Type
export const userDeletionsQueue = "meshwork-user-deletions"

const byId = { id: UserId }

/** List query: a page, optionally only the user with this email. */
export const UserQuery = { ...Pagination.PageQuery, email: Schema.optional(Email) }

export class UsersGroup extends HttpApiGroup.make("users")
  .add(
    HttpApiEndpoint.get("list", "/", { query: UserQuery, success: UserPage, error: [Pagination.InvalidCursor, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "List users, or find one by email (admins)"),
    HttpApiEndpoint.post("create", "/", {
      payload: CreateUser,
      success: User.pipe(HttpApiSchema.status(201)),
      error: [EmailTaken, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Create a user (admins)"),
    HttpApiEndpoint.get("get", "/:id", { params: byId, success: User, error: [UserNotFound, Problem.Forbidden] })
      .annotate(OpenApi.Summary, "Read a user"),
    HttpApiEndpoint.patch("update", "/:id", {
      params: byId,
      payload: UpdateUser,
      success: User,
      error: [UserNotFound, EmailTaken, Problem.Forbidden]
    }).annotate(OpenApi.Summary, "Change a user"),
    HttpApiEndpoint.delete("remove", "/:id", {
      params: byId,
      success: HttpApiSchema.NoContent,
      error: [UserNotFound, Problem.Forbidden, Problem.ServiceUnavailable]
    }).annotate(OpenApi.Summary, "Delete a user (admins)")
  )
  .prefix("/api/users")
  .annotate(OpenApi.Description, "Accounts: who they are and their role. Passwords live in auth.")
{}

/**
 * Every endpoint, health included, needs the mesh's identity assertion
 * (Identity.MeshIdentity); who may do what is decided in the handlers (http.ts).
 */
export class UsersApi extends HttpApi.make("users")
  .add(UsersGroup)
  .add(Health.HealthGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
  .middleware(Identity.MeshIdentity)
{}
