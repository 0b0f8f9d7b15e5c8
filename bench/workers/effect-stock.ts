/** One hop on Effect 4's stock HttpRouter.toWebHandler (logger off), for reference. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServer from "effect/http/HttpServer"
import * as HttpServerResponse from "effect/http/HttpServerResponse"

const App = HttpRouter.add(
  "GET",
  "/hello",
  Effect.sync(() => HttpServerResponse.jsonUnsafe({ message: "hello", id: "42" }))
).pipe(Layer.provide(HttpServer.layerServices))

const { handler } = HttpRouter.toWebHandler(App, { disableLogger: true })

export default { fetch: (request: Request) => handler(request) }
