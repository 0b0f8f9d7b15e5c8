/**
 * Checks that a product's seller is an active user, by asking the users
 * service through its typed client: a cross-Worker call over a service
 * binding, typed end to end.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Identity, Problem } from "meshwork"
import { UsersClient } from "../users/client.ts"
import { UnknownSeller } from "./api.ts"

export class Sellers extends Context.Service<Sellers, {
  readonly requireActive: (sellerId: string) => Effect.Effect<void, UnknownSeller | Problem.BadGateway>
}>()("meshwork/services/products/Sellers") {
  static readonly layer = Layer.effect(
    Sellers,
    UsersClient.useSync((client) =>
      Sellers.of({
        requireActive: (sellerId) =>
          client.users.get({ params: { id: sellerId } }).pipe(
            Effect.flatMap((user) =>
              user.active ? Effect.void : Effect.fail(new UnknownSeller({ sellerId, detail: "The seller is disabled" }))
            ),
            Effect.catchTags({
              UserNotFound: () => Effect.fail(new UnknownSeller({ sellerId, detail: "No user has this id" })),
              HttpClientError: () => Effect.fail(new Problem.BadGateway({ service: "users" })),
              SchemaError: () => Effect.fail(new Problem.BadGateway({ service: "users", detail: "Unexpected answer" })),
              BadRequestProblem: () => Effect.fail(new Problem.BadGateway({ service: "users", detail: "Request refused" })),
              InternalServerErrorProblem: () => Effect.fail(new Problem.BadGateway({ service: "users", detail: "Users failed" })),
              Unauthorized: () => Effect.fail(new Problem.BadGateway({ service: "users", detail: "Users refused our identity" })),
              Forbidden: () => Effect.fail(new Problem.BadGateway({ service: "users", detail: "Users refused our identity" }))
            }),
            Effect.withSpan("Sellers.requireActive")
          )
      }))
  ).pipe(Layer.provide(UsersClient.layer), Layer.provide(Identity.MeshIdentity.layerClient("users")))
}
