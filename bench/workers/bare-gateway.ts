/** The gateway hop of the hand-written chain: plain fetch forwarding. */
interface Env {
  readonly ROUTER: Fetcher
}

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    const url = new URL(request.url)
    if (url.pathname.startsWith("/api/")) return env.ROUTER.fetch(request)
    return new Response("Not Found", { status: 404 })
  }
}
