/** The greeter: a second Worker that serves `GreeterApi` over its service binding. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import { Health, Http, Worker } from "meshwork"
import { GreeterApi } from "./api.ts"

const GreeterHandlers = HttpApiBuilder.group(GreeterApi, "greeter", (handlers) =>
  handlers.handle("greet", ({ params }) => Effect.succeed({ message: `Hello, ${params.name}!` })))

const HealthHandlers = HttpApiBuilder.group(GreeterApi, "health", (handlers) => handlers.handle("health", Health.healthy("greeter")))

export default Worker.make({
  name: "greeter",
  layer: Http.layer(HttpApiBuilder.layer(GreeterApi).pipe(Layer.provide([GreeterHandlers, HealthHandlers]))),
  fetch: Http.serve
})
