/** The typed client other Workers use to call the users service over their `USERS` binding. */
import { Context, Layer } from "effect"
import type { HttpApiClient } from "effect/http-api"
import * as ServiceClient from "../../runtime/ServiceClient.ts"
import { UsersApi } from "./api.ts"

export class UsersClient extends Context.Service<UsersClient, HttpApiClient.ForApi<typeof UsersApi>>()(
  "meshwork/services/users/UsersClient"
) {
  static readonly layer = Layer.effect(UsersClient, ServiceClient.make(UsersApi, "USERS"))
}
