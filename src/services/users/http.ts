/** The users API's handlers, and the routes a Worker serves. */
import { Effect, Layer } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { healthy } from "../shared/Health.ts"
import { decodeCursor, defaultLimit, InvalidCursor, toPage } from "../shared/Pagination.ts"
import { UsersApi } from "./api.ts"
import { Users } from "./Users.ts"

const UsersHandlers = HttpApiBuilder.group(
  UsersApi,
  "users",
  Effect.fn(function*(handlers) {
    const users = yield* Users
    return handlers
      .handle("list", Effect.fnUntraced(function*({ query }) {
        const afterId = query.cursor === undefined ? undefined : decodeCursor(query.cursor)
        if (query.cursor !== undefined && afterId === undefined) return yield* new InvalidCursor()
        const limit = query.limit ?? defaultLimit
        return toPage(yield* users.list({ limit: limit + 1, afterId }), limit)
      }))
      .handle("create", ({ payload }) => users.create(payload))
      .handle("get", ({ params }) => users.get(params.id))
      .handle("update", ({ params, payload }) => users.update(params.id, payload))
      .handle("remove", ({ params }) => users.remove(params.id))
  })
)

const HealthHandlers = HttpApiBuilder.group(UsersApi, "health", (handlers) => handlers.handle("health", healthy("users")))

export const UsersRoutes = HttpApiBuilder.layer(UsersApi).pipe(
  Layer.provide([UsersHandlers, HealthHandlers]),
  Layer.provide(HttpApiMiddleware.layerProblemDetails({ includeDetails: true }))
)
