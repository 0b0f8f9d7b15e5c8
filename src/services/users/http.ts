/** The users API's handlers, and the routes a Worker serves. */
import { Effect, Layer } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { authorize, hasRole, isService, isUser, MeshIdentity } from "../../layers/Identity.ts"
import { healthy } from "../shared/Health.ts"
import { decodeCursor, defaultLimit, InvalidCursor, toPage } from "../shared/Pagination.ts"
import { UsersApi } from "./api.ts"
import { Users } from "./Users.ts"

const adminOrService = authorize(
  (identity) => hasRole(identity, "admin") || isService(identity),
  "Only admins may list users"
)
const admin = authorize((identity) => hasRole(identity, "admin"), "Requires the admin role")
const selfAdminOrService = (id: string) =>
  authorize(
    (identity) => isUser(identity, id) || hasRole(identity, "admin") || isService(identity),
    "A user may only read itself"
  )

/**
 * Who may do what: admins everything; a user reads itself and updates its own
 * name and email (not its role or whether it is active); other Workers of the
 * mesh read users (the gateway checks a token's user, products a seller).
 */
const UsersHandlers = HttpApiBuilder.group(
  UsersApi,
  "users",
  Effect.fn(function*(handlers) {
    const users = yield* Users
    return handlers
      .handle("list", Effect.fnUntraced(function*({ query }) {
        yield* adminOrService
        const afterId = query.cursor === undefined ? undefined : decodeCursor(query.cursor)
        if (query.cursor !== undefined && afterId === undefined) return yield* new InvalidCursor()
        const limit = query.limit ?? defaultLimit
        return toPage(yield* users.list({ limit: limit + 1, afterId, email: query.email }), limit)
      }))
      .handle("create", ({ payload }) => Effect.andThen(admin, users.create(payload)))
      .handle("get", ({ params }) => Effect.andThen(selfAdminOrService(params.id), users.get(params.id)))
      .handle("update", ({ params, payload }) =>
        Effect.andThen(
          authorize(
            (identity) =>
              hasRole(identity, "admin") ||
              (isUser(identity, params.id) && payload.role === undefined && payload.active === undefined),
            "A user may only change its own name and email"
          ),
          users.update(params.id, payload)
        ))
      .handle("remove", ({ params }) => Effect.andThen(admin, users.remove(params.id)))
  })
)

const HealthHandlers = HttpApiBuilder.group(UsersApi, "health", (handlers) => handlers.handle("health", healthy("users")))

export const UsersRoutes = HttpApiBuilder.layer(UsersApi).pipe(
  Layer.provide([UsersHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), MeshIdentity.layer])
)
