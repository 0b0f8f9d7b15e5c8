/**
 * The gateway's description of the mesh's API, public and cacheable:
 *
 *   GET /api/openapi.json    the OpenAPI 3.1 document of every public route (api.ts)
 *   GET /api/docs            Scalar's API reference over it
 *   GET /api/docs/scalar.js  Scalar's script, from the docs Worker (DOCS binding): the page loads
 *                            nothing from elsewhere, and this bundle stays free of its 3.2 MB
 *
 * Each is built on its first request in an isolate and kept: the document is
 * generated from the same `effect/http-api` definitions the services serve,
 * with this gateway's `PUBLIC_ROUTES` marked as needing no credentials.
 * Answers carry a strong `ETag` (a `304` for a matching `If-None-Match`) and
 * `Cache-Control`.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as OpenApi from "effect/http-api/OpenApi"
import { Bindings, Problem, PublicRoutes } from "meshwork"
import { PublicApi } from "./api.ts"
import { pageHeaders } from "./pages.ts"

export const openApiPath = "/api/openapi.json"
export const docsPath = "/api/docs"
export const scalarPath = "/api/docs/scalar.js"

/** How long clients and caches may keep the document and the page: a deploy shows within 5 minutes. */
const maxAgeSeconds = 300

const methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]

type Operation = { security?: Array<Record<string, Array<string>>> }

/**
 * The OpenAPI document as this gateway serves it: every operation of
 * `PublicApi`, those that `isPublic` lets through without a token marked so
 * (`security: []`).
 */
export const publicDocument = (isPublic: (method: string, path: string) => boolean): OpenApi.OpenAPISpec => {
  const spec = OpenApi.fromApi(PublicApi)
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const method of methods) {
      const operation = (item as Record<string, Operation | undefined>)[method]
      if (operation !== undefined && isPublic(method.toUpperCase(), path)) operation.security = []
    }
  }
  return spec
}

const scalarUrl = scalarPath

/**
 * The page's one inline script: Scalar over the document, nothing from
 * elsewhere. (Scalar 1.43.5 asks for its web fonts on fonts.scalar.com while
 * it starts, before it reads `withDefaultFonts`; the page's CSP refuses them.)
 */
const boot = `Scalar.createApiReference(document.getElementById("api-reference"), ${JSON.stringify({
  url: openApiPath,
  withDefaultFonts: false,
  // Scalar's stylesheet names its fonts on fonts.scalar.com: the system's fonts instead, so none is fetched.
  customCss: ":root { --scalar-font: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; --scalar-font-code: ui-monospace, 'SF Mono', Menlo, Consolas, monospace; }",
  hideClientButton: true,
  // Its links lead to Scalar's hosted services (sharing the document, SDKs); by default it shows only on localhost.
  showDeveloperTools: "never",
  defaultOpenAllTags: false,
  showOperationId: false,
  authentication: { preferredSecurityScheme: "bearer" }
})})`

const page = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>Meshwork API reference</title>
    <meta name="description" content="The HTTP API of the Meshwork reference mesh, from its OpenAPI document" />
    <link rel="icon" href="data:," />
  </head>
  <body>
    <div id="api-reference"></div>
    <script src="${scalarUrl}"></script>
    <script>${boot}</script>
  </body>
</html>
`

const sha256 = (text: string) =>
  Effect.promise(() => crypto.subtle.digest("SHA-256", new TextEncoder().encode(text))).pipe(Effect.map((digest) => new Uint8Array(digest)))

const base64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes))
const hex = (bytes: Uint8Array) => Array.from(bytes.subarray(0, 16), (byte) => byte.toString(16).padStart(2, "0")).join("")

/** A body ready to serve: its headers, strong ETag included. */
interface Asset {
  readonly body: string
  readonly headers: Readonly<Record<string, string>>
}

const asset = (body: string, headers: Record<string, string>): Effect.Effect<Asset> =>
  Effect.map(sha256(body), (digest) => ({ body, headers: { ...headers, etag: `"${hex(digest)}"` } }))

/** The asset's answer to `request`: 304 when its `If-None-Match` names the ETag, no body for HEAD. */
const answer = (request: Request, served: Asset, extra: Record<string, string> = {}): Response => {
  const headers = { ...served.headers, ...extra }
  const ifNoneMatch = request.headers.get("if-none-match")
  if (ifNoneMatch !== null && ifNoneMatch.split(",").some((tag) => tag.trim() === served.headers["etag"] || tag.trim() === "*")) {
    return new Response(null, { status: 304, headers })
  }
  return new Response(request.method === "HEAD" ? null : served.body, { status: 200, headers })
}

/** The document, the page and the script, each built once per isolate when first asked for. */
export class ApiDocs extends Context.Service<ApiDocs, {
  /** Whether the gateway answers `path` itself. */
  readonly serves: (path: string) => boolean
  readonly serve: (request: Request) => Effect.Effect<Response, Problem.NotFound | Problem.MethodNotAllowed>
}>()("meshwork/services/gateway/ApiDocs") {
  static readonly layer = Layer.effect(
    ApiDocs,
    Effect.gen(function*() {
      const routes = yield* PublicRoutes
      // Scalar's script lives in the docs Worker; without the binding the page says so.
      const scripts = Option.getOrUndefined(yield* Effect.option(Bindings.fetcher("DOCS")))
      // Built on first use, never shared unfinished: two first requests may both build, one keeps.
      const built = new Map<string, Asset>()
      const once = (key: string, make: () => Effect.Effect<Asset>) =>
        Effect.suspend(() => {
          const done = built.get(key)
          return done !== undefined ? Effect.succeed(done) : Effect.tap(make(), (made) => Effect.sync(() => built.set(key, made)))
        })
      const cacheable = `public, max-age=${maxAgeSeconds}`
      const document = once("document", () =>
        Effect.flatMap(Effect.sync(() => JSON.stringify(publicDocument(routes.isPublic))), (json) =>
          asset(json, { "content-type": "application/json", "cache-control": cacheable })))
      const docs = once("page", () =>
        Effect.flatMap(sha256(boot), (digest) =>
          asset(page, {
            "content-type": "text/html; charset=utf-8",
            "cache-control": cacheable,
            // Only this origin's script and the page's own inline boot may run; requests stay on this origin.
            ...pageHeaders({ script: `'sha256-${base64(digest)}'`, style: "'unsafe-inline'", fonts: true })
          })))

      const get = (request: Request, path: string): Effect.Effect<Response, Problem.NotFound | Problem.MethodNotAllowed> => {
        if (request.method !== "GET" && request.method !== "HEAD") {
          return Effect.fail(new Problem.MethodNotAllowed({ allow: ["GET", "HEAD"], detail: `GET ${path}` }))
        }
        switch (path) {
          case openApiPath:
            return Effect.map(document, (served) => answer(request, served))
          case docsPath:
            return Effect.map(docs, (served) => answer(request, served))
          case scalarPath:
            return scripts === undefined
              ? Effect.fail(new Problem.NotFound({ detail: "The docs Worker is not bound as DOCS" }))
              : Effect.promise(() =>
                scripts.fetch("http://docs.internal/api/docs/scalar.js", {
                  method: request.method,
                  headers: request.headers.has("if-none-match") ? { "if-none-match": request.headers.get("if-none-match")! } : {}
                })
              )
          default:
            return Effect.fail(new Problem.NotFound({ detail: `No document ${path}` }))
        }
      }
      return ApiDocs.of({
        serves: (path) => path === openApiPath || path === docsPath || path.startsWith(`${docsPath}/`),
        serve: (request) => get(request, new URL(request.url).pathname)
      })
    })
  ).pipe(Layer.provide(PublicRoutes.layer))
}
