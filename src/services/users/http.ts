/** The users API's handlers, and the routes a Worker serves. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import { Health, Identity, Pagination, Problem, Queues } from "meshwork"
import { type UpdateUser, UserDeleted, UsersApi } from "./api.ts"
import { Users } from "./Users.ts"

const adminOrService = Identity.authorize(
  (identity) => Identity.hasRole(identity, "admin") || Identity.isService(identity),
  "Only admins may list users"
)
const admin = Identity.authorize((identity) => Identity.hasRole(identity, "admin"), "Requires the admin role")
const onlyName = (patch: UpdateUser) => Object.keys(patch).every((field) => field === "name")
const onlyEmail = (patch: UpdateUser) => Object.keys(patch).every((field) => field === "email")

const selfAdminOrService = (id: string) =>
  Identity.authorize(
    (identity) => Identity.isUser(identity, id) || Identity.hasRole(identity, "admin") || Identity.isService(identity),
    "A user may only read itself"
  )

/**
 * Who may do what: admins everything; a user reads itself and changes its own
 * name (not its role or whether it is active). Its email it changes through
 * the auth service, which checks its password and answers alike whether the
 * address was taken or not: here only the auth Worker may set an email
 * without being an admin, and only the email. Other Workers of the mesh read
 * users (the gateway checks a token's user, products a seller, auth a login).
 */
const UsersHandlers = HttpApiBuilder.group(
  UsersApi,
  "users",
  Effect.fn(function*(handlers) {
    const users = yield* Users
    const deletions = yield* Queues.producer("USER_DELETIONS", UserDeleted)
    /**
     * The deletion is queued first, for auth to forget the user's credentials
     * and refresh tokens, then made: a queue that fails leaves the user as it
     * was (503, try again). Auth acts once users no longer has the user, so a
     * delete that fails after the message leaves its credentials in place.
     */
    const remove = (id: string) =>
      Effect.gen(function*() {
        yield* users.get(id)
        yield* deletions.send({ userId: id }).pipe(
          Effect.mapError(() => new Problem.ServiceUnavailable({ detail: "The user could not be deleted; try again" }))
        )
        yield* users.remove(id)
      })
    return handlers
      .handle("list", Effect.fnUntraced(function*({ query }) {
        yield* adminOrService
        const afterId = query.cursor === undefined ? undefined : Pagination.decodeCursor(query.cursor)
        if (query.cursor !== undefined && afterId === undefined) return yield* new Pagination.InvalidCursor()
        const limit = query.limit ?? Pagination.defaultLimit
        return Pagination.toPage(yield* users.list({ limit: limit + 1, afterId, email: query.email }), limit)
      }))
      .handle("create", ({ payload }) => Effect.andThen(admin, users.create(payload)))
      .handle("get", ({ params }) => Effect.andThen(selfAdminOrService(params.id), users.get(params.id)))
      .handle("update", ({ params, payload }) =>
        Effect.andThen(
          Identity.authorize(
            (identity) =>
              Identity.hasRole(identity, "admin") ||
              (Identity.isUser(identity, params.id) && onlyName(payload)) ||
              (identity.kind === "service" && identity.sub === "auth" && onlyEmail(payload)),
            "A user may only change its own name here, and its email with PUT /api/auth/users/{id}/email and its current password"
          ),
          users.update(params.id, payload)
        ))
      .handle("remove", ({ params }) => Effect.andThen(admin, remove(params.id)))
  })
)

const HealthHandlers = HttpApiBuilder.group(UsersApi, "health", (handlers) => handlers.handle("health", Health.ready("users", { d1: Health.d1("USERS_DB") })))

export const UsersRoutes = HttpApiBuilder.layer(UsersApi).pipe(
  Layer.provide([UsersHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), Identity.MeshIdentity.layer])
)
