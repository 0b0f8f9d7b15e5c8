/** One hop on Effect 4's stock HttpRouter.toWebHandler (logger off), for reference. */
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServer, HttpServerResponse } from "effect/http"

const App = HttpRouter.add(
  "GET",
  "/hello",
  Effect.sync(() => HttpServerResponse.jsonUnsafe({ message: "hello", id: "42" }))
).pipe(Layer.provide(HttpServer.layerServices))

const { handler } = HttpRouter.toWebHandler(App, { disableLogger: true })

export default { fetch: (request: Request) => handler(request) }
