/**
 * One internal hop over a service binding, two ways, for the `rpc` group:
 * `/http/users/{id}` forwards a request and streams the answer back;
 * `/rpc/users/{id}` calls the server's `user` method and answers its object
 * as JSON. Same binding, same answer: only the transport differs.
 */
interface Env {
  readonly SERVER: Fetcher & { readonly user: (id: string) => Promise<Record<string, unknown>> }
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const path = new URL(request.url).pathname
    if (path.startsWith("/http/users/")) {
      const answer = await env.SERVER.fetch(`http://server${path.slice("/http".length)}`)
      return new Response(answer.body, answer)
    }
    if (path.startsWith("/rpc/users/")) return Response.json(await env.SERVER.user(path.slice("/rpc/users/".length)))
    return new Response("Not Found", { status: 404 })
  }
}
