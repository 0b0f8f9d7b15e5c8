/** The typed client other Workers use to call the users service over their `USERS` binding. */
import * as Context from "effect/Context"
import * as Layer from "effect/Layer"
import type { HttpApiClient } from "effect/http-api"
import { Retries, ServiceClient } from "meshwork"
import { UsersApi } from "./api.ts"

export class UsersClient extends Context.Service<UsersClient, HttpApiClient.ForApi<typeof UsersApi>>()(
  "meshwork/services/users/UsersClient"
) {
  /** Calls time out after 3 s; idempotent ones are retried when the caller's layer has `Retries`. */
  static readonly layer = Layer.effect(
    UsersClient,
    ServiceClient.make(UsersApi, "USERS", {
      timeoutMs: 3_000,
      policy: Retries.policy("users", { attempts: 3, deadlineMs: 5_000 })
    })
  )
}
