/**
 * The gateway's step around forwarding: authenticate, rate limit (when the
 * layer has `RateLimits`), replace the client's claimed identity with the
 * mesh's signed one, forward through the edge cache (when the layer has
 * `EdgeCache` and the route is cached), and put the `RateLimit` headers on
 * the answer. `/api/admin` is the gateway's own (admin.ts).
 */
import { Context, Effect } from "effect"
import { adminPrefix, authenticate, type Bindings, type Identity, EdgeCache, matchesPrefix, meshAdmin, Problem, type Proxy, type RateLimitDecision, rateLimitHeaders, rateLimitKey, RateLimits, withIdentity } from "meshwork"

const withHeaders = (response: Response, values: Record<string, string>): Response => {
  const copy = new Response(response.body, response)
  for (const [name, value] of Object.entries(values)) copy.headers.set(name, value)
  return copy
}

const anonymous = { kind: "anonymous" as const }

export const edge = (request: Request, forward: Proxy.Forward) =>
  Effect.withFiber((fiber) => {
    const limits = Context.getOrUndefined(fiber.context, RateLimits)
    const cache = Context.getOrUndefined(fiber.context, EdgeCache)
    // A request that fails authentication is still counted, against its address.
    return Effect.flatMap(Effect.exit(authenticate(request)), (authenticated) => {
      const identity = authenticated._tag === "Success" ? authenticated.value : anonymous
      const policy = limits?.policyFor(request)
      const proceed = (decision: RateLimitDecision | undefined): Effect.Effect<Response, unknown, Identity.IdentityKey | Bindings.Invocation | Bindings.WorkerEnv> => {
        if (authenticated._tag === "Failure") return Effect.failCause(authenticated.cause)
        if (matchesPrefix(new URL(request.url).pathname, adminPrefix)) return meshAdmin(request, identity)
        const upstream = (outgoing: Request) => Effect.flatMap(withIdentity(outgoing, identity), forward)
        const route = cache?.routeFor(request)
        const response = cache !== undefined && route !== undefined ? cache.serve(request, route, identity, upstream) : upstream(request)
        return decision === undefined ? response : Effect.map(response, (answer) => withHeaders(answer, rateLimitHeaders(decision)))
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
