/**
 * `GET /console`: the mesh console (docs/console.md), a static page the docs
 * Worker serves (src/services/docs/console.ts) and the gateway forwards to it
 * over the DOCS binding, before routing (the gateway's routing table serves
 * `/api` only). The page reads and steers the mesh through the admin API.
 */
import * as Effect from "effect/Effect"
import { Bindings, pathOf, Problem, Proxy } from "meshwork"

export const consolePath = "/console"

/**
 * `handler` with the console in front: `GET`/`HEAD /console` and its assets
 * come from the docs Worker; everything else goes to `handler`.
 */
export const withConsole = <E, R>(handler: (request: Request) => Effect.Effect<Response, E, R>) =>
(request: Request): Effect.Effect<
  Response,
  E | Problem.NotFound | Problem.MethodNotAllowed | Problem.BadGateway | Problem.BadRequest,
  R | Bindings.WorkerEnv
> => {
  const path = pathOf(request.url)
  if (path !== consolePath && !path.startsWith(`${consolePath}/`)) return handler(request)
  if (request.method !== "GET" && request.method !== "HEAD") {
    return Effect.fail(new Problem.MethodNotAllowed({ allow: ["GET", "HEAD"], detail: `GET ${path}` }))
  }
  const notFound = (detail: string) => new Problem.NotFound({ detail })
  const unavailable = () => new Problem.BadGateway({ service: "docs", detail: "The docs Worker, which serves the console, did not answer" })
  // The path as the client sent it: one the docs Worker could read another way is refused, as the proxy refuses it.
  const docs = Bindings.fetcher("DOCS").pipe(
    Effect.mapError(() => notFound("The docs Worker, which serves the console, is not bound as DOCS"))
  )
  return Effect.andThen(Proxy.checkPath(path), docs).pipe(
    Effect.flatMap((docs) =>
      Effect.tryPromise({ try: () => docs.fetch(`http://docs.internal${path}`, { method: request.method }), catch: unavailable })
    ),
    Effect.flatMap((response): Effect.Effect<Response, Problem.NotFound | Problem.BadGateway> =>
      response.status === 404
        ? Effect.fail(notFound(`No console asset ${path}`))
        : response.ok || response.status === 304
        ? Effect.succeed(response)
        : Effect.fail(unavailable())
    )
  )
}
