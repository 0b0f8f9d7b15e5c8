/**
 * The `api` group on Meshwork, served exactly as the mesh's services are: an
 * `effect/http-api` definition (with the problem+json middleware they all
 * use) through `Worker.make`, `Http.layer` and `Http.serve`, tracing off.
 * The same rules and answers as api-hono.ts and api-bare.ts.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import { Http, Worker } from "meshwork"

const Id = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64), Schema.isPattern(/^[A-Za-z0-9_-]+$/))
const Email = Schema.String.check(Schema.isMaxLength(254), Schema.isPattern(/^[^\s@]+@[^\s@]+\.[^\s@]+$/))
const Name = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1), Schema.isMaxLength(100))
const Tags = Schema.Array(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(32))).check(Schema.isMaxLength(10))

const NewUser = Schema.Struct({ email: Email, name: Name, tags: Tags })
const User = Schema.Struct({ id: Id, email: Email, name: Name, tags: Tags })

class Users extends HttpApiGroup.make("users").add(
  HttpApiEndpoint.get("get", "/users/:id", { params: { id: Id }, success: User }),
  HttpApiEndpoint.post("create", "/users", { payload: NewUser, success: User.pipe(HttpApiSchema.status(201)) })
) {}

class Api extends HttpApi.make("bench").add(Users).middleware(HttpApiMiddleware.ProblemDetails) {}

const UsersHandlers = HttpApiBuilder.group(Api, "users", (handlers) =>
  handlers
    .handle("get", ({ params }) => Effect.succeed({ id: params.id, email: "bench@example.com", name: "Bench User", tags: ["bench"] }))
    .handle("create", ({ payload }) => Effect.sync(() => ({ id: crypto.randomUUID(), ...payload }))))

const Routes = HttpApiBuilder.layer(Api).pipe(
  Layer.provide(UsersHandlers),
  Layer.provide(HttpApiMiddleware.layerProblemDetails({ includeDetails: true }))
)

export default Worker.make({ name: "bench-api", layer: Http.layer(Routes), fetch: Http.serve })
