/**
 * Serving `effect/http` routers (and so `effect/http-api` APIs) from a Worker.
 *
 * ```ts
 * export default Worker.make({
 *   name: "users",
 *   layer: Http.layer(HttpApiBuilder.layer(UsersApi).pipe(Layer.provide(UsersHandlers))),
 *   fetch: Http.serve
 * })
 * ```
 *
 * `layer` builds the routes once per isolate. `serve` runs them per request
 * without Effect's generic web-handler wrapper (no request logger, no
 * per-request fiber of its own: the adapter's fiber is reused) and renders
 * every failure as problem+json: unknown routes 404, unreadable bodies 400,
 * oversized bodies 413 and non-JSON bodies 415, before the API sees them.
 *
 * Not supported on this path: `HttpEffect.appendPreResponseHandler` (and so
 * `HttpApiBuilder.securitySetCookie`); set cookies on the response instead.
 */
import { Context, Effect, Layer, type Scope } from "effect"
import { HttpRouter, HttpServer, HttpServerError, HttpServerRequest, HttpServerResponse } from "effect/http"
import * as Problem from "./Problem.ts"
import type { Handler } from "./Worker.ts"

/** The built routes of this Worker, as one effect per request. */
export class HttpApp extends Context.Service<HttpApp, {
  readonly handle: Effect.Effect<
    HttpServerResponse.HttpServerResponse,
    unknown,
    HttpServerRequest.HttpServerRequest | Scope.Scope
  >
  readonly maxBodyBytes: number
}>()("meshwork/runtime/Http/HttpApp") {}

export interface Options {
  /** Largest request body accepted, in bytes (default 64 KiB). Larger bodies get 413. */
  readonly maxBodyBytes?: number | undefined
}

export const defaultMaxBodyBytes = 64 * 1024

/** Builds `routes` (an `HttpRouter` app, e.g. `HttpApiBuilder.layer(api)`) into the `HttpApp` service. */
export const layer = <A, E, R>(routes: Layer.Layer<A, E, R>, options?: Options) =>
  Layer.effect(
    HttpApp,
    Effect.map(HttpRouter.toHttpEffect(routes), (handle) =>
      HttpApp.of({
        // Route-level requirements are all provided by `routes` itself, which is what Http.layer is for.
        handle: handle as HttpApp["Service"]["handle"],
        maxBodyBytes: options?.maxBodyBytes ?? defaultMaxBodyBytes
      }))
  ).pipe(Layer.provide(HttpServer.layerServices))

const isJson = (contentType: string): boolean => contentType.split(";", 1)[0]!.trim().toLowerCase() === "application/json"

/**
 * Reads at most `limit` bytes of the body; fails with 413 past it. Workers
 * may stream a body without Content-Length, so the header alone is not enough.
 */
export const readLimited = (body: ReadableStream<Uint8Array>, limit: number) =>
  Effect.tryPromise({
    try: async () => {
      const reader = body.getReader()
      const chunks: Array<Uint8Array> = []
      let size = 0
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        size += value.byteLength
        if (size > limit) {
          await reader.cancel()
          return undefined
        }
        chunks.push(value)
      }
      const bytes = new Uint8Array(size)
      let offset = 0
      for (const chunk of chunks) {
        bytes.set(chunk, offset)
        offset += chunk.byteLength
      }
      return bytes
    },
    catch: () => new Problem.BadRequest({ detail: "The request body could not be read" })
  }).pipe(
    Effect.flatMap((bytes) =>
      bytes === undefined ? Effect.fail(new Problem.PayloadTooLarge({ limit })) : Effect.succeed(bytes)
    )
  )

/**
 * Checks a request body before the API decodes it: JSON only (415), at most
 * `limit` bytes (413). Returns the request to hand on, with the body buffered.
 */
export const guardBody = (
  request: Request,
  limit: number
): Effect.Effect<Request, Problem.UnsupportedMediaType | Problem.PayloadTooLarge | Problem.BadRequest> => {
  const body = request.body
  if (body === null) return Effect.succeed(request)
  // An empty body (a bodiless POST that went through a proxy) is no body, whatever its type.
  if (request.headers.get("content-length") === "0") return Effect.succeed(new Request(request, { body: null }))
  // A refused body is cancelled, so the Worker that streams it to us stops cleanly.
  const refuse = <E>(error: E) => Effect.andThen(Effect.promise(() => body.cancel()), Effect.fail(error))
  const contentType = request.headers.get("content-type")
  if (contentType === null || !isJson(contentType)) {
    return refuse(new Problem.UnsupportedMediaType({ detail: "Request bodies must be application/json" }))
  }
  const declared = request.headers.get("content-length")
  if (declared !== null && Number(declared) > limit) return refuse(new Problem.PayloadTooLarge({ limit }))
  return Effect.map(readLimited(body, limit), (bytes) => new Request(request, { body: bytes }))
}

const toProblem = (error: unknown) => {
  if (!HttpServerError.isHttpServerError(error)) return Effect.fail(error)
  const reason = error.reason
  switch (reason._tag) {
    case "RouteNotFound":
      return Effect.fail(new Problem.NotFound({ detail: `No route for ${reason.request.method} ${reason.request.url}` }))
    case "RequestParseError":
      return Effect.fail(new Problem.BadRequest({ detail: "The request could not be parsed" }))
    default:
      return Effect.fail(error)
  }
}

/** The fetch handler of a Worker whose layer provides `HttpApp`. */
export const serve: Handler<unknown, HttpApp> = (request) =>
  HttpApp.use((app) =>
    Effect.flatMap(guardBody(request, app.maxBodyBytes), (guarded) =>
      app.handle.pipe(
        Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(guarded)),
        Effect.scoped,
        Effect.map((response) => HttpServerResponse.toWeb(response, { withoutBody: request.method === "HEAD" })),
        Effect.catch(toProblem)
      )))
