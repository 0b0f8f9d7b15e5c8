/**
 * The greeter's HTTP contract, shared by the greeter Worker (which serves it)
 * and the hello Worker (whose typed client calls it): change a schema here and
 * both stop compiling until they agree.
 */
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import { Health } from "meshwork"

export const Greeting = Schema.Struct({ message: Schema.String })

export class GreeterGroup extends HttpApiGroup.make("greeter").add(
  HttpApiEndpoint.get("greet", "/greet/:name", {
    params: { name: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64)) },
    success: Greeting
  })
) {}

export class GreeterApi extends HttpApi.make("greeter").add(GreeterGroup).add(Health.HealthGroup) {}
