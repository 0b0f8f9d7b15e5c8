/** The auth Worker: internal, reached through the router; asks users who has an email. */
import { Layer } from "effect"
import { Http, Retries, Worker } from "meshwork"
import { Accounts } from "./Accounts.ts"
import { AuthRoutes } from "./http.ts"
import { Credentials } from "./Passwords.ts"
import { Throttle } from "./Throttle.ts"
import { AccessTokens, RefreshTokens } from "./Tokens.ts"

export default Worker.make({
  name: "auth",
  layer: Http.layer(AuthRoutes).pipe(
    Layer.provide([Accounts.layer, Credentials.layer, AccessTokens.layer, RefreshTokens.layer, Throttle.layer]),
    Layer.provideMerge(Retries.layer)
  ),
  fetch: Http.serve
})
