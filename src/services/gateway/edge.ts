/**
 * The gateway's step around forwarding: authenticate (a bearer token, or an
 * API key when the layer has `ApiKeyAuthenticator`), rate limit (when the
 * layer has `RateLimits`), count an API key's quota, replace the client's claimed identity with the
 * mesh's signed one, forward through the edge cache (when the layer has
 * `EdgeCache` and the route is cached), and put the `RateLimit` headers on
 * the answer. `/api/admin` (MeshAdmin) and the API's description
 * (`/api/openapi.json`, `/api/docs`: docs.ts) are the gateway's own, answered
 * here after authentication and rate limits, never forwarded.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { ApiDocs } from "./docs.ts"
import {
  adminPrefix,
  ApiKeyAuthenticator,
  authenticate,
  authenticateClient,
  type Authenticator,
  type Bindings,
  type Client,
  EdgeCache,
  editableResponse,
  type Identity,
  matchesPrefix,
  meshAdmin,
  pathOf,
  Problem,
  type Proxy,
  type PublicRoutes,
  quotaHeaders,
  quotaRefusal,
  type RateLimitDecision,
  rateLimitHeaders,
  rateLimitKey,
  RateLimits,
  withIdentity
} from "meshwork"

const withHeaders = (response: Response, values: Record<string, string>): Response => {
  const copy = editableResponse(response)
  for (const [name, value] of Object.entries(values)) copy.headers.set(name, value)
  return copy
}

const anonymous = { kind: "anonymous" as const }

/** Two sets of `RateLimit` headers as one: each field's lists joined (a structured-field list). */
const joinHeaders = (first: Record<string, string> | undefined, second: Record<string, string>): Record<string, string> => {
  if (first === undefined) return second
  const joined = { ...first }
  for (const [name, value] of Object.entries(second)) joined[name] = joined[name] === undefined ? value : `${joined[name]}, ${value}`
  return joined
}

export const edge = (request: Request, forward: Proxy.Forward) =>
  Effect.withFiber((fiber) => {
    const limits = Context.getOrUndefined(fiber.context, RateLimits)
    const cache = Context.getOrUndefined(fiber.context, EdgeCache)
    const docs = Context.getOrUndefined(fiber.context, ApiDocs)
    const keys = Context.getOrUndefined(fiber.context, ApiKeyAuthenticator)
    // A request that fails authentication is still counted, against its address.
    const authenticating: Effect.Effect<Identity.Identity | Client, unknown, PublicRoutes | Authenticator> = keys === undefined
      ? authenticate(request)
      : authenticateClient(request)
    return Effect.flatMap(Effect.exit(authenticating), (authenticated) => {
      const client = authenticated._tag === "Success" ? authenticated.value : anonymous
      const identity = "kind" in client ? client : client.identity
      const key = "kind" in client ? undefined : client.key
      const policy = limits?.policyFor(request)
      type Answer = Effect.Effect<Response, unknown, Identity.IdentityKey | Bindings.Invocation | Bindings.WorkerEnv>
      const answer = (headers: Record<string, string> | undefined): Answer => {
        const path = pathOf(request.url)
        if (matchesPrefix(path, adminPrefix)) return meshAdmin(request, identity)
        if (docs !== undefined && docs.serves(path)) return docs.serve(request)
        const upstream = (outgoing: Request) => Effect.flatMap(withIdentity(outgoing, identity), forward)
        const route = cache?.routeFor(request)
        const response = cache !== undefined && route !== undefined ? cache.serve(request, route, identity, upstream) : upstream(request)
        return headers === undefined ? response : Effect.map(response, (answered) => withHeaders(answered, headers))
      }
      const proceed = (decision: RateLimitDecision | undefined): Answer => {
        if (authenticated._tag === "Failure") return Effect.failCause(authenticated.cause)
        const limited = decision === undefined ? undefined : rateLimitHeaders(decision)
        if (key === undefined || keys === undefined) return answer(limited)
        // An API key's quota, after the client's rate limit: a refused request uses none of it.
        return Effect.flatMap(keys.consume(key), (quota) => {
          const headers = joinHeaders(limited, quotaHeaders(quota))
          return quota.allowed ? answer(headers) : Effect.succeed(withHeaders(Problem.fromError(quotaRefusal(quota)), headers))
        })
      }
      if (limits === undefined || policy === undefined) return proceed(undefined)
      return limits.consume(policy, rateLimitKey(identity, request)).pipe(
        Effect.matchEffect({
          onSuccess: proceed,
          onFailure: (error) =>
            error._tag === "TooManyRequests"
              ? Effect.succeed(withHeaders(
                Problem.fromError(error),
                rateLimitHeaders({ policy, remaining: 0, resetSeconds: error.retryAfterSeconds ?? policy.windowSeconds })
              ))
              : Effect.fail(error)
        })
      )
    })
  })
