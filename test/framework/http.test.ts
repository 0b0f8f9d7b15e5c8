/**
 * Http.serve inside workerd: what reaches an `effect/http-api` handler, and
 * what a client gets for bodies the API must not see (415, 413, 400), with
 * the body read once and the request's scope closed after it.
 */
import { createExecutionContext } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Effect, Layer, Schema } from "effect"
import { Headers, HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpApi, HttpApiBuilder, HttpApiEndpoint, HttpApiGroup, HttpApiMiddleware, HttpApiSchema } from "effect/http-api"
import { describe, expect, it } from "vitest"
import * as Http from "../../src/runtime/Http.ts"
import * as Editable from "../../src/runtime/Editable.ts"
import { hostOf, pathOf, schemeOf } from "../../src/runtime/Url.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { expectProblem } from "../helpers.ts"

const NewNote = Schema.Struct({ title: Schema.String.check(Schema.isMinLength(1)), tags: Schema.Array(Schema.String) })
const Note = Schema.Struct({ id: Schema.String, title: Schema.String, tags: Schema.Array(Schema.String) })

class Notes extends HttpApiGroup.make("notes").add(
  HttpApiEndpoint.get("get", "/notes/:id", { params: { id: Schema.String.check(Schema.isMaxLength(8)) }, success: Note }),
  HttpApiEndpoint.post("create", "/notes", { payload: NewNote, success: Note.pipe(HttpApiSchema.status(201)) }),
  HttpApiEndpoint.post("touch", "/notes/:id/touch", { params: { id: Schema.String }, success: Schema.Struct({ touched: Schema.String }) }),
  HttpApiEndpoint.get("gone", "/gone", { success: Note, error: Problem.NotFound })
) {}

class NotesApi extends HttpApi.make("notes").add(Notes).middleware(HttpApiMiddleware.ProblemDetails) {}

/** Finalizers run by the request scopes of `/notes/:id` so far. */
let scopesClosed = 0

const NotesHandlers = HttpApiBuilder.group(NotesApi, "notes", (handlers) =>
  handlers
    .handle("get", ({ params }) =>
      Effect.as(Effect.addFinalizer(() => Effect.sync(() => scopesClosed++)), { id: params.id, title: "A note", tags: [] }))
    .handle("create", ({ payload }) => Effect.succeed({ id: "n1", ...payload }))
    .handle("touch", ({ params }) => Effect.succeed({ touched: params.id }))
    .handle("gone", () => Effect.fail(new Problem.NotFound({ detail: "No such note" }))))

const notesWorker = Worker.make({
  name: "notes",
  layer: Http.layer(
    HttpApiBuilder.layer(NotesApi).pipe(
      Layer.provide(NotesHandlers),
      Layer.provide(HttpApiMiddleware.layerProblemDetails({ includeDetails: true }))
    ),
    { maxBodyBytes: 1024 }
  ),
  fetch: Http.serve
})

/** A raw route that reports how its body reads through every accessor of the request. */
const rawWorker = Worker.make({
  name: "raw",
  layer: Http.layer(
    HttpRouter.add(
      "POST",
      "/raw",
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const text = yield* request.text
        const json = yield* request.json
        const bytes = new Uint8Array(yield* request.arrayBuffer)
        const again = yield* request.text
        const rewritten = yield* request.modify({ url: "/elsewhere" }).text
        return HttpServerResponse.jsonUnsafe({ text, json, bytes: bytes.byteLength, again, rewritten })
      })
    ).pipe(Layer.provideMerge(HttpRouter.add(
      "GET",
      "/headers",
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const headers = request.headers
        // In this order: read by name first, then listed (which copies them), then changed.
        const byName = {
          byName: [headers["x-one"], headers["X-One"], headers["x-absent"], headers["two words"]],
          isHeaders: Headers.isHeaders(headers),
          has: ["x-one" in headers, "x-absent" in headers, "toJSON" in headers],
          constructorIsHeader: headers["constructor"],
          toJSONIsMethod: typeof headers["toJSON"],
          kept: request.modify({ url: "/elsewhere" }).headers["x-one"],
          cookies: request.cookies
        }
        const listed = { ...headers }
        const redacted = Headers.redact(headers, "authorization")["authorization"] !== "secret"
        const rewritten = request.modify({ headers: Headers.set(headers, "x-added", "yes") }).headers
        return HttpServerResponse.jsonUnsafe({
          ...byName,
          listed,
          redacted,
          rewritten: { added: rewritten["x-added"], kept: rewritten["x-one"], original: headers["x-added"] ?? null }
        })
      })
    )))
  ),
  fetch: Http.serve
})

const call = (worker: ExportedHandler<object>, path: string, init?: RequestInit) =>
  worker.fetch!(
    new Request(`http://notes.internal${path}`, init) as Request<unknown, IncomingRequestCfProperties>,
    env,
    createExecutionContext()
  )

const json = { "content-type": "application/json" }

/** A body streamed in `count` chunks of `size` bytes, its length not announced. */
const streamed = (text: string, chunks = 4) => {
  const bytes = new TextEncoder().encode(text)
  const size = Math.ceil(bytes.byteLength / chunks)
  let offset = 0
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= bytes.byteLength) return controller.close()
      controller.enqueue(bytes.slice(offset, offset + size))
      offset += size
    }
  })
}

describe("Http.serve", () => {
  it("decodes a JSON body that declares its length", async () => {
    const response = await call(notesWorker, "/notes", {
      method: "POST",
      headers: json,
      body: JSON.stringify({ title: "Hello", tags: ["a"] })
    })
    expect(response.status).toBe(201)
    expect(await response.json()).toEqual({ id: "n1", title: "Hello", tags: ["a"] })
  })

  it("decodes a JSON body streamed without a length, in chunks", async () => {
    const body = JSON.stringify({ title: "Streamed é", tags: ["x", "y"] })
    const response = await call(notesWorker, "/notes", { method: "POST", headers: json, body: streamed(body, 5) })
    expect(response.status).toBe(201)
    expect(await response.json()).toEqual({ id: "n1", title: "Streamed é", tags: ["x", "y"] })
  })

  it("gives a raw route the body once read through text, json, arrayBuffer and a rewritten request", async () => {
    const body = JSON.stringify({ word: "héllo" })
    for (const init of [{ body }, { body: streamed(body, 3) }]) {
      const response = await call(rawWorker, "/raw", { method: "POST", headers: json, ...init })
      expect(response.status).toBe(200)
      expect(await response.json()).toEqual({
        text: body,
        json: { word: "héllo" },
        bytes: new TextEncoder().encode(body).byteLength,
        again: body,
        rewritten: body
      })
    }
  })

  it("gives a route the request's headers by name, listed, checked and rewritten, as Effect's Headers", async () => {
    const response = await call(rawWorker, "/headers", {
      headers: { "X-One": "1", "tojson": "not a method", "constructor": "a header", authorization: "secret", cookie: "a=1; b=two" }
    })
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({
      byName: ["1", null, null, null],
      isHeaders: true,
      listed: { "x-one": "1", tojson: "not a method", constructor: "a header", authorization: "secret", cookie: "a=1; b=two" },
      has: [true, false, true],
      constructorIsHeader: "a header",
      toJSONIsMethod: "function",
      redacted: true,
      rewritten: { added: "yes", kept: "1", original: null },
      kept: "1",
      cookies: { a: "1", b: "two" }
    })
  })

  it.each([
    ["text/plain", "text/plain"],
    ["form data", "application/x-www-form-urlencoded"],
    ["JSON-like", "application/merge-patch+json"],
    ["no content type", undefined]
  ])("answers a %s body with 415", async (_, contentType) => {
    const response = await call(notesWorker, "/notes", {
      method: "POST",
      body: new TextEncoder().encode(JSON.stringify({ title: "x", tags: [] })),
      ...(contentType === undefined ? {} : { headers: { "content-type": contentType } })
    })
    await expectProblem(response, 415)
  })

  it("answers a body whose declared length is over the limit with 413", async () => {
    const body = JSON.stringify({ title: "x".repeat(2000), tags: [] })
    expect(await expectProblem(await call(notesWorker, "/notes", { method: "POST", headers: json, body }), 413)).toMatchObject({ limit: 1024 })
  })

  it("answers a streamed body without a length over the limit with 413", async () => {
    const body = streamed(JSON.stringify({ title: "x".repeat(4000), tags: [] }), 8)
    expect(await expectProblem(await call(notesWorker, "/notes", { method: "POST", headers: json, body }), 413)).toMatchObject({ limit: 1024 })
  })

  it("answers a body longer than its declared length, past the limit, with 413", async () => {
    // workerd holds HTTP bodies to their Content-Length, not a Request made in a Worker.
    const response = await call(notesWorker, "/notes", {
      method: "POST",
      headers: { ...json, "content-length": "20" },
      body: JSON.stringify({ title: "x".repeat(4000), tags: [] })
    })
    expect(await expectProblem(response, 413)).toMatchObject({ limit: 1024 })
  })

  it("takes an empty body as none, whatever its type", async () => {
    // As a bodiless POST arrives over HTTP: Content-Length 0, no type.
    const response = await call(notesWorker, "/notes/n1/touch", { method: "POST", body: new Uint8Array(0), headers: { "content-length": "0" } })
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ touched: "n1" })
  })

  it("takes a POST without a body as one without a payload", async () => {
    const response = await call(notesWorker, "/notes/n2/touch", { method: "POST" })
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ touched: "n2" })
  })

  it.each([
    ["not JSON", "{not json"],
    ["an empty JSON body", ""],
    ["a missing field", JSON.stringify({ title: "x" })],
    ["a blank title", JSON.stringify({ title: "", tags: [] })]
  ])("answers %s with 400", async (_, body) => {
    await expectProblem(await call(notesWorker, "/notes", { method: "POST", headers: json, body: new TextEncoder().encode(body) }), 400)
  })

  it("answers an invalid path parameter with 400 naming it", async () => {
    const problem = await expectProblem(await call(notesWorker, "/notes/far-too-long"), 400)
    expect(problem["errors"]).toEqual([expect.objectContaining({ path: ["params", "id"] })])
  })

  it("answers an unknown route with 404, and a typed failure with its status", async () => {
    await expectProblem(await call(notesWorker, "/nowhere"), 404)
    expect(await expectProblem(await call(notesWorker, "/gone"), 404)).toMatchObject({ detail: "No such note" })
  })

  it("closes each request's scope when its response is made", async () => {
    const before = scopesClosed
    for (let i = 0; i < 3; i++) {
      const response = await call(notesWorker, `/notes/n${i}`)
      expect(await response.json()).toEqual({ id: `n${i}`, title: "A note", tags: [] })
    }
    expect(scopesClosed).toBe(before + 3)
  })

  it("answers HEAD without a body", async () => {
    const response = await call(notesWorker, "/notes/n1", { method: "HEAD" })
    expect(response.status).toBe(200)
    expect(await response.text()).toBe("")
  })
})

describe("Http.readBody", () => {
  const read = (request: Request, limit = 16) => Effect.runPromise(Effect.result(Http.readBody(request, limit)))
  const post = (body: BodyInit, headers: Record<string, string> = {}) => new Request("http://x/", { method: "POST", body, headers })

  it("reads a body with a declared length, or streamed, up to the limit", async () => {
    for (const request of [post("0123456789abcdef"), post(streamed("0123456789abcdef", 3))]) {
      const result = await read(request)
      expect(result._tag).toBe("Success")
      if (result._tag === "Success") expect(new TextDecoder().decode(result.success)).toBe("0123456789abcdef")
    }
  })

  it("refuses a body past the limit, declared, streamed or understated, with PayloadTooLarge", async () => {
    for (const request of [post("0123456789abcdefX"), post(streamed("0123456789abcdefX", 3)), post("0123456789abcdefX", { "content-length": "4" })]) {
      const result = await read(request)
      expect(result._tag === "Failure" && result.failure._tag).toBe("PayloadTooLarge")
    }
  })
})

describe("pathOf and editable copies", () => {
  it("reads a URL's path, host and scheme as new URL does, without parsing it", () => {
    const urls = [
      "http://a/b?c#d",
      "https://user:pw@host.example:8443/p/a%2Fth;x?q=//x#f",
      "http://[::1]:8787/x",
      "http://h",
      "http://h?x",
      "http://h#y",
      "http://h/a#b?c",
      "https://x.internal/api/users/%C3%A9",
      "http://h:80/a/./b/../c",
      "http://u@h/p"
    ]
    for (const raw of urls) {
      // A request's url is serialized by the runtime, as the request path sees it.
      const url = new Request(raw).url
      const parsed = new URL(url)
      expect([pathOf(url), hostOf(url), schemeOf(url)]).toEqual([parsed.pathname, parsed.hostname, parsed.protocol.slice(0, -1)])
    }
    expect(pathOf("/api/users?x=1")).toBe("/api/users")
  })

  it("copies a response once to set its headers, then sets them in place", async () => {
    // Like a fetched response, a redirect's headers are immutable.
    const fetched = Response.redirect("http://example.test/next", 302)
    expect(() => fetched.headers.set("x-first", "1")).toThrow()
    const first = Editable.response(fetched)
    first.headers.set("x-first", "1")
    const second = Editable.response(first)
    expect(second).toBe(first)
    second.headers.set("x-second", "2")
    expect([second.status, second.headers.get("location"), second.headers.get("x-first"), second.headers.get("x-second")])
      .toEqual([302, "http://example.test/next", "1", "2"])
    // One made elsewhere is copied, its own left as it was.
    const other = new Response("y", { headers: { "x-own": "1" } })
    const copy = Editable.response(other)
    expect(copy).not.toBe(other)
    copy.headers.set("x-own", "2")
    expect(other.headers.get("x-own")).toBe("1")
    expect(await copy.text()).toBe("y")
  })

  it("lets a request copied for a hop be changed in place once: a second taker copies it", () => {
    const incoming = new Request("http://gateway.test/api/users", { headers: { "x-client": "1" } })
    expect(Editable.takeRequest(incoming)).toBe(false)
    const outgoing = Editable.request(incoming)
    outgoing.headers.set("x-hop", "1")
    expect(incoming.headers.get("x-hop")).toBeNull()
    expect(Editable.takeRequest(outgoing)).toBe(true)
    expect(Editable.takeRequest(outgoing)).toBe(false)
  })
})
