/** The auth service's HTTP contract. Its token endpoints live under `/api/auth`. */
import { HttpApi, HttpApiMiddleware } from "effect/http-api"
import { HealthGroup } from "../shared/Health.ts"

export class AuthApi extends HttpApi.make("auth")
  .add(HealthGroup)
  .middleware(HttpApiMiddleware.ProblemDetails)
{}
