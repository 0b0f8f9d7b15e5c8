/**
 * A pass-through to UPSTREAM that counts the requests it carries, for the
 * benchmark to measure upstream calls: `GET /__count` answers the count so
 * far (this isolate's; the benchmark runs one).
 */
let count = 0

export default {
  fetch(request: Request, env: { readonly UPSTREAM: Fetcher }): Response | Promise<Response> {
    if (new URL(request.url).pathname === "/__count") return Response.json({ count })
    count++
    return env.UPSTREAM.fetch(request)
  }
} satisfies ExportedHandler<{ readonly UPSTREAM: Fetcher }>
