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
 * A body is read once, here (see `readBody`); the API's decoders get its
 * bytes and text without reading the stream again.
 *
 * Not supported on this path: `HttpEffect.appendPreResponseHandler` (and so
 * `HttpApiBuilder.securitySetCookie`); set cookies on the response instead.
 */
import type { Schema } from "effect"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Inspectable from "effect/Inspectable"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Cookies from "effect/http/Cookies"
import * as HttpHeaders from "effect/http/Headers"
import * as HttpIncomingMessage from "effect/http/HttpIncomingMessage"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServer from "effect/http/HttpServer"
import * as HttpServerError from "effect/http/HttpServerError"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as UrlParams from "effect/http/UrlParams"
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

/** A Content-Length header's value, when it is one (digits only). */
const declaredLength = (header: string | null): number | undefined =>
  header !== null && /^\d+$/.test(header) ? Number(header) : undefined

const unreadable = () => new Problem.BadRequest({ detail: "The request body could not be read" })

const decoder = new TextDecoder()
const noBytes = new Uint8Array(0)

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
      if (chunks.length === 1) return chunks[0]!
      const bytes = new Uint8Array(size)
      let offset = 0
      for (const chunk of chunks) {
        bytes.set(chunk, offset)
        offset += chunk.byteLength
      }
      return bytes
    },
    catch: unreadable
  }).pipe(
    Effect.flatMap((bytes) =>
      bytes === undefined ? Effect.fail(new Problem.PayloadTooLarge({ limit })) : Effect.succeed(bytes)
    )
  )

/**
 * Reads the body of `request`, at most `limit` bytes (else 413). A body that
 * declares its length is read by the runtime in one call, which measured
 * about 1.5x the throughput of a read loop in workerd; its size is checked
 * once read (workerd holds HTTP bodies to their Content-Length, but not one
 * that another Worker streams over a service binding). A body without one
 * is read chunk by chunk and cut off past the limit.
 */
export const readBody = (
  request: Request,
  limit: number
): Effect.Effect<Uint8Array, Problem.PayloadTooLarge | Problem.BadRequest> =>
  readDeclared(request, limit, declaredLength(request.headers.get("content-length")))

/** `readBody`, the declared length already read (the stream is not touched when there is one). */
const readDeclared = (
  request: Request,
  limit: number,
  declared: number | undefined
): Effect.Effect<Uint8Array, Problem.PayloadTooLarge | Problem.BadRequest> => {
  if (declared === undefined) {
    const body = request.body
    return body === null ? Effect.succeed(noBytes) : readLimited(body, limit)
  }
  if (declared > limit) return refuse(request, new Problem.PayloadTooLarge({ limit }))
  return Effect.flatMap(
    Effect.tryPromise({ try: () => request.arrayBuffer(), catch: unreadable }),
    (buffer) => buffer.byteLength > limit ? Effect.fail(new Problem.PayloadTooLarge({ limit })) : Effect.succeed(new Uint8Array(buffer))
  )
}

/** Fails with `error`, the body cancelled first, so the Worker that streams it to us stops cleanly. */
const refuse = <E>(request: Request, error: E): Effect.Effect<never, E> => {
  const body = request.body
  return body === null ? Effect.fail(error) : Effect.andThen(Effect.promise(() => body.cancel()), Effect.fail(error))
}

/** A name `Headers.get` accepts, lowercase (the only keys an Effect `Headers` has). */
const headerName = /^[a-z0-9!#$%&'*+.^_`|~-]+$/

/**
 * `headers` as an Effect `Headers`, read on demand: a lookup or a check by
 * name asks the Web headers (what an API's decoders, header schemas and
 * security do, a few names per request); anything that lists or changes them
 * copies them all once first.
 * Copying them all up front (what `fromWeb` does) cost about 5% of a
 * validated POST's CPU, more with a mesh hop's dozen headers.
 */
const lazyHeaders = (headers: Headers): HttpHeaders.Headers => {
  const target = Object.create(Object.getPrototypeOf(HttpHeaders.empty)) as Record<string, string>
  let copied = false
  const copy = () => {
    if (copied) return target
    copied = true
    for (const [name, value] of headers) target[name] = value
    return target
  }
  return new Proxy(target, {
    // Until copied, the target has no own properties: what is not a header is its prototype's.
    get: (_, key, receiver) => {
      if (!copied && typeof key === "string" && headerName.test(key)) {
        const value = headers.get(key)
        if (value !== null) return value
      }
      return Reflect.get(target, key, receiver)
    },
    has: (_, key) => (!copied && typeof key === "string" && headerName.test(key) && headers.has(key)) || Reflect.has(target, key),
    ownKeys: () => Reflect.ownKeys(copy()),
    getOwnPropertyDescriptor: (_, key) => Reflect.getOwnPropertyDescriptor(copy(), key),
    set: (_, key, value, receiver) => Reflect.set(copy(), key, value, receiver),
    defineProperty: (_, key, descriptor) => Reflect.defineProperty(copy(), key, descriptor),
    deleteProperty: (_, key) => Reflect.deleteProperty(copy(), key)
  }) as unknown as HttpHeaders.Headers
}

/** A request body read once: its bytes and its text. */
interface ReadBody {
  readonly bytes: Uint8Array
  readonly text: string
}

const emptyBody: ReadBody = { bytes: noBytes, text: "" }

/**
 * `request` as the API gets it. Its headers are read on demand (see
 * `lazyHeaders`), its cookies from them. When its body was read here, every body accessor answers
 * from that (the text decoded once), so Effect's decoders never read the
 * stream again, and a request a router rewrites (`modify`) keeps it. The
 * rest is `request`'s own.
 */
class ServedRequest implements HttpServerRequest.HttpServerRequest {
  readonly [HttpServerRequest.TypeId] = HttpServerRequest.TypeId
  readonly [HttpIncomingMessage.TypeId] = HttpIncomingMessage.TypeId
  readonly #request: HttpServerRequest.HttpServerRequest
  readonly #body: ReadBody | undefined
  #headers: HttpHeaders.Headers | undefined
  #cookies: Record<string, string> | undefined

  constructor(request: HttpServerRequest.HttpServerRequest, body?: ReadBody, headers?: HttpHeaders.Headers) {
    this.#request = request
    this.#body = body
    this.#headers = headers
  }

  get text(): Effect.Effect<string, HttpServerError.HttpServerError> {
    return this.#body === undefined ? this.#request.text : Effect.succeed(this.#body.text)
  }
  get arrayBuffer(): Effect.Effect<ArrayBuffer, HttpServerError.HttpServerError> {
    if (this.#body === undefined) return this.#request.arrayBuffer
    const bytes = this.#body.bytes
    return Effect.succeed(
      (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.slice().buffer) as ArrayBuffer
    )
  }
  get json(): Effect.Effect<Schema.Json, HttpServerError.HttpServerError> {
    const body = this.#body
    if (body === undefined) return this.#request.json
    return Effect.try({
      try: () => JSON.parse(body.text) as Schema.Json,
      catch: (cause) => new HttpServerError.HttpServerError({ reason: new HttpServerError.RequestParseError({ request: this, cause }) })
    })
  }
  get urlParamsBody(): Effect.Effect<UrlParams.UrlParams, HttpServerError.HttpServerError> {
    const body = this.#body
    return body === undefined ? this.#request.urlParamsBody : Effect.succeed(UrlParams.fromInput(new URLSearchParams(body.text)))
  }
  get stream(): Stream.Stream<Uint8Array, HttpServerError.HttpServerError> {
    return this.#body === undefined ? this.#request.stream : Stream.make(this.#body.bytes)
  }
  get headers(): HttpHeaders.Headers {
    // The source is the Web request `served` was given.
    return this.#headers ??= lazyHeaders((this.#request.source as Request).headers)
  }
  modify(options: Parameters<HttpServerRequest.HttpServerRequest["modify"]>[0]): HttpServerRequest.HttpServerRequest {
    // New headers are the modified request's own; otherwise these still are (made on demand
    // from the same source if not yet asked for).
    const modified = this.#request.modify(options)
    return new ServedRequest(modified, this.#body, options.headers === undefined ? this.#headers : modified.headers)
  }

  get source() {
    return this.#request.source
  }
  get url() {
    return this.#request.url
  }
  get originalUrl() {
    return this.#request.originalUrl
  }
  get method() {
    return this.#request.method
  }
  get cookies(): Record<string, string> {
    // From these headers: the wrapped request's would copy every header to read one.
    return this.#cookies ??= Cookies.parseHeader(this.headers["cookie"] ?? "")
  }
  get remoteAddress() {
    return this.#request.remoteAddress
  }
  get peerAddress() {
    return this.#request.peerAddress
  }
  get protocol() {
    return this.#request.protocol
  }
  get multipart() {
    return this.#request.multipart
  }
  get multipartStream() {
    return this.#request.multipartStream
  }
  get upgrade() {
    return this.#request.upgrade
  }
  upgradeWith(options: Parameters<HttpServerRequest.HttpServerRequest["upgradeWith"]>[0]) {
    return this.#request.upgradeWith(options)
  }
  toJSON() {
    return this.#request.toJSON()
  }
  toString() {
    return this.#request.toString()
  }
  [Inspectable.NodeInspectSymbol]() {
    return this.#request[Inspectable.NodeInspectSymbol]()
  }
}

/** `request` as the API gets it, its body (if read) `body`. */
const served = (request: Request, body?: ReadBody): HttpServerRequest.HttpServerRequest =>
  new ServedRequest(HttpServerRequest.fromWeb(request), body)

/**
 * A request without a body, without a content type that is not JSON: there
 * is no body for it to describe, and the API would answer it with a
 * plain-text 415 of its own instead of a problem.
 */
const untyped = (request: Request): Request => {
  // GET and HEAD payloads come from the query: their content type is never read.
  if (request.method === "GET" || request.method === "HEAD") return request
  const contentType = request.headers.get("content-type")
  if (contentType === null || isJson(contentType)) return request
  const headers = new Headers(request.headers)
  headers.delete("content-type")
  return new Request(request, { headers })
}

/**
 * Checks a request body before the API decodes it: JSON only (415), at most
 * `limit` bytes (413), an empty body as none, and reads it once (see
 * `readBody`). Returns the request the API gets.
 */
export const guardBody = (
  request: Request,
  limit: number
): Effect.Effect<
  HttpServerRequest.HttpServerRequest,
  Problem.UnsupportedMediaType | Problem.PayloadTooLarge | Problem.BadRequest
> => {
  const length = request.headers.get("content-length")
  // An empty body (a bodiless POST that went through a proxy) is no body, whatever its type.
  if (length === "0") return Effect.succeed(served(untyped(request), emptyBody))
  // Whether there is a body at all is asked only when no length says so (the stream is made on demand).
  if (length === null && request.body === null) return Effect.succeed(served(untyped(request)))
  const contentType = request.headers.get("content-type")
  if (contentType === null || !isJson(contentType)) {
    return refuse(request, new Problem.UnsupportedMediaType({ detail: "Request bodies must be application/json" }))
  }
  return Effect.map(
    readDeclared(request, limit, declaredLength(length)),
    (bytes) => served(request, { bytes, text: decoder.decode(bytes) })
  )
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

/** A typed failure of the routes as the problem a client gets; anything else as it is. */
const failureToProblem = (cause: Cause.Cause<unknown>) => {
  const error = Cause.findErrorOption(cause)
  return error._tag === "Some" && HttpServerError.isHttpServerError(error.value) ? toProblem(error.value) : Effect.failCause(cause)
}

/**
 * The Web response of `response`. A JSON or text body (what an API answers)
 * goes straight into one `Response`, its headers as they are; anything else
 * through Effect's `toWeb`.
 */
const toWeb = (response: HttpServerResponse.HttpServerResponse, head: boolean): Response => {
  const body = response.body
  if (head || body._tag !== "Uint8Array" || HttpServerResponse.omitsBody(response) || !Cookies.isEmpty(response.cookies)) {
    return HttpServerResponse.toWeb(response, { withoutBody: head })
  }
  const init: ResponseInit = { status: response.status, headers: response.headers }
  if (response.statusText !== undefined) init.statusText = response.statusText
  return new Response(body.text ?? body.body, init)
}

/**
 * Runs the routes on `httpRequest` in one step: the request and a fresh scope
 * in the fiber's context (restored after), the scope closed when the routes
 * are done, then the response made or the failure mapped, in one continuation.
 */
const respond = (app: HttpApp["Service"], httpRequest: HttpServerRequest.HttpServerRequest, head: boolean) => {
  const scope = Scope.makeUnsafe()
  const after = <A>(exit: Exit.Exit<unknown, unknown>, next: Effect.Effect<A, unknown>): Effect.Effect<A, unknown> => {
    const closing = Scope.closeUnsafe(scope, exit)
    return closing === undefined ? next : Effect.andThen(closing, next)
  }
  return Effect.matchCauseEffect(
    Effect.updateContext(app.handle, (context: Context.Context<never>) =>
      Context.add(Context.add(context, HttpServerRequest.HttpServerRequest, httpRequest), Scope.Scope, scope)),
    {
      onSuccess: (response) => after(Exit.void, Effect.succeed(toWeb(response, head))),
      onFailure: (cause) => after(Exit.failCause(cause), failureToProblem(cause))
    }
  )
}

/** The fetch handler of a Worker whose layer provides `HttpApp`. */
export const serve: Handler<unknown, HttpApp> = (request) =>
  Effect.withFiber((fiber) => {
    const app = Context.getUnsafe(fiber.context as Context.Context<HttpApp>, HttpApp)
    const method = request.method
    const head = method === "HEAD"
    // GET and HEAD have no body to read (their payloads come from the query): no effect to read one.
    if (method === "GET" || head) return respond(app, served(request), head)
    return Effect.flatMap(guardBody(request, app.maxBodyBytes), (httpRequest) => respond(app, httpRequest, head))
  })
