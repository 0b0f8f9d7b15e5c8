/**
 * The gateway's step around forwarding: authenticate, rate limit (when the
 * layer has `RateLimits`), replace the client's claimed identity with the
 * mesh's signed one, forward through the edge cache (when the layer has
 * `EdgeCache` and the route is cached), and put the `RateLimit` headers on
 * the answer. `/api/admin` is the gateway's own (admin.ts).
 */
import { Effect } from "effect"
import { adminPrefix, authenticate, EdgeCache, matchesPrefix, meshAdmin, Problem, type Proxy, type RateLimitDecision, rateLimitHeaders, rateLimitKey, RateLimits, withIdentity } from "meshwork"

const withHeaders = (response: Response, values: Record<string, string>): Response => {
  const copy = new Response(response.body, response)
  for (const [name, value] of Object.entries(values)) copy.headers.set(name, value)
  return copy
}

export const edge = (request: Request, forward: Proxy.Forward) =>
  Effect.gen(function*() {
    // A request that fails authentication is still counted, against its address.
    const authenticated = yield* Effect.exit(authenticate(request))
    const identity = authenticated._tag === "Success" ? authenticated.value : { kind: "anonymous" as const }
    const limits = yield* Effect.serviceOption(RateLimits)
    const policy = limits._tag === "Some" ? limits.value.policyFor(request) : undefined
    let decision: RateLimitDecision | undefined
    if (limits._tag === "Some" && policy !== undefined) {
      const counted = yield* limits.value.consume(policy, rateLimitKey(identity, request)).pipe(
        Effect.catchTag("TooManyRequests", (refused) =>
          Effect.succeed(withHeaders(
            Problem.fromError(refused),
            rateLimitHeaders({ policy, remaining: 0, resetSeconds: refused.retryAfterSeconds ?? policy.windowSeconds })
          )))
      )
      if (counted instanceof Response) return counted
      decision = counted
    }
    if (authenticated._tag === "Failure") return yield* Effect.failCause(authenticated.cause)
    if (matchesPrefix(new URL(request.url).pathname, adminPrefix)) return yield* meshAdmin(request, identity)
    const upstream = (outgoing: Request) => Effect.flatMap(withIdentity(outgoing, identity), forward)
    const cache = yield* Effect.serviceOption(EdgeCache)
    const route = cache._tag === "Some" ? cache.value.routeFor(request) : undefined
    const response = cache._tag === "Some" && route !== undefined
      ? yield* cache.value.serve(request, route, identity, upstream)
      : yield* upstream(request)
    return decision === undefined ? response : withHeaders(response, rateLimitHeaders(decision))
  })
