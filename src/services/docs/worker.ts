/**
 * The docs Worker: the mesh's static pages, so that the gateway's own bundle
 * stays small and its isolates never parse them. Scalar's API reference
 * script (3.2 MB) for the gateway's `/api/docs` page is one of its static
 * assets (wrangler.toml), served before this code runs; this code serves the
 * mesh console (`/console`, console.ts). Internal: the gateway reaches it
 * over its DOCS service binding, for those public, static files only. No
 * Effect here: a module with one `fetch` evaluates fastest.
 */
import { consolePath, serveConsole } from "./console.ts"

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url)
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response(null, { status: 405, headers: { allow: "GET, HEAD" } })
    }
    if (url.pathname === consolePath || url.pathname.startsWith(`${consolePath}/`)) {
      return serveConsole(request) ?? new Response(null, { status: 404 })
    }
    return new Response(null, { status: 404 })
  }
}
