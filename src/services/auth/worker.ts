/** The auth Worker: internal, reached through the router; asks users who has an email. */
import * as Layer from "effect/Layer"
import { Http, Queues, Retries, Worker } from "meshwork"
import { userDeletionsQueue } from "../users/api.ts"
import { Accounts } from "./Accounts.ts"
import { ApiKeys } from "./ApiKeys.ts"
import { Deletions, deletionsConsumer } from "./Deletions.ts"
import { AuthRoutes } from "./http.ts"
import { Credentials } from "./Passwords.ts"
import { Throttle } from "./Throttle.ts"
import { AccessTokens, RefreshTokens } from "./Tokens.ts"

export default Worker.make({
  name: "auth",
  layer: Layer.mergeAll(Http.layer(AuthRoutes), Deletions.layer).pipe(
    Layer.provide([Accounts.layer, Credentials.layer, AccessTokens.layer, RefreshTokens.layer, Throttle.layer, ApiKeys.layer]),
    Layer.provideMerge(Retries.layer)
  ),
  fetch: Http.serve,
  // Users the users service deleted: their credentials and refresh tokens go too.
  queue: Queues.route({ [userDeletionsQueue]: deletionsConsumer })
})
