/** The router hop of the hand-written chain: plain fetch forwarding by prefix. */
interface Env {
  readonly USERS: Fetcher
}

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    const path = new URL(request.url).pathname
    if (path === "/api/users" || path.startsWith("/api/users/")) return env.USERS.fetch(request)
    return new Response("Not Found", { status: 404 })
  }
}
