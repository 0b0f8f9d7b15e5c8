/** The auth API's handlers, and the routes a Worker serves. */
import { Layer } from "effect"
import { HttpApiBuilder, HttpApiMiddleware } from "effect/http-api"
import { healthy } from "../shared/Health.ts"
import { AuthApi } from "./api.ts"

const HealthHandlers = HttpApiBuilder.group(AuthApi, "health", (handlers) => handlers.handle("health", healthy("auth")))

export const AuthRoutes = HttpApiBuilder.layer(AuthApi).pipe(
  Layer.provide(HealthHandlers),
  Layer.provide(HttpApiMiddleware.layerProblemDetails({ includeDetails: true }))
)
