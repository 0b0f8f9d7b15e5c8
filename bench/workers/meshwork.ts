/** One hop on Meshwork's runtime adapter, the same route and body. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Problem from "../../src/runtime/Problem.ts"
import * as Worker from "../../src/runtime/Worker.ts"

export default Worker.make({
  name: "bench",
  layer: Layer.empty,
  fetch: (request) =>
    request.method === "GET" && new URL(request.url).pathname === "/hello"
      ? Effect.succeed(Response.json({ message: "hello", id: "42" }))
      : Effect.fail(new Problem.NotFound({}))
})
