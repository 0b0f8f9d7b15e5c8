/**
 * The docs Worker: the mesh's static pages, so that the gateway's own bundle
 * stays small and its isolates never parse them. It serves Scalar's API
 * reference script (3.2 MB) for the gateway's `/api/docs` page, and the mesh
 * console (`/console`, console.ts). Internal: the gateway reaches it over its
 * DOCS service binding, for those public, static files only. No Effect here:
 * a module with one `fetch` evaluates fastest.
 */
import { consolePath, serveConsole } from "./console.ts"
import { javascript, version } from "./scalar.ts"

const scriptPath = "/api/docs/scalar.js"

let etag: string | undefined

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url)
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response(null, { status: 405, headers: { allow: "GET, HEAD" } })
    }
    if (url.pathname === consolePath || url.pathname.startsWith(`${consolePath}/`)) {
      return serveConsole(request) ?? new Response(null, { status: 404 })
    }
    if (url.pathname !== scriptPath) return new Response(null, { status: 404 })
    etag ??= `"scalar-${version}-${javascript.length}"`
    const headers = {
      "content-type": "text/javascript; charset=utf-8",
      "x-content-type-options": "nosniff",
      // An hour, then a cheap revalidation: the ETag names Scalar's version.
      "cache-control": "public, max-age=3600",
      etag
    }
    const ifNoneMatch = request.headers.get("if-none-match")
    if (ifNoneMatch !== null && ifNoneMatch.split(",").some((tag) => tag.trim() === etag || tag.trim() === "*")) {
      return new Response(null, { status: 304, headers })
    }
    return new Response(request.method === "HEAD" ? null : javascript, { headers })
  }
}
