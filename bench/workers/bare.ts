/** One hop, hand-written: the baseline every framework is measured against. */
export default {
  fetch(request: Request): Response {
    const url = new URL(request.url)
    if (request.method === "GET" && url.pathname === "/hello") return Response.json({ message: "hello", id: "42" })
    return new Response("Not Found", { status: 404 })
  }
}
